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
        scores = query_embeddings[start : start + chunk] @ doc_embeddings.T
        part = np.argpartition(-scores, kth=k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out[start : start + chunk] = np.take_along_axis(part, order, axis=1)
    return out


def graded_gains(query_level_ids: np.ndarray, doc_level_ids: np.ndarray, gold_doc: Sequence[int]) -> np.ndarray:
    """Graded relevance of every document for every query, shape ``(Q, N)``.

    The gain is the number of leading levels the document shares with the query (nested ids make that the count of
    matching levels); the query's own source document gains one more than a full path match.
    """
    gains = (doc_level_ids[None, :, :] == query_level_ids[:, None, :]).sum(axis=2).astype(np.float64)
    gold = np.asarray(gold_doc)
    gains[np.arange(len(gold)), gold] = query_level_ids.shape[1] + 1
    return gains


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

    Besides MRR@k, Recall and hierarchical precision@k per level, ``extra`` holds nDCG@k with graded gains
    (:func:`graded_gains`), and the hallucination-risk proxies at ``context_k`` (the passages handed to the
    generator): ``context-miss@c`` (the gold passage is not among them) and ``off-topic@c`` (share of them from
    another leaf than the query's).
    """
    gold = np.asarray(gold_doc)
    hits = ranked == gold[:, None]
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), -1)
    in_top_k = (first_hit >= 0) & (first_hit < k)
    reciprocal = np.divide(1.0, first_hit + 1, out=np.zeros(len(gold)), where=in_top_k)
    recall = {r: float(hits[:, :r].any(axis=1).mean()) for r in recall_at}
    matches = doc_level_ids[ranked[:, :k]] == query_level_ids[:, None, :]  # (Q, k, L)
    hier_precision = matches.mean(axis=1).mean(axis=0).tolist()

    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    gains = graded_gains(query_level_ids, doc_level_ids, gold)
    dcg = (np.take_along_axis(gains, ranked[:, :k], axis=1) * discounts).sum(axis=1)
    ideal = (-np.sort(-gains, axis=1)[:, :k] * discounts).sum(axis=1)
    leaf_match = doc_level_ids[ranked[:, :context_k], -1] == query_level_ids[:, None, -1]
    extra = {
        f"nDCG@{k}": float((dcg / np.maximum(ideal, 1e-12)).mean()),
        f"context-miss@{context_k}": float(1.0 - hits[:, :context_k].any(axis=1).mean()),
        f"off-topic@{context_k}": float(1.0 - leaf_match.mean()),
    }
    return RetrievalReport(
        mrr=float(reciprocal.mean()),
        recall=recall,
        hier_precision=[float(v) for v in hier_precision],
        k=k,
        n_queries=len(gold),
        extra=extra,
    )


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
