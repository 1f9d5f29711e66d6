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

    Example:
        ```python
        ranked = np.array([[1, 0]])  # the gold document 0 comes second
        level_ids = np.array([[0, 0], [0, 1]])
        evaluate_rankings(ranked, [0], level_ids[:1], level_ids, k=2, recall_at=(1,), context_k=1).mrr  # 0.5
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
    rr, ndcg = ir_measures.RR(rel=gold_grade) @ k, ir_measures.nDCG @ k
    recalls = {r: ir_measures.R(rel=gold_grade) @ r for r in sorted({*recall_at, context_k})}
    scores = ir_measures.calc_aggregate([rr, ndcg, *recalls.values()], qrels, run)

    matches = doc_level_ids[top[:, :k]] == query_level_ids[:, None, :]  # (Q, k, L)
    hier_precision = matches.mean(axis=1).mean(axis=0).tolist()
    leaf_match = doc_level_ids[top[:, :context_k], -1] == query_level_ids[:, None, -1]
    extra = {
        f"nDCG@{k}": float(scores[ndcg]),
        f"context-miss@{context_k}": float(1.0 - scores[recalls[context_k]]),
        f"off-topic@{context_k}": float(1.0 - leaf_match.mean()),
    }
    return RetrievalReport(
        mrr=float(scores[rr]),
        recall={r: float(scores[recalls[r]]) for r in recall_at},
        hier_precision=[float(v) for v in hier_precision],
        k=k,
        n_queries=len(gold),
        extra=extra,
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
