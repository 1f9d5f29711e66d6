"""LlamaIndex adapters: our own conformance tests (LlamaIndex has no standard suite) and an end-to-end engine."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from conftest import build_tiny_heal_model, make_corpus  # noqa: E402
from llama_index.core import Settings, VectorStoreIndex  # noqa: E402
from llama_index.core.base.embeddings.base import BaseEmbedding  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.query_engine import RetrieverQueryEngine  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode  # noqa: E402

from heal_rag.encoder import HEALEncoder  # noqa: E402
from heal_rag.llamaindex import (  # noqa: E402
    HEALEmbedding,
    HEALRetriever,
    HierarchyNodePostprocessor,
    exclude_hierarchy_metadata,
)


@pytest.fixture(scope="module")
def encoder():
    return HEALEncoder.load(build_tiny_heal_model())


@pytest.fixture()
def nodes():
    texts, paths, titles = make_corpus()
    return [
        TextNode(text=t, id_=f"d{i}", metadata={"title": ti, "heal_path": list(p)})
        for i, (t, p, ti) in enumerate(zip(texts, paths, titles, strict=True))
    ]


def test_embedding_is_a_base_embedding_with_class_name_and_round_trip(encoder):
    embedding = HEALEmbedding(encoder=encoder, embed_batch_size=3)
    assert BaseEmbedding.__name__ in [c.__name__ for c in type(embedding).__mro__]
    assert HEALEmbedding.class_name() == "HEALEmbedding"
    payload = embedding.to_dict()
    assert payload["class_name"] == "HEALEmbedding" and payload["embed_batch_size"] == 3


def test_embedding_batches_sync_and_async(encoder):
    texts, _, _ = make_corpus()
    embedding = HEALEmbedding(encoder=encoder, embed_batch_size=5)  # 24 texts cross several batches
    batched = np.asarray(embedding.get_text_embedding_batch(texts))
    assert batched.shape == (24, 16)
    np.testing.assert_allclose(batched[7], embedding.get_text_embedding(texts[7]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    in_async = np.asarray(asyncio.run(embedding.aget_text_embedding_batch(texts)))
    np.testing.assert_allclose(in_async, batched, atol=1e-6)
    query = embedding.get_query_embedding("laser")
    assert all(isinstance(v, float) for v in query)
    assert asyncio.run(embedding.aget_query_embedding("laser")) == pytest.approx(query)
    assert embedding.get_text_embedding_batch([]) == []


def test_embedding_calls_the_model_once_per_batch(encoder, monkeypatch):
    calls = []
    original = encoder.embed_documents

    def counting(texts, **kwargs):
        calls.append(len(texts))
        return original(texts, **kwargs)

    monkeypatch.setattr(encoder, "embed_documents", counting)
    texts, _, _ = make_corpus()
    HEALEmbedding(encoder=encoder, embed_batch_size=10).get_text_embedding_batch(texts)
    assert calls == [10, 10, 4]


def test_retriever_scores_are_sorted_cosines_and_top_k_is_respected(encoder, nodes):
    retriever = HEALRetriever(nodes, encoder, similarity_top_k=4)
    hits = retriever.retrieve(nodes[5].text)
    assert len(hits) == 4 and hits[0].node.node_id == "d5"
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    assert len(asyncio.run(retriever.aretrieve(nodes[5].text))) == 4
    assert "heal_path" not in nodes[5].excluded_embed_metadata_keys, "the caller's nodes are not modified"


def test_retriever_uses_a_given_query_embedding(encoder, nodes, monkeypatch):
    retriever = HEALRetriever(nodes, encoder, similarity_top_k=2)
    as_indexed = exclude_hierarchy_metadata(nodes[9].model_copy(deep=True))  # hierarchy keys are not embedded
    embedding = encoder.embed_documents([as_indexed.get_content(metadata_mode=MetadataMode.EMBED)])[0]

    def must_not_embed(text):
        raise AssertionError("the query bundle already has an embedding")

    monkeypatch.setattr(encoder, "embed_query", must_not_embed)
    hits = retriever.retrieve(QueryBundle(query_str="unrelated words", embedding=embedding.tolist()))
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].node.metadata["heal_path"] == " > ".join(nodes[9].metadata["heal_path"])


def test_hierarchy_keys_are_not_embedded_or_shown_to_the_llm(encoder, nodes):
    retriever = HEALRetriever(nodes, encoder, similarity_top_k=1)
    hit = retriever.retrieve(nodes[0].text)[0]
    assert hit.node.metadata["heal_path"]
    for mode in (MetadataMode.EMBED, MetadataMode.LLM):
        content = hit.node.get_content(metadata_mode=mode)
        assert "heal_path" not in content and "heal_l0" not in content and "title" in content


def test_retriever_predicts_paths_for_unlabelled_nodes(encoder):
    texts, _, _ = make_corpus()
    retriever = HEALRetriever.from_texts(texts, encoder, similarity_top_k=3)
    assert all(len(h.node.metadata["heal_path"].split(" > ")) == 2 for h in retriever.retrieve("plasma"))


def test_postprocessor_reranks_keeps_scores_and_copies(encoder, nodes):
    hits = HEALRetriever(nodes, encoder, similarity_top_k=10).retrieve("laser light lens")
    before = [(h.node.node_id, h.score, dict(h.node.metadata)) for h in hits]
    post = HierarchyNodePostprocessor(encoder, top_n=3, margin=0.5)
    out = post.postprocess_nodes(hits, query_str="laser light lens")
    assert len(out) == 3
    assert [h.score for h in out] == sorted((h.score for h in out), reverse=True)
    for hit in out:
        assert hit.node.metadata["retrieval_score"] is not None
        assert -1e-9 <= hit.score - hit.node.metadata["retrieval_score"] <= 0.5 + 1e-9
        assert hit.node.metadata["heal_level_match"] in (0, 1, 2)
    assert [(h.node.node_id, h.score, dict(h.node.metadata)) for h in hits] == before
    assert post.postprocess_nodes([], query_str="x") == []
    with pytest.raises(ValueError, match="needs the query"):
        post.postprocess_nodes(hits)
    assert len(asyncio.run(post.apostprocess_nodes(hits, query_str="laser"))) == 3


def test_postprocessor_without_retrieval_scores_computes_similarity(encoder, nodes):
    unscored = [NodeWithScore(node=n, score=None) for n in nodes[:8]]  # two leaves, 4 nodes each
    out = HierarchyNodePostprocessor(encoder, top_n=8, margin=0.0).postprocess_nodes(unscored, query_str=nodes[2].text)
    assert {h.node.metadata["heal_l1"] for h in out[:4]} == {nodes[2].metadata["heal_path"][1]}
    # no retrieval score to keep, and no None left in metadata for a vector store to refuse if the nodes are stored
    assert all("retrieval_score" not in h.node.metadata and None not in h.node.metadata.values() for h in out)


def test_vector_store_index_and_query_engines_with_mock_llm(encoder, nodes, monkeypatch):
    monkeypatch.setattr(Settings, "_llm", MockLLM(max_tokens=8))
    embed_model = HEALEmbedding(encoder=encoder)
    index = VectorStoreIndex(nodes, embed_model=embed_model)
    post = HierarchyNodePostprocessor(encoder, top_n=2)
    engine = index.as_query_engine(llm=MockLLM(max_tokens=8), similarity_top_k=6, node_postprocessors=[post])
    response = engine.query("plasma ion fusion")
    assert len(response.source_nodes) == 2
    assert all("heal_level_match" in n.node.metadata for n in response.source_nodes)

    retriever_engine = RetrieverQueryEngine.from_args(
        HEALRetriever(nodes, encoder, similarity_top_k=5), llm=MockLLM(max_tokens=8), node_postprocessors=[post]
    )
    answer = retriever_engine.query("group ring algebra")
    assert len(answer.source_nodes) == 2 and answer.response is not None
