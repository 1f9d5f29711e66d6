"""Retrieval metrics for queries with one gold document in a labelled corpus.

- MRR@k and Recall@k of the gold (source) document.
- Hierarchical precision@k per level: the share of the top k whose level-``l`` label equals the query's.
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


def evaluate_retrieval(
    query_embeddings: np.ndarray,
    doc_embeddings: np.ndarray,
    gold_doc: Sequence[int],
    query_level_ids: np.ndarray,
    doc_level_ids: np.ndarray,
    k: int = 10,
    recall_at: Sequence[int] = (1, 10),
) -> RetrievalReport:
    """Score a retrieval run.

    Args:
        query_embeddings: ``(Q, D)`` normalised query vectors.
        doc_embeddings: ``(N, D)`` normalised document vectors.
        gold_doc: Index of each query's source document.
        query_level_ids: ``(Q, L)`` label ids of each query (its source document's), in the same id space as
            ``doc_level_ids``.
        doc_level_ids: ``(N, L)`` label ids of the documents.
        k: Cut-off for MRR and hierarchical precision.
        recall_at: Cut-offs for Recall.

    Returns:
        A :class:`RetrievalReport`.
    """
    gold = np.asarray(gold_doc)
    depth = max([k, *recall_at])
    ranked = top_k_indices(query_embeddings, doc_embeddings, depth)
    hits = ranked == gold[:, None]
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), -1)
    in_top_k = (first_hit >= 0) & (first_hit < k)
    reciprocal = np.divide(1.0, first_hit + 1, out=np.zeros(len(gold)), where=in_top_k)
    recall = {r: float(hits[:, :r].any(axis=1).mean()) for r in recall_at}
    top_ids = doc_level_ids[ranked[:, :k]]  # (Q, k, L)
    matches = top_ids == query_level_ids[:, None, :]
    hier_precision = matches.mean(axis=1).mean(axis=0).tolist()
    return RetrievalReport(
        mrr=float(reciprocal.mean()),
        recall=recall,
        hier_precision=[float(v) for v in hier_precision],
        k=k,
        n_queries=len(gold),
    )
