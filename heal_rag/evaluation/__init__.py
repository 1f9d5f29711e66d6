"""Evaluation of retrieval and classification quality in a label hierarchy."""

from __future__ import annotations

from heal_rag.evaluation.classification import (
    ClassificationReport,
    centroid_predict_level_ids,
    hierarchical_classification_report,
    knn_predict_level_ids,
)
from heal_rag.evaluation.retrieval import (
    PairedDifference,
    RetrievalReport,
    evaluate_rankings,
    evaluate_retrieval,
    format_paired,
    graded_gains,
    paired_difference,
    per_query_scores,
    top_k_indices,
)

__all__ = [
    "ClassificationReport",
    "PairedDifference",
    "RetrievalReport",
    "centroid_predict_level_ids",
    "evaluate_rankings",
    "evaluate_retrieval",
    "format_paired",
    "graded_gains",
    "hierarchical_classification_report",
    "knn_predict_level_ids",
    "paired_difference",
    "per_query_scores",
    "top_k_indices",
]
