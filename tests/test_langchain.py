"""LangChain adapters: langchain-tests' standard suites plus our own behaviour tests."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from conftest import build_tiny_heal_model, make_corpus  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402
from langchain_tests.integration_tests import EmbeddingsIntegrationTests, RetrieversIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import EmbeddingsUnitTests  # noqa: E402

from heal_rag.encoder import HEALEncoder  # noqa: E402
from heal_rag.langchain import HEALEmbeddings, HEALRetriever, HierarchyReranker  # noqa: E402


def corpus_documents() -> list[Document]:
    texts, paths, titles = make_corpus()
    return [
        Document(page_content=text, metadata={"title": title, "heal_path": path}, id=f"d{i}")
        for i, (text, path, title) in enumerate(zip(texts, paths, titles, strict=True))
    ]


class TestHEALEmbeddingsStandardUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self):
        return HEALEmbeddings

    @property
    def embedding_model_params(self):
        return {"model": str(build_tiny_heal_model())}


class TestHEALEmbeddingsStandardIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self):
        return HEALEmbeddings

    @property
    def embedding_model_params(self):
        return {"model": str(build_tiny_heal_model()), "batch_size": 2}


class TestHEALRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self):
        return HEALRetriever

    @property
    def retriever_constructor_params(self):
        return {"encoder": HEALEncoder.load(build_tiny_heal_model()), "documents": corpus_documents()}

    @property
    def retriever_query_example(self) -> str:
        return "laser light photon"


@pytest.fixture(scope="module")
def encoder():
    return HEALEncoder.load(build_tiny_heal_model())


def test_embeddings_batching_matches_one_by_one_and_are_normalised(encoder):
    texts, _, _ = make_corpus()
    embeddings = HEALEmbeddings(encoder=encoder)
    batched = np.asarray(embeddings.embed_documents(texts))
    single = np.asarray([embeddings.embed_documents([t])[0] for t in texts[:5]])
    np.testing.assert_allclose(batched[:5], single, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert embeddings.embed_documents([]) == []
    assert all(isinstance(v, float) for v in embeddings.embed_query("laser"))


def test_embeddings_work_in_a_vector_store_and_async(encoder):
    embeddings = HEALEmbeddings(encoder=encoder)
    texts, _, _ = make_corpus()
    store = InMemoryVectorStore.from_texts(texts, embeddings)
    hit = store.similarity_search(texts[7], k=1)[0]
    assert hit.page_content == texts[7]
    vector = asyncio.run(embeddings.aembed_query("plasma"))
    assert vector == pytest.approx(embeddings.embed_query("plasma"))


def test_embeddings_reject_bad_settings(encoder):
    with pytest.raises(ValueError):
        HEALEmbeddings(encoder=encoder, unknown_option=1)
    with pytest.raises(TypeError, match="HEALEncoder"):
        HEALEmbeddings(encoder="not an encoder")
    with pytest.raises(TypeError, match="single string"):
        HEALEmbeddings(encoder=encoder).embed_documents("one text")


def test_retriever_scores_paths_and_k(encoder):
    texts, paths, _ = make_corpus()
    retriever = HEALRetriever.from_texts(texts, ids=[f"d{i}" for i in range(len(texts))], encoder=encoder, k=5)
    docs = retriever.invoke(texts[3])
    assert len(docs) == 5 and docs[0].id == "d3"
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True) and -1.0 <= scores[-1] <= scores[0] <= 1.0
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    # no heal_path in the input metadata: predicted from the model's label tree
    assert all(
        len(d.metadata["heal_path"].split(" > ")) == 2 and d.metadata["heal_path"].startswith(d.metadata["heal_l0"])
        for d in docs
    )
    assert len(retriever.invoke(texts[3], k=2)) == 2
    assert len(asyncio.run(retriever.ainvoke(texts[3], k=3))) == 3
    with pytest.raises(ValueError, match="k must be"):
        retriever.invoke("x", k=0)


def test_retriever_keeps_given_paths_and_does_not_mutate_inputs(encoder):
    documents = corpus_documents()
    before = [dict(d.metadata) for d in documents]
    retriever = HEALRetriever(encoder=encoder, documents=documents, k=3)
    hit = retriever.invoke(documents[0].page_content)[0]
    assert hit.metadata["heal_path"] == " > ".join(documents[0].metadata["heal_path"])
    assert [d.metadata for d in documents] == before


def test_empty_retriever_returns_nothing(encoder):
    assert HEALRetriever(encoder=encoder, documents=[]).invoke("anything") == []


def test_reranker_returns_new_documents_with_scores(encoder):
    documents = corpus_documents()
    retriever = HEALRetriever(encoder=encoder, documents=documents, k=10)
    query = "laser light lens beam"
    retrieved = retriever.invoke(query)
    snapshot = [dict(d.metadata) for d in retrieved]
    reranker = HierarchyReranker(encoder=encoder, top_n=4, margin=0.5)
    reranked = reranker.compress_documents(retrieved, query)
    assert len(reranked) == 4
    assert [d.metadata for d in retrieved] == snapshot, "inputs must not be mutated"
    scores = [d.metadata["relevance_score"] for d in reranked]
    assert scores == sorted(scores, reverse=True)
    for doc in reranked:
        bonus = doc.metadata["relevance_score"] - doc.metadata["score"]
        assert -1e-9 <= bonus <= 0.5 + 1e-9  # the hierarchy term lies in [0, margin]
        assert doc.metadata["heal_level_match"] in (0, 1, 2) and "title" in doc.metadata
    assert reranker.compress_documents([], query) == []
    assert len(asyncio.run(reranker.acompress_documents(retrieved, query))) == 4


def test_reranker_prefers_documents_in_the_querys_subtree(encoder):
    """With a large β the hierarchy decides: documents whose labels match the query's come first."""
    documents = corpus_documents()
    query = documents[0].page_content
    reranked = HierarchyReranker(
        encoder=encoder, top_n=len(documents), margin=1.0, confidence_floor=0.0
    ).compress_documents(documents, query)
    full = [d.metadata["heal_level_match"] == 2 for d in reranked]
    n_full = sum(full)
    assert n_full >= 1 and all(full[:n_full]) and not any(full[n_full:])


def test_reranker_inside_contextual_compression_retriever(encoder):
    classic = pytest.importorskip("langchain_classic.retrievers")
    base = HEALRetriever(encoder=encoder, documents=corpus_documents(), k=8)
    retriever = classic.ContextualCompressionRetriever(
        base_compressor=HierarchyReranker(encoder=encoder, top_n=3), base_retriever=base
    )
    docs = retriever.invoke("plasma ion fusion")
    assert len(docs) == 3 and all("relevance_score" in d.metadata for d in docs)


def test_reranker_needs_a_heal_model(tiny_model_dir):
    with pytest.raises(ValueError, match="heal_rag.json"):
        HierarchyReranker(encoder=HEALEncoder.load(tiny_model_dir))


def test_query_embeddings_are_cached_and_not_shared_mutably(encoder, monkeypatch):
    calls = []
    original = encoder.model.encode_query

    def counting(texts, **kwargs):
        calls.append(list(texts))
        return original(texts, **kwargs)

    monkeypatch.setattr(encoder.model, "encode_query", counting)
    first = encoder.embed_query("a query seen twice")
    first[:] = 0.0  # a caller mutating its copy must not poison the cache
    second = encoder.embed_query("a query seen twice")
    batch = encoder.embed_queries(["a query seen twice"])
    assert calls == [["a query seen twice"]]
    assert np.linalg.norm(second) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(batch[0], second)
