"""Hierarchical classification: predict a label path for a text from an embedding space, and score the paths.

Paths are given as nested level ids (``(N, L)`` arrays from :meth:`heal_rag.LabelPaths.level_ids`), where an id is
unique across the whole level, so a level-``l`` id already names its ancestors. ``-1`` means "no label here".

- :func:`knn_predict_level_ids`: similarity-weighted vote of the ``k`` nearest labelled neighbours, at the leaf; the
  winning neighbour leaf gives the whole path, so predictions are always consistent paths.
- :func:`centroid_predict_level_ids`: the nearest leaf centroid, then its path.
- :func:`hierarchical_classification_report`: accuracy per level and hierarchical precision/recall/F1
  (Kiritchenko et al., 2006): with ``A`` a text's true labels plus ancestors and ``Â`` the predicted ones,
  ``hP = Σ|Â∩A| / Σ|Â|``, ``hR = Σ|Â∩A| / Σ|A|`` and ``hF1`` their harmonic mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heal_rag.evaluation.retrieval import top_k_indices


@dataclass(frozen=True)
class ClassificationReport:
    """Per-level accuracy and hierarchical precision/recall/F1 of predicted paths."""

    level_accuracy: list[float]
    hierarchical_precision: float
    hierarchical_recall: float
    hierarchical_f1: float
    n_texts: int

    def as_dict(self) -> dict[str, float]:
        """Flat ``{metric_name: value}`` view, e.g. for JSON or a table row."""
        out = {f"acc/L{level}": value for level, value in enumerate(self.level_accuracy)}
        out.update({"hP": self.hierarchical_precision, "hR": self.hierarchical_recall, "hF1": self.hierarchical_f1})
        return out


def hierarchical_classification_report(predicted: np.ndarray, true: np.ndarray) -> ClassificationReport:
    """Score predicted paths against true ones.

    Args:
        predicted: ``(N, L)`` predicted level ids (``-1``: the prediction stops above this level).
        true: ``(N, L)`` true level ids (``-1``: the true path is shorter).

    Returns:
        Accuracy per level (over texts with a true label at that level; a missing prediction counts as wrong) and
        hP/hR/hF1 over label sets that include every ancestor.

    Example:
        ```python
        true = np.array([[0, 0], [0, 1]])
        predicted = np.array([[0, 1], [0, 1]])
        hierarchical_classification_report(predicted, true).hierarchical_f1  # 0.75
        ```
    """
    predicted = np.asarray(predicted)
    true = np.asarray(true)
    if predicted.shape != true.shape or predicted.ndim != 2:
        raise ValueError(
            f"predicted and true must both be (texts, levels) arrays of the same shape, got {predicted.shape} "
            f"and {true.shape}."
        )
    if true.shape[0] == 0:
        raise ValueError("No texts to score.")
    labelled = true >= 0
    correct = (predicted == true) & labelled  # nested ids: a correct level-l id implies correct ancestors
    accuracy = [float(correct[:, level].sum() / max(labelled[:, level].sum(), 1)) for level in range(true.shape[1])]
    overlap = float(correct.sum())
    n_predicted = float((predicted >= 0).sum())
    n_true = float(labelled.sum())
    precision = overlap / n_predicted if n_predicted else 0.0
    recall = overlap / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return ClassificationReport(accuracy, precision, recall, f1, n_texts=int(true.shape[0]))


def knn_predict_level_ids(
    query_embeddings: np.ndarray,
    reference_embeddings: np.ndarray,
    reference_level_ids: np.ndarray,
    k: int = 10,
    exclude_self: bool = False,
) -> np.ndarray:
    """Predict each text's path from its ``k`` nearest reference texts (cosine, normalised vectors).

    Each neighbour votes for its leaf with its similarity; the leaf with the largest total wins and its path (taken
    from a neighbour holding it) is the prediction.

    Args:
        query_embeddings: ``(Q, D)`` normalised vectors of the texts to classify.
        reference_embeddings: ``(N, D)`` normalised vectors of labelled texts.
        reference_level_ids: ``(N, L)`` level ids of the labelled texts.
        k: Neighbours that vote.
        exclude_self: The queries ARE the references (row ``i`` of both is the same text): leave-one-out, a text
            never votes for itself.

    Returns:
        ``(Q, L)`` predicted level ids.
    """
    reference_level_ids = np.asarray(reference_level_ids)
    if reference_embeddings.shape[0] != reference_level_ids.shape[0]:
        raise ValueError("reference_embeddings and reference_level_ids must have one row per reference text.")
    if exclude_self:
        if query_embeddings.shape[0] != reference_embeddings.shape[0]:
            raise ValueError("exclude_self=True needs the queries to be the references, row for row.")
        neighbours = top_k_indices(query_embeddings, reference_embeddings, k + 1)
        rows = np.arange(neighbours.shape[0])[:, None]
        keep = neighbours != rows
        keep[keep.sum(axis=1) > k, -1] = False  # self not among the k + 1: drop the farthest instead
        neighbours = neighbours[keep].reshape(neighbours.shape[0], -1)
    else:
        neighbours = top_k_indices(query_embeddings, reference_embeddings, k)
    similarity = np.einsum("qd,qkd->qk", query_embeddings, reference_embeddings[neighbours])
    leaves = _deepest_ids(reference_level_ids)[neighbours]  # (Q, k)
    predicted = np.empty((query_embeddings.shape[0], reference_level_ids.shape[1]), dtype=reference_level_ids.dtype)
    for row in range(neighbours.shape[0]):
        candidates, inverse = np.unique(leaves[row], return_inverse=True)
        votes = np.bincount(inverse, weights=similarity[row], minlength=len(candidates))
        winner = int(np.argmax(votes))
        predicted[row] = reference_level_ids[neighbours[row][inverse == winner][0]]
    return predicted


def centroid_predict_level_ids(
    query_embeddings: np.ndarray, reference_embeddings: np.ndarray, reference_level_ids: np.ndarray
) -> np.ndarray:
    """Predict each text's path as the path of the nearest leaf centroid (mean of normalised reference vectors)."""
    reference_level_ids = np.asarray(reference_level_ids)
    leaves = _deepest_ids(reference_level_ids)
    leaf_values, first_row, inverse = np.unique(leaves, return_index=True, return_inverse=True)
    centroids = np.zeros((len(leaf_values), reference_embeddings.shape[1]))
    np.add.at(centroids, inverse, reference_embeddings)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    nearest = np.argmax(query_embeddings @ centroids.T, axis=1)
    return reference_level_ids[first_row[nearest]]


def _deepest_ids(level_ids: np.ndarray) -> np.ndarray:
    """A key per row for its deepest labelled level (unique across levels): ``level * big + id``."""
    depth = (level_ids >= 0).sum(axis=1) - 1
    if (depth < 0).any():
        raise ValueError("Every reference text needs a label at level 0.")
    big = int(level_ids.max()) + 1
    return depth * big + level_ids[np.arange(len(level_ids)), depth]
