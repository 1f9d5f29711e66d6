"""Retrieval metrics for queries with one gold document in a labelled corpus.

- MRR@k and Recall@k of the gold (source) document.
- Hierarchical precision@k per level: the share of the top k whose level-``l`` label equals the query's.
- nDCG@k with graded gains (shared label prefix; the source document gains most).
- Hallucination-risk proxies: context-miss@c and off-topic@c over the c passages handed to a generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RetrievalReport:
    """Mean metrics over queries; ``hier_precision[l]`` is hierarchical precision@k at level ``l``."""

    mrr: float
    recall: dict[int, float]
    hier_precision: list[float]
    k: int
    n_queries: int
    extra: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_per_query(
        cls, scores: dict[str, np.ndarray], k: int, recall_at: Sequence[int], context_k: int
    ) -> RetrievalReport:
        """The report of :func:`per_query_scores`' output: every metric's mean over queries."""
        means = {name: float(values.mean()) for name, values in scores.items()}
        n_levels = sum(1 for name in scores if name.startswith(f"hP@{k}/L"))
        return cls(
            mrr=means[f"MRR@{k}"],
            recall={r: means[f"Recall@{r}"] for r in recall_at},
            hier_precision=[means[f"hP@{k}/L{level}"] for level in range(n_levels)],
            k=k,
            n_queries=len(scores[f"MRR@{k}"]),
            extra={name: means[name] for name in (f"nDCG@{k}", f"context-miss@{context_k}", f"off-topic@{context_k}")},
        )

    def as_dict(self) -> dict[str, float]:
        """Flat ``{metric_name: value}`` view, e.g. for JSON or a table row."""
        out = {f"MRR@{self.k}": self.mrr}
        out.update({f"Recall@{r}": v for r, v in sorted(self.recall.items())})
        out.update({f"hP@{self.k}/L{level}": v for level, v in enumerate(self.hier_precision)})
        out.update(self.extra)
        return out


def top_k_indices(query_embeddings: np.ndarray, doc_embeddings: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Indices of the ``k`` most similar documents per query (dot product; use normalised vectors for cosine)."""
    k = min(k, doc_embeddings.shape[0])
    out = np.empty((query_embeddings.shape[0], k), dtype=np.int64)
    for start in range(0, query_embeddings.shape[0], chunk):
        out[start : start + chunk] = top_k_of_scores(query_embeddings[start : start + chunk] @ doc_embeddings.T, k)
    return out


def top_k_of_scores(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest of each row of ``scores`` (``(Q, N)``, ``1 <= k <= N``), largest first."""
    part = np.argpartition(-scores, kth=k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def graded_gains(query_level_ids: np.ndarray, doc_level_ids: np.ndarray, gold_doc: Sequence[int]) -> np.ndarray:
    """Graded relevance of every document for every query, shape ``(Q, N)``.

    The gain is the number of leading levels the document shares with the query (nested ids make that the count of
    matching levels); the query's own source document gains one more than a full path match.
    """
    gains = (doc_level_ids[None, :, :] == query_level_ids[:, None, :]).sum(axis=2).astype(np.float64)
    gold = np.asarray(gold_doc)
    gains[np.arange(len(gold)), gold] = query_level_ids.shape[1] + 1
    return gains


def relevance_judgements(
    ranked: np.ndarray, gold_doc: Sequence[int], query_level_ids: np.ndarray, doc_level_ids: np.ndarray, k: int
) -> dict[str, dict[str, int]]:
    """Graded qrels ``{query: {document: gain}}`` (:func:`graded_gains`) for scoring ``ranked`` at cut-off ``k``.

    Only the documents that can matter at ``k`` are listed: the ranked ones, and for each query the ``k``
    highest-gain documents (which fix the ideal DCG). That keeps the judgements small on large corpora while
    nDCG@k, reciprocal rank and recall stay exact.
    """
    gold = np.asarray(gold_doc)
    qrels: dict[str, dict[str, int]] = {}
    for start in range(0, len(gold), 512):
        gains = graded_gains(query_level_ids[start : start + 512], doc_level_ids, gold[start : start + 512])
        best = np.argsort(-gains, axis=1, kind="stable")[:, :k]
        for row in range(gains.shape[0]):
            listed = np.union1d(best[row], ranked[start + row])
            qrels[str(start + row)] = {str(d): int(gains[row, d]) for d in listed if gains[row, d] > 0}
    return qrels


def per_query_scores(
    ranked: np.ndarray,
    gold_doc: Sequence[int],
    query_level_ids: np.ndarray,
    doc_level_ids: np.ndarray,
    k: int = 10,
    recall_at: Sequence[int] = (1, 10),
    context_k: int = 5,
) -> dict[str, np.ndarray]:
    """Every metric of :func:`evaluate_rankings` for each query: ``{metric_name: (Q,) array}``.

    The per-query values are what a paired comparison of two systems needs (:func:`paired_difference`); their
    means are the report. Names are those of :meth:`RetrievalReport.as_dict`.

    Example:
        ```python
        ranked = np.array([[1, 0], [1, 0]])  # gold documents 0 and 1
        level_ids = np.array([[0, 0], [0, 1]])
        per_query_scores(ranked, [0, 1], level_ids, level_ids, k=2, recall_at=(1,), context_k=1)["MRR@2"]
        # array([0.5, 1. ])
        ```
    """
    ir_measures = _import_ir_measures()
    gold = np.asarray(gold_doc)
    ranked = np.asarray(ranked)
    depth = max([k, context_k, *recall_at])
    if ranked.ndim != 2 or ranked.shape[0] != len(gold):
        raise ValueError(f"ranked must be (queries, depth) with one row per gold document, got {ranked.shape}.")
    top = ranked[:, :depth]
    gold_grade = query_level_ids.shape[1] + 1
    qrels = relevance_judgements(top, gold, query_level_ids, doc_level_ids, k)
    run = {str(q): {str(d): float(depth - rank) for rank, d in enumerate(row)} for q, row in enumerate(top)}
    measures = {f"MRR@{k}": ir_measures.RR(rel=gold_grade) @ k, f"nDCG@{k}": ir_measures.nDCG @ k}
    measures.update({f"Recall@{r}": ir_measures.R(rel=gold_grade) @ r for r in sorted({*recall_at, context_k})})
    names = {measure: name for name, measure in measures.items()}
    out = {name: np.zeros(len(gold)) for name in measures}  # trec_eval leaves out a query that scores 0
    for metric in ir_measures.iter_calc(list(measures.values()), qrels, run):
        out[names[metric.measure]][int(metric.query_id)] = metric.value

    matches = doc_level_ids[top[:, :k]] == query_level_ids[:, None, :]  # (Q, k, L)
    for level, values in enumerate(matches.mean(axis=1).T):
        out[f"hP@{k}/L{level}"] = values
    leaf_match = doc_level_ids[top[:, :context_k], -1] == query_level_ids[:, None, -1]
    out[f"context-miss@{context_k}"] = 1.0 - out[f"Recall@{context_k}"]
    out[f"off-topic@{context_k}"] = 1.0 - leaf_match.mean(axis=1)
    if context_k not in recall_at:
        del out[f"Recall@{context_k}"]
    return out


def evaluate_rankings(
    ranked: np.ndarray,
    gold_doc: Sequence[int],
    query_level_ids: np.ndarray,
    doc_level_ids: np.ndarray,
    k: int = 10,
    recall_at: Sequence[int] = (1, 10),
    context_k: int = 5,
) -> RetrievalReport:
    """Score given rankings (``(Q, ≥k)`` document indices per query, best first).

    MRR@k, Recall@r and nDCG@k come from ``ir_measures`` (trec_eval through pytrec_eval) on graded judgements
    (:func:`relevance_judgements`): reciprocal rank and recall count only the gold document (the highest grade),
    nDCG uses every grade. Our own code adds the hierarchical parts: hierarchical precision@k per level, and the
    hallucination-risk proxies at ``context_k`` (the passages handed to a generator) in ``extra``:
    ``context-miss@c`` (the gold passage is not among them) and ``off-topic@c`` (share of them from another leaf).
    Each value is the mean over queries of :func:`per_query_scores`.

    Example:
        ```python
        ranked = np.array([[1, 0]])  # the gold document 0 comes second
        level_ids = np.array([[0, 0], [0, 1]])
        evaluate_rankings(ranked, [0], level_ids[:1], level_ids, k=2, recall_at=(1,), context_k=1).mrr  # 0.5
        ```
    """
    scores = per_query_scores(ranked, gold_doc, query_level_ids, doc_level_ids, k, recall_at, context_k)
    return RetrievalReport.from_per_query(scores, k=k, recall_at=recall_at, context_k=context_k)


@dataclass(frozen=True)
class PairedDifference:
    """Mean per-query difference of system A minus system B, with a bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    wins: int
    losses: int

    def as_dict(self) -> dict[str, float]:
        """Plain-JSON view."""
        return {"mean": self.mean, "low": self.low, "high": self.high, "wins": self.wins, "losses": self.losses}


def format_paired(difference: PairedDifference | dict[str, float]) -> str:
    """``+0.0123 [-0.0010, +0.0250]``: a :class:`PairedDifference` (or its ``as_dict``) for a table cell."""
    values = difference.as_dict() if isinstance(difference, PairedDifference) else difference
    return f"{values['mean']:+.4f} [{values['low']:+.4f}, {values['high']:+.4f}]"


def paired_difference(
    scores_a: np.ndarray, scores_b: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> PairedDifference:
    """How far system A is ahead of system B on the same queries, and how sure we are.

    The interval is a percentile bootstrap over queries (``scipy.stats.bootstrap``) of the mean of the per-query
    differences, so it keeps the pairing; ``wins``/``losses`` count queries where A scores higher/lower.

    Example:
        ```python
        paired_difference(np.array([1.0, 0.5, 1.0]), np.array([1.0, 1.0, 0.5])).mean  # 0.0
        ```
    """
    from scipy.stats import bootstrap

    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"Need two equal-length 1-D score arrays of at least 2 queries, got {a.shape} and {b.shape}.")
    diff = a - b
    if np.all(diff == diff[0]):
        low = high = float(diff[0])
    else:
        interval = bootstrap(
            (diff,),
            np.mean,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method="percentile",
            rng=np.random.default_rng(seed),
        ).confidence_interval
        low, high = float(interval.low), float(interval.high)
    return PairedDifference(
        mean=float(diff.mean()), low=low, high=high, wins=int((diff > 0).sum()), losses=int((diff < 0).sum())
    )


def _import_ir_measures():  # noqa: ANN202 - a module
    try:
        import ir_measures
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "heal_rag's retrieval metrics use ir_measures and pytrec_eval: pip install 'heal_rag[eval]'"
        ) from exc
    return ir_measures


def evaluate_retrieval(
    query_embeddings: np.ndarray,
    doc_embeddings: np.ndarray,
    gold_doc: Sequence[int],
    query_level_ids: np.ndarray,
    doc_level_ids: np.ndarray,
    k: int = 10,
    recall_at: Sequence[int] = (1, 10),
    context_k: int = 5,
) -> RetrievalReport:
    """Rank documents by dot product (cosine for normalised vectors) and score with :func:`evaluate_rankings`.

    Args:
        query_embeddings: ``(Q, D)`` normalised query vectors.
        doc_embeddings: ``(N, D)`` normalised document vectors.
        gold_doc: Index of each query's source document.
        query_level_ids: ``(Q, L)`` label ids of each query (its source document's), in the same id space as
            ``doc_level_ids``.
        doc_level_ids: ``(N, L)`` label ids of the documents.
        k: Cut-off for MRR, nDCG and hierarchical precision.
        recall_at: Cut-offs for Recall.
        context_k: Passages handed to a generator, for the hallucination-risk proxies.
    """
    ranked = top_k_indices(query_embeddings, doc_embeddings, max([k, context_k, *recall_at]))
    return evaluate_rankings(ranked, gold_doc, query_level_ids, doc_level_ids, k, recall_at, context_k)
