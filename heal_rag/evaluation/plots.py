"""PNG plots for evaluation reports (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from heal_rag.evaluation.report import ModelEvaluation


def _pyplot():  # noqa: ANN202 - a module
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("Evaluation plots need matplotlib: pip install 'heal_rag[eval]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_level_metrics(evaluations: Sequence[ModelEvaluation], path: str | os.PathLike[str]) -> None:
    """Grouped bars per hierarchy level: hierarchical precision@k (left) and path-prediction accuracy (right)."""
    plt = _pyplot()
    panels = [("hierarchical precision@10", "hP@10/L", "retrieval"), ("path accuracy (10-NN)", "acc/L", "class")]
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 4), squeeze=False)
    width = 0.8 / max(len(evaluations), 1)
    for ax, (caption, prefix, section) in zip(axes[0], panels, strict=True):
        for position, evaluation in enumerate(evaluations):
            if section == "retrieval":
                values = evaluation.retrieval.as_dict()
            elif evaluation.classification is not None:
                values = evaluation.classification.as_dict()
            else:
                continue
            levels = sorted(int(key[len(prefix) :]) for key in values if key.startswith(prefix))
            heights = [values[f"{prefix}{level}"] for level in levels]
            ax.bar(
                np.asarray(levels) + (position - (len(evaluations) - 1) / 2) * width,
                heights,
                width,
                label=evaluation.name,
            )
        ax.set_title(caption)
        ax.set_xlabel("level (0 = most general)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_embedding_maps(
    evaluations: Sequence[ModelEvaluation],
    top_level_names: Sequence[str],
    path: str | os.PathLike[str],
    method: str = "tsne",
    max_points: int = 2000,
    seed: int = 0,
) -> None:
    """One 2-D map of the document embeddings per model, coloured by top-level label.

    Args:
        evaluations: Models with ``document_embeddings``.
        top_level_names: The level-0 label of every document.
        path: Output PNG.
        method: ``"tsne"`` (scikit-learn t-SNE, PCA-initialised) or ``"pca"``.
        max_points: At most this many documents are drawn (the same random sample for every model).
        seed: Seed of the sample and of t-SNE.
    """
    if method not in ("tsne", "pca"):
        raise ValueError(f"map method must be 'tsne' or 'pca', got {method!r}.")
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    plt = _pyplot()
    names = np.asarray(top_level_names)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(names), size=min(max_points, len(names)), replace=False))
    categories = sorted(set(names[sample].tolist()))
    colours = plt.get_cmap("tab20" if len(categories) > 10 else "tab10")
    fig, axes = plt.subplots(1, len(evaluations), figsize=(5.5 * len(evaluations), 5), squeeze=False)
    for ax, evaluation in zip(axes[0], evaluations, strict=True):
        vectors = np.asarray(evaluation.document_embeddings)[sample]
        if method == "pca" or len(sample) < 5:
            points = PCA(n_components=2, random_state=seed).fit_transform(vectors)
        else:
            perplexity = float(min(30, max(2, (len(sample) - 1) // 3)))
            points = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(vectors)
        for index, category in enumerate(categories):
            chosen = names[sample] == category
            ax.scatter(points[chosen, 0], points[chosen, 1], s=6, color=colours(index % colours.N), label=category)
        ax.set_title(evaluation.name)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(fontsize="small", markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"document embeddings ({method.upper()}), coloured by top-level label")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
