"""NMFk: NMF with automatic choice of k by stability over perturbed copies of the data (after LANL's T-ELF).

For each candidate k, several copies of the (documents × terms) matrix are perturbed (every non-zero entry scaled
by ``U(1-ε, 1+ε)``) and factorised from a random start. The k topics of every run are matched to
those of the other runs, and the silhouettes of the matched clusters are computed twice: for the topics (term
vectors, T-ELF's W) and for the document coefficients (T-ELF's H). A k is *stable* when its worst cluster's
silhouette passes the threshold in both; the largest stable k wins.

The factorisations are scikit-learn's ``NMF``; this module does the perturbation, matching and scoring.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from joblib import Parallel, delayed
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_samples

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KScore:
    """Stability of one candidate k: worst-cluster silhouettes of topics and of document coefficients."""

    k: int
    topic_silhouette: float
    document_silhouette: float
    relative_error: float

    @property
    def score(self) -> float:
        """The criterion: the lower of the two worst-cluster silhouettes."""
        return min(self.topic_silhouette, self.document_silhouette)


@dataclass(frozen=True)
class KSelection:
    """Result of :func:`select_k`: the chosen k, whether it passed the threshold, and every k's scores."""

    k: int
    passed: bool
    scores: tuple[KScore, ...]


def perturb(matrix: sp.csr_matrix, epsilon: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Scale every stored entry by an independent ``U(1-epsilon, 1+epsilon)`` factor."""
    out = matrix.copy()
    out.data = out.data * rng.uniform(1.0 - epsilon, 1.0 + epsilon, size=out.data.shape)
    return out


def _factorise(matrix: sp.csr_matrix, k: int, epsilon: float, seed: int, max_iter: int) -> tuple[np.ndarray, ...]:
    """Factorise one perturbed copy from one random start.

    Random starts are deliberate: the disagreement between starts is the instability signal. (Best-of-n restarts,
    or SVD-based starts, make every k look stable.)
    """
    rng = np.random.default_rng(seed)
    perturbed = perturb(matrix, epsilon, rng)
    model = NMF(n_components=k, init="random", random_state=seed, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        doc_weights = model.fit_transform(perturbed)
    error = float(model.reconstruction_err_) / max(float(sp.linalg.norm(perturbed)), 1e-12)
    return model.components_, doc_weights, error


def match_runs(topic_runs: Sequence[np.ndarray], n_rounds: int = 3) -> list[np.ndarray]:
    """Match the topics of every run to common clusters.

    Each run contributes exactly one topic to each of the k clusters (a permutation per run, found with the
    Hungarian algorithm on cosine similarity to the cluster centroids, refined for ``n_rounds``).

    Returns:
        For each run, ``perm`` such that ``run[perm[c]]`` is the run's topic in cluster ``c``.
    """
    normalised = [_unit_rows(t) for t in topic_runs]
    centroids = normalised[0]
    perms = [np.arange(len(centroids))] * len(normalised)
    for _ in range(n_rounds):
        perms = []
        for topics in normalised:
            rows, cols = linear_sum_assignment(-(centroids @ topics.T))
            perm = np.empty_like(cols)
            perm[rows] = cols
            perms.append(perm)
        centroids = _unit_rows(np.mean([t[p] for t, p in zip(normalised, perms, strict=True)], axis=0))
    return perms


def _worst_cluster_silhouette(vectors: np.ndarray, labels: np.ndarray) -> float:
    """Lowest per-cluster silhouette.

    A cluster's score is the median over its members (one per run), so a run stuck in a poor local minimum does
    not condemn an otherwise reproducible k.
    """
    if len(np.unique(labels)) < 2:
        return -1.0
    sample_scores = silhouette_samples(vectors, labels, metric="cosine")
    return float(min(np.median(sample_scores[labels == c]) for c in np.unique(labels)))


def score_k(topic_runs: Sequence[np.ndarray], doc_runs: Sequence[np.ndarray], errors: Sequence[float]) -> KScore:
    """Worst-cluster silhouettes of matched topics and document coefficients over the runs of one k."""
    k = topic_runs[0].shape[0]
    perms = match_runs(topic_runs)
    labels = np.tile(np.arange(k), len(topic_runs))
    topics = np.vstack([t[p] for t, p in zip(topic_runs, perms, strict=True)])
    documents = np.vstack([d[:, p].T for d, p in zip(doc_runs, perms, strict=True)])
    return KScore(
        k=k,
        topic_silhouette=_worst_cluster_silhouette(topics, labels),
        document_silhouette=_worst_cluster_silhouette(documents, labels),
        relative_error=float(np.mean(errors)),
    )


def select_k(
    matrix: sp.csr_matrix,
    k_values: Sequence[int],
    *,
    n_perturbations: int = 8,
    epsilon: float = 0.015,
    silhouette_threshold: float = 0.8,
    random_state: int = 0,
    max_iter: int = 200,
    n_jobs: int | None = None,
    where: str = "root",
) -> KSelection:
    """Choose the largest k whose topics are stable across perturbed factorisations.

    Args:
        matrix: Non-negative (documents × terms) matrix, e.g. TF-IDF.
        k_values: Candidate numbers of topics (each ≥ 2).
        n_perturbations: Perturbed factorisations per k (≥ 2). Each cluster's silhouette is the median over its
            runs, so with 8 runs one or two starts stuck in a poor local minimum do not hide a real k.
        epsilon: Perturbation size.
        silhouette_threshold: A k passes when both worst-cluster silhouettes reach this.
        random_state: Seed; the result is deterministic for a given seed.
        max_iter: Iterations of each factorisation.
        n_jobs: Parallel jobs (joblib) over the independent factorisations.
        where: Node name for the warning when no k passes.

    Returns:
        The chosen k, whether it passed, and the scores of every candidate.
    """
    k_values = sorted({int(k) for k in k_values if 2 <= k <= min(matrix.shape)})
    if not k_values:
        raise ValueError(f"No candidate k in [2, {min(matrix.shape)}] for a matrix of shape {matrix.shape}.")
    if n_perturbations < 2:
        raise ValueError(f"n_perturbations must be >= 2 to measure stability, got {n_perturbations}.")
    jobs = [
        (k, (random_state * 1_000_003 + 7919 * k + run) % 2**31) for k in k_values for run in range(n_perturbations)
    ]
    results = Parallel(n_jobs=n_jobs)(delayed(_factorise)(matrix, k, epsilon, seed, max_iter) for k, seed in jobs)
    scores = []
    for start in range(0, len(results), n_perturbations):
        runs = results[start : start + n_perturbations]
        scores.append(score_k([r[0] for r in runs], [r[1] for r in runs], [r[2] for r in runs]))
    passing = [s for s in scores if s.score >= silhouette_threshold]
    if passing:
        return KSelection(k=max(s.k for s in passing), passed=True, scores=tuple(scores))
    best = max(scores, key=lambda s: (s.score, -s.k))
    logger.warning(
        "HNMFk node %s: no k in %s reached silhouette %.2f (best %.2f at k=%d); using k=%d.",
        where,
        k_values,
        silhouette_threshold,
        best.score,
        best.k,
        best.k,
    )
    return KSelection(k=best.k, passed=False, scores=tuple(scores))


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
