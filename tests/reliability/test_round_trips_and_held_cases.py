"""Kind 8 (framework round trips) and the cases that already held when the faults were found, kept held:
concurrent queries, an index build killed midway, metadata kept through the index."""

from __future__ import annotations

import threading
import warnings

import pytest
from conftest import build_tiny_heal_model, make_corpus, write_corpus_jsonl

from heal_rag.data import Corpus
from heal_rag.encoder import HEALEncoder
from heal_rag.labels import LabelPaths


def labelled_corpus(metadata=None) -> Corpus:
    texts, paths, titles = make_corpus()
    return Corpus([f"d{i}" for i in range(len(texts))], texts, titles, LabelPaths(paths), metadata=metadata)


def test_llamaindex_embedding_round_trips_through_to_dict():
    from heal_rag.llamaindex import HEALEmbedding

    embedding = HEALEmbedding(model=str(build_tiny_heal_model()), embed_batch_size=7)
    rebuilt = HEALEmbedding.from_dict(embedding.to_dict())
    assert rebuilt.to_dict() == embedding.to_dict() and rebuilt.embed_batch_size == 7
    assert rebuilt.get_query_embedding("laser light") == embedding.get_query_embedding("laser light")
    with pytest.raises(ValueError, match="Give the model once"):
        HEALEmbedding(model=str(build_tiny_heal_model()), model_name="/somewhere/else")


def test_llamaindex_nodes_from_our_retriever_and_reranker_go_into_chroma_vector_store(tmp_path):
    pytest.importorskip("llama_index.vector_stores.chroma")
    from heal_rag.llamaindex import HEALEmbedding, HEALRetriever, HierarchyNodePostprocessor, chroma_vector_store

    encoder = HEALEncoder.load(build_tiny_heal_model())
    texts, paths, _ = make_corpus()
    from llama_index.core.schema import TextNode

    nodes = [
        TextNode(text=t, id_=f"n{i}", metadata={"heal_path": list(p)})
        for i, (t, p) in enumerate(zip(texts, paths, strict=True))
    ]
    hits = HEALRetriever(nodes, encoder, similarity_top_k=6).retrieve("plasma ion fusion")
    reranked = HierarchyNodePostprocessor(encoder, top_n=3).postprocess_nodes(hits, query_str="plasma ion fusion")
    for result in (*hits, *reranked):
        assert all(isinstance(v, (str, int, float)) or v is None for v in result.node.metadata.values())
    store = chroma_vector_store(tmp_path / "db", "nodes", HEALEmbedding(encoder=encoder))
    to_store = []
    for result in (*hits, *reranked):
        node = result.node.model_copy()
        node.id_ = f"{node.id_}-{len(to_store)}"
        node.embedding = encoder.embed_documents([node.get_content()])[0].tolist()
        to_store.append(node)
    store.add(to_store)
    assert store._collection.count() == len(to_store)


def test_langchain_documents_from_our_retriever_and_reranker_have_flat_metadata():
    from heal_rag.langchain import HEALRetriever, HierarchyReranker

    encoder = HEALEncoder.load(build_tiny_heal_model())
    texts, paths, _ = make_corpus()
    retriever = HEALRetriever.from_texts(texts, [{"heal_path": list(p)} for p in paths], encoder=encoder, k=6)
    docs = retriever.invoke("plasma ion")
    reranked = HierarchyReranker(encoder=encoder, top_n=3).compress_documents(docs, "plasma ion")
    for doc in (*docs, *reranked):
        assert all(isinstance(v, (str, int, float, bool)) for v in doc.metadata.values())
        assert " > " in doc.metadata["heal_path"]


def test_langchain_chroma_relevance_scores_land_in_0_1_without_warnings(tmp_path):
    pytest.importorskip("langchain_chroma")
    from heal_rag.chroma import build_index
    from heal_rag.langchain import HEALEmbeddings, chroma_vectorstore, cosine_relevance_score

    model = str(build_tiny_heal_model())
    build_index(model, labelled_corpus(), tmp_path / "db", collection_name="papers", show_progress=False)
    store = chroma_vectorstore(tmp_path / "db", "papers", HEALEmbeddings(model=model))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scored = store.similarity_search_with_relevance_scores("tokamak mirror gene", k=24)
    assert len(scored) == 24 and all(0.0 <= score <= 1.0 for _, score in scored)
    assert cosine_relevance_score(0.0) == 1.0 and cosine_relevance_score(2.0) == 0.0
    assert cosine_relevance_score(1.0) == 0.5


def test_heal_rag_and_langchain_share_one_chroma_database_in_one_process(tmp_path):
    langchain_chroma = pytest.importorskip("langchain_chroma")
    from heal_rag.chroma import build_index, open_collection
    from heal_rag.langchain import HEALEmbeddings

    model = str(build_tiny_heal_model())
    db = str(tmp_path / "db")
    # LangChain's own store first, with its defaults; then heal_rag on the same folder; then LangChain again.
    theirs = langchain_chroma.Chroma("their-notes", HEALEmbeddings(model=model), persist_directory=db)
    theirs.add_texts(["a note of theirs"], ids=["n1"])
    build_index(model, labelled_corpus(), db, collection_name="papers", show_progress=False)
    assert open_collection(db, "papers").count() == 24
    again = langchain_chroma.Chroma("their-notes", HEALEmbeddings(model=model), persist_directory=db)
    assert again.get(ids=["n1"])["documents"] == ["a note of theirs"]


def test_build_index_keeps_the_users_metadata(tmp_path):
    from heal_rag.chroma import build_index

    metadata = [
        {"source": f"docs/{i}.md", "page": i, "offsets": [i, i + 10], "extra": {"k": i}, "none": None}
        for i in range(24)
    ]
    collection = build_index(
        str(build_tiny_heal_model()), labelled_corpus(metadata), tmp_path / "db", show_progress=False
    )
    stored = collection.get(ids=["d3"])["metadatas"][0]
    assert stored["source"] == "docs/3.md" and stored["page"] == 3 and stored["offsets"] == "3, 13"
    assert stored["extra"] == '{"k": 3}' and "none" not in stored and stored["heal_path"] == "Physics > Optics"


def test_concurrent_queries_from_many_threads_give_the_same_results(tmp_path):
    from heal_rag.chroma import build_index, open_collection

    build_index(str(build_tiny_heal_model()), labelled_corpus(), tmp_path / "db", show_progress=False)
    collection = open_collection(tmp_path / "db", "heal_rag")
    queries = [f"laser plasma gene {i}" for i in range(25)]
    expected = [collection.query(query_texts=[q], n_results=5)["ids"][0] for q in queries]
    errors, mismatches = [], []

    def worker():
        try:
            for query, ids in zip(queries, expected, strict=True):
                if collection.query(query_texts=[query], n_results=5)["ids"][0] != ids:
                    mismatches.append(query)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and mismatches == []


def test_an_index_build_killed_midway_reruns_to_the_same_collection(tmp_path, monkeypatch):
    from heal_rag.chroma import build_index
    from heal_rag.chroma.embedding_function import HEALEmbeddingFunction

    model = str(build_tiny_heal_model())
    clean = build_index(model, labelled_corpus(), tmp_path / "clean", batch_size=5, show_progress=False)
    original = HEALEmbeddingFunction.embed_as_array
    calls = {"n": 0}

    def dies_on_third_batch(self, texts):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, texts)

    monkeypatch.setattr(HEALEmbeddingFunction, "embed_as_array", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        build_index(model, labelled_corpus(), tmp_path / "db", batch_size=5, show_progress=False)
    monkeypatch.setattr(HEALEmbeddingFunction, "embed_as_array", original)
    rerun = build_index(model, labelled_corpus(), tmp_path / "db", batch_size=5, show_progress=False)
    a = clean.get(include=["embeddings", "documents", "metadatas"])
    b = rerun.get(include=["embeddings", "documents", "metadatas"])
    order_a, order_b = sorted(range(24), key=a["ids"].__getitem__), sorted(range(24), key=b["ids"].__getitem__)
    assert [a["ids"][i] for i in order_a] == [b["ids"][i] for i in order_b]
    assert [a["metadatas"][i] for i in order_a] == [b["metadatas"][i] for i in order_b]
    assert all((a["embeddings"][i] == b["embeddings"][j]).all() for i, j in zip(order_a, order_b, strict=True))


def test_ctrl_c_ends_a_command_with_a_message_and_status_130(tmp_path, monkeypatch, capsys):
    from heal_rag.chroma.embedding_function import HEALEmbeddingFunction
    from heal_rag.cli import main

    def interrupted(self, texts):
        raise KeyboardInterrupt

    monkeypatch.setattr(HEALEmbeddingFunction, "embed_as_array", interrupted)
    data = write_corpus_jsonl(tmp_path / "c.jsonl", *make_corpus())
    argv = ["index", "--model", str(build_tiny_heal_model()), "--data", str(data), "--db", str(tmp_path / "db")]
    assert main([*argv, "-q"]) == 130
    err = capsys.readouterr().err
    assert "heal-rag index: interrupted" in err and "Run it again to continue" in err and "Traceback" not in err
