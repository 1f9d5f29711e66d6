"""The hierarchy-aware scorer: bounded, confidence-gated, its settings chosen per model and read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heal_rag.rerank import DEFAULT_SETTINGS, HierarchyScorer, certainty, choose_settings, hierarchy_bonus


def random_case(seed: int, n: int = 20, labels: tuple[int, ...] = (3, 7)):
    rng = np.random.default_rng(seed)
    probabilities = [rng.dirichlet(np.full(k, rng.uniform(0.05, 2.0))) for k in labels]
    label_ids = np.stack([rng.integers(0, k, n) for k in labels], axis=1)
    similarities = rng.uniform(0.2, 0.9, n)
    return probabilities, label_ids, similarities


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10**6), margin=st.floats(0.0, 0.2), floor=st.floats(0.0, 0.9))
def test_a_candidate_further_ahead_than_the_margin_is_never_overtaken(seed, margin, floor):
    probabilities, label_ids, similarities = random_case(seed)
    bonus = hierarchy_bonus(probabilities, label_ids, margin, np.ones(2), floor)
    assert (bonus >= 0).all() and (bonus <= margin + 1e-12).all()
    scores = similarities + bonus
    ahead = similarities[:, None] - similarities[None, :] > margin
    assert (scores[:, None] > scores[None, :])[ahead].all()


def test_an_uncertain_query_keeps_the_retrievers_order():
    _, label_ids, similarities = random_case(3)
    uniform = [np.full(3, 1 / 3), np.full(7, 1 / 7)]
    assert np.allclose(certainty(uniform[0]), 0.0) and np.allclose(certainty(uniform[1]), 0.0)
    bonus = hierarchy_bonus(uniform, label_ids, 0.5, np.ones(2), 0.0)
    assert np.allclose(bonus, 0.0)
    assert certainty(np.array([1.0, 0.0, 0.0])) == pytest.approx(1.0)
    # below the floor, a fairly sure query counts as unsure too
    sure_ish = np.array([0.6, 0.2, 0.2])
    assert certainty(sure_ish, confidence_floor=0.0) > 0 and certainty(sure_ish, confidence_floor=0.5) == 0


def test_the_scorer_keeps_the_retrievers_order_for_an_uncertain_query(tiny_heal_model_dir, monkeypatch):
    from heal_rag.encoder import HEALEncoder

    encoder = HEALEncoder.load(tiny_heal_model_dir)
    scorer = HierarchyScorer(encoder, margin=1.0, confidence_floor=0.0)
    tree = encoder.label_tree
    monkeypatch.setattr(
        encoder,
        "level_probabilities",
        lambda embeddings, temperature: [np.full((1, tree.n_labels(lv)), 1 / tree.n_labels(lv)) for lv in range(2)],
    )
    texts = [f"text {i}" for i in range(6)]
    paths = [["Physics", "Optics"], ["Maths", "Algebra"]] * 3
    similarities = [0.3, 0.9, 0.5, 0.1, 0.7, 0.6]
    results = scorer.rerank("q", texts, paths=paths, similarities=similarities, query_embedding=np.zeros(16))
    assert [r.index for r in results] == list(np.argsort(-np.asarray(similarities)))
    assert all(r.score == pytest.approx(r.similarity) for r in results)


def test_chosen_settings_never_cost_mrr_or_context_miss():
    rng = np.random.default_rng(0)
    n_docs, dim = 200, 16
    documents = rng.normal(size=(n_docs, dim))
    documents /= np.linalg.norm(documents, axis=1, keepdims=True)
    level_ids = np.stack([rng.integers(0, 3, n_docs), rng.integers(0, 9, n_docs)], axis=1)
    gold = rng.choice(n_docs, 60, replace=False)
    queries = documents[gold] + rng.normal(scale=0.6, size=(60, dim))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    centroids = [
        rng.normal(size=(3, dim)),
        rng.normal(size=(9, dim)),
    ]  # unrelated to the labels: the term can only hurt
    chosen = choose_settings(queries, documents, gold, level_ids, centroids)
    before, after = chosen["validation"]["retriever"], chosen["validation"]["reranked"]
    assert after["MRR@10"] >= before["MRR@10"] and after["context-miss@5"] <= before["context-miss@5"]
    assert set(chosen) >= {"margin", "temperature", "confidence_floor"}


def test_fine_tune_stores_the_chosen_settings_and_the_rerankers_read_them(tmp_path, tiny_model_dir):
    from conftest import make_corpus

    from heal_rag.encoder import HEALEncoder
    from heal_rag.langchain import HierarchyReranker
    from heal_rag.llamaindex import HierarchyNodePostprocessor
    from heal_rag.training import fine_tune

    texts, paths, titles = make_corpus(per_leaf=100)  # 600 documents: 60 held-out queries, enough to choose
    fine_tune(texts, paths, titles=titles, output_dir=tmp_path / "m", base_model=tiny_model_dir, max_steps=2,
              batch_size=8, show_progress_bar=False)  # fmt: skip
    record = json.loads((tmp_path / "m" / "heal_rag.json").read_text())["training"]["reranker"]
    assert record["validation"]["queries"] >= 50
    assert record["validation"]["reranked"]["MRR@10"] >= record["validation"]["retriever"]["MRR@10"]
    encoder = HEALEncoder.load(tmp_path / "m")
    expected = {key: record[key] for key in DEFAULT_SETTINGS}
    assert HierarchyScorer.recorded_settings(encoder) == expected
    scorer = HierarchyScorer(encoder)
    assert {k: getattr(scorer, k) for k in DEFAULT_SETTINGS} == expected
    assert HierarchyReranker(encoder=encoder)._scorer.margin == record["margin"]
    assert HierarchyNodePostprocessor(encoder)._scorer.temperature == record["temperature"]
    assert HierarchyScorer(encoder, margin=0.0).margin == 0.0, "an explicit value wins"


def test_a_model_without_a_record_gets_the_conservative_defaults(tiny_heal_model_dir):
    from heal_rag.encoder import HEALEncoder

    encoder = HEALEncoder.load(tiny_heal_model_dir)  # 24 documents: too few to hold queries out, nothing chosen
    assert HierarchyScorer.recorded_settings(encoder) == {}
    scorer = HierarchyScorer(encoder)
    assert {k: getattr(scorer, k) for k in DEFAULT_SETTINGS} == DEFAULT_SETTINGS


def test_a_path_outside_the_models_tree_is_predicted_reported_and_never_shown_as_the_users(tiny_heal_model_dir):
    import warnings

    from heal_rag.encoder import HEALEncoder

    scorer = HierarchyScorer(HEALEncoder.load(str(tiny_heal_model_dir)), margin=0.1)
    texts = ["laser light lens", "plasma fusion tokamak"]
    known = scorer.tree.leaf_path(0)
    with pytest.warns(UserWarning, match=r"1 of 2 documents have a label path the model's label tree does not hold "
                      r"\(first: 'Pumps > Maintenance': a folder or category added since training"):  # fmt: skip
        results = scorer.rerank("laser", texts, paths=[("Pumps", "Maintenance"), known])
    by_index = {r.index: r for r in results}
    assert by_index[1].path == known
    predicted = by_index[0].path
    assert predicted != ("Pumps", "Maintenance") and all(i >= 0 for i in scorer.tree.ids_for_path(predicted))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per scorer, not once per query
        scorer.rerank("plasma", texts, paths=[("Pumps", "Maintenance"), known])


def test_rerankers_warn_when_no_document_has_the_users_path_key(tiny_heal_model_dir):
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from heal_rag.encoder import HEALEncoder
    from heal_rag.langchain import HierarchyReranker
    from heal_rag.llamaindex import HierarchyNodePostprocessor

    encoder = HEALEncoder.load(str(tiny_heal_model_dir))
    docs = [Document("laser light lens", metadata={"category": "Physics > Optics", "source": "a"})]
    expected = r"None of the 1 documents has metadata key 'categroy' \(their keys: category, source\), so every"
    with pytest.warns(UserWarning, match=expected):
        HierarchyReranker(encoder=encoder, path_key="categroy").compress_documents(docs, "laser")
    per_level = [Document("laser light lens", metadata={"field": "Physics", "topic": "Optics"})]
    reranked = HierarchyReranker(encoder=encoder, path_key=["field", "topic"]).compress_documents(per_level, "laser")
    assert reranked[0].metadata["heal_path"] == "Physics > Optics"  # one key per level, as fine_tune_documents takes
    nodes = [NodeWithScore(node=TextNode(text="laser light lens", metadata={"category": "x"}), score=0.5)]
    with pytest.warns(UserWarning, match="metadata key 'categroy'"):
        HierarchyNodePostprocessor(encoder=encoder, path_key="categroy").postprocess_nodes(
            nodes, query_bundle=QueryBundle("laser")
        )
    nodes = [NodeWithScore(node=TextNode(text="laser", metadata={"field": "Physics", "topic": "Optics"}), score=0.5)]
    out = HierarchyNodePostprocessor(encoder=encoder, path_key=["field", "topic"]).postprocess_nodes(
        nodes, query_bundle=QueryBundle("laser")
    )
    assert out[0].node.metadata["heal_path"] == "Physics > Optics"
