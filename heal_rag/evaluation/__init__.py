"""Evaluation of retrieval and classification quality in a label hierarchy."""

from __future__ import annotations

from heal_rag.evaluation.classification import (
    ClassificationReport,
    centroid_predict_level_ids,
    hierarchical_classification_report,
    knn_predict_level_ids,
)
from heal_rag.evaluation.retrieval import (
    RetrievalReport,
    evaluate_rankings,
    evaluate_retrieval,
    graded_gains,
    top_k_indices,
)

__all__ = [
    "ClassificationReport",
    "RetrievalReport",
    "centroid_predict_level_ids",
    "evaluate_rankings",
    "evaluate_retrieval",
    "graded_gains",
    "hierarchical_classification_report",
    "knn_predict_level_ids",
    "top_k_indices",
]
