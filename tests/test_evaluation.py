"""Each metric on a hand-made case whose answer is worked out in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from heal_rag.evaluation import (
    centroid_predict_level_ids,
    evaluate_rankings,
    evaluate_retrieval,
    graded_gains,
    hierarchical_classification_report,
    knn_predict_level_ids,
)
from heal_rag.evaluation.retrieval import paired_difference, per_query_scores, relevance_judgements

# Five documents in a 2-level hierarchy (nested ids): A/a, A/a, A/b, B/c, B/c.
DOC_LEVELS = np.array([[0, 0], [0, 0], [0, 1], [1, 2], [1, 2]])


def test_mrr_and_recall_count_only_the_gold_document():
    # Query 0 (gold 0) finds it 2nd; query 1 (gold 3) 1st; query 2 (gold 2) not in the top 3.
    ranked = np.array([[1, 0, 2], [3, 4, 0], [0, 1, 3]])
    report = evaluate_rankings(ranked, [0, 3, 2], DOC_LEVELS[[0, 3, 2]], DOC_LEVELS, k=3, recall_at=(1, 2))
    assert report.mrr == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert report.recall[1] == pytest.approx(1 / 3)
    assert report.recall[2] == pytest.approx(2 / 3)


def test_mrr_ignores_hits_below_the_cutoff():
    ranked = np.array([[1, 2, 3, 0]])  # gold 4th, cut-off 3
    report = evaluate_rankings(ranked, [0], DOC_LEVELS[[0]], DOC_LEVELS, k=3, recall_at=(1,), context_k=1)
    assert report.mrr == 0.0


def test_graded_gains_grow_with_the_shared_prefix_and_the_gold_gains_most():
    gains = graded_gains(DOC_LEVELS[[0]], DOC_LEVELS, [0])
    # doc 0 gold: L + 1 = 3; doc 1 same leaf: 2; doc 2 same parent: 1; docs 3, 4 other branch: 0.
    assert gains.tolist() == [[3, 2, 1, 0, 0]]


def test_graded_ndcg_matches_a_hand_computed_value():
    ranked = np.array([[2, 0, 3]])  # gains 1, 3, 0
    report = evaluate_rankings(ranked, [0], DOC_LEVELS[[0]], DOC_LEVELS, k=3, recall_at=(1,), context_k=1)
    dcg = 1 / math.log2(2) + 3 / math.log2(3)
    ideal = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)  # docs 0, 1, 2
    assert report.extra["nDCG@3"] == pytest.approx(dcg / ideal)


def test_hierarchical_precision_per_level():
    ranked = np.array([[1, 2, 3, 4]])  # query in A/a: levels of the top 4 are A/a, A/b, B/c, B/c
    report = evaluate_rankings(ranked, [0], DOC_LEVELS[[0]], DOC_LEVELS, k=4, recall_at=(1,), context_k=1)
    assert report.hier_precision == pytest.approx([2 / 4, 1 / 4])


def test_hallucination_proxies_context_miss_and_off_topic():
    # Query 0 (gold 0, leaf A/a): context [2, 3] misses the gold, both passages off-topic.
    # Query 1 (gold 3, leaf B/c): context [4, 3] holds the gold, both on-topic.
    ranked = np.array([[2, 3, 0], [4, 3, 0]])
    report = evaluate_rankings(ranked, [0, 3], DOC_LEVELS[[0, 3]], DOC_LEVELS, k=3, recall_at=(1,), context_k=2)
    assert report.extra["context-miss@2"] == pytest.approx(0.5)
    assert report.extra["off-topic@2"] == pytest.approx(0.5)


def test_per_query_scores_hold_each_query_and_average_to_the_report():
    # Query 0 (gold 0) finds it 2nd among A/a, A/a, A/b; query 1 (gold 3) misses it entirely among A/a, A/a, A/b.
    ranked = np.array([[1, 0, 2], [0, 1, 2]])
    scores = per_query_scores(ranked, [0, 3], DOC_LEVELS[[0, 3]], DOC_LEVELS, k=3, recall_at=(1,), context_k=2)
    assert scores["MRR@3"].tolist() == [0.5, 0.0]  # trec_eval leaves a zero query out; we keep it as 0
    assert scores["Recall@1"].tolist() == [0.0, 0.0]
    assert scores["hP@3/L0"] == pytest.approx([1.0, 0.0])
    assert scores["hP@3/L1"] == pytest.approx([2 / 3, 0.0])
    assert scores["context-miss@2"].tolist() == [0.0, 1.0]
    assert scores["off-topic@2"].tolist() == [0.0, 1.0]
    assert scores["nDCG@3"][1] == 0.0
    report = evaluate_rankings(ranked, [0, 3], DOC_LEVELS[[0, 3]], DOC_LEVELS, k=3, recall_at=(1,), context_k=2)
    assert report.as_dict() == pytest.approx({name: values.mean() for name, values in scores.items()})


def test_paired_difference_counts_wins_and_brackets_the_mean():
    a = np.array([1.0, 1.0, 0.5, 0.0, 1.0, 1.0])
    b = np.array([0.5, 1.0, 1.0, 0.0, 0.0, 1.0])
    diff = paired_difference(a, b, n_resamples=500)
    assert diff.mean == pytest.approx(1.0 / 6)  # (+0.5 - 0.5 + 1) / 6
    assert (diff.wins, diff.losses) == (2, 1)
    assert diff.low <= diff.mean <= diff.high
    assert diff.low < 0 < diff.high  # one loss among six queries: not a sure win
    sure = paired_difference(np.full(50, 1.0), np.full(50, 0.5))
    assert (sure.low, sure.high) == (0.5, 0.5)
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference(a, b[:3])


def test_judgements_listing_only_what_matters_keep_ndcg_exact():
    rng = np.random.default_rng(0)
    levels = np.stack([rng.integers(0, 2, 400), rng.integers(0, 2, 400)], axis=1)
    levels[:, 1] += 2 * levels[:, 0]  # nested ids
    ranked = np.argsort(-rng.random((30, 400)), axis=1)[:, :10]
    compact = relevance_judgements(ranked, np.arange(30), levels[:30], levels, k=10)
    assert max(len(j) for j in compact.values()) <= 20
    gains = graded_gains(levels[:30], levels, np.arange(30))
    discounts = 1 / np.log2(np.arange(2, 12))
    ideal = (-np.sort(-gains, axis=1)[:, :10] * discounts).sum(axis=1)
    dcg = (np.take_along_axis(gains, ranked, axis=1) * discounts).sum(axis=1)
    report = evaluate_rankings(ranked, np.arange(30), levels[:30], levels, k=10, recall_at=(1,), context_k=5)
    assert report.extra["nDCG@10"] == pytest.approx(float((dcg / ideal).mean()))


def test_evaluate_retrieval_ranks_by_cosine():
    docs = np.eye(5)
    queries = docs[[0, 3]] * 0.9 + docs[[1, 4]] * 0.1  # nearest: own document, then the neighbour
    report = evaluate_retrieval(queries, docs, [0, 3], DOC_LEVELS[[0, 3]], DOC_LEVELS, k=2, recall_at=(1,))
    assert report.mrr == 1.0 and report.hier_precision == [1.0, 1.0]


def test_evaluate_rankings_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one row per gold document"):
        evaluate_rankings(np.array([[0, 1]]), [0, 1], DOC_LEVELS[:2], DOC_LEVELS)


def test_hierarchical_classification_report_by_hand():
    true = np.array([[0, 0], [0, 1], [1, 2]])
    predicted = np.array([[0, 0], [0, 0], [0, 1]])
    report = hierarchical_classification_report(predicted, true)
    assert report.level_accuracy == pytest.approx([2 / 3, 1 / 3])
    # Label sets with ancestors: |Â∩A| = 2 + 1 + 0 = 3 of 6 predicted and 6 true.
    assert report.hierarchical_precision == pytest.approx(0.5)
    assert report.hierarchical_recall == pytest.approx(0.5)
    assert report.hierarchical_f1 == pytest.approx(0.5)


def test_hierarchical_precision_and_recall_differ_for_shorter_paths():
    true = np.array([[0, 0]])
    predicted = np.array([[0, -1]])  # stops at the right parent
    report = hierarchical_classification_report(predicted, true)
    assert report.hierarchical_precision == 1.0
    assert report.hierarchical_recall == 0.5
    assert report.hierarchical_f1 == pytest.approx(2 / 3)


def test_hierarchical_classification_report_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        hierarchical_classification_report(np.zeros((2, 2)), np.zeros((3, 2)))


def test_knn_votes_by_similarity_and_returns_whole_paths():
    references = np.array([[1.0, 0.0], [0.96, 0.28], [0.0, 1.0]])
    reference_levels = np.array([[0, 0], [0, 1], [1, 2]])
    query = np.array([[0.8, 0.6]])  # similarities 0.8, 0.936, 0.6
    assert knn_predict_level_ids(query, references, reference_levels, k=1).tolist() == [[0, 1]]
    # k=3: leaf 0 gets 0.8, leaf 1 0.936, leaf 2 0.6: leaf 1 still wins; with two copies of leaf 0, leaf 0 wins.
    assert knn_predict_level_ids(query, references, reference_levels, k=3).tolist() == [[0, 1]]
    references = np.vstack([references, [[1.0, 0.0]]])
    reference_levels = np.vstack([reference_levels, [[0, 0]]])
    assert knn_predict_level_ids(query, references, reference_levels, k=4).tolist() == [[0, 0]]


def test_centroid_prediction_uses_leaf_means():
    references = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    reference_levels = np.array([[0, 0], [1, 1], [1, 1]])
    query = np.array([[0.6, 0.8], [0.9, 0.1]])
    assert centroid_predict_level_ids(query, references, reference_levels).tolist() == [[1, 1], [0, 0]]


def test_knn_leave_one_out_never_votes_for_itself():
    embeddings = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.14, 0.99]])
    levels = np.array([[0, 0], [0, 0], [1, 1], [1, 1]])
    with_self = knn_predict_level_ids(embeddings, embeddings, levels, k=1)
    assert with_self.tolist() == levels.tolist()  # trivially: each text finds itself
    # Leave-one-out with swapped labels on the neighbours exposes whether a text votes for itself.
    swapped = np.array([[0, 0], [1, 1], [1, 1], [0, 0]])
    assert knn_predict_level_ids(embeddings, embeddings, swapped, k=1, exclude_self=True).tolist() == [
        [1, 1],
        [0, 0],
        [0, 0],
        [1, 1],
    ]
