"""Evaluation of retrieval quality in a label hierarchy."""

from __future__ import annotations

from heal_rag.evaluation.retrieval import (
    RetrievalReport,
    evaluate_rankings,
    evaluate_retrieval,
    graded_gains,
    top_k_indices,
)

__all__ = ["RetrievalReport", "evaluate_rankings", "evaluate_retrieval", "graded_gains", "top_k_indices"]
