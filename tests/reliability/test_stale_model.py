"""Kind 4: a collection refuses any model other than the one that built it, however it is opened."""

from __future__ import annotations

import shutil

import pytest
from conftest import build_tiny_heal_model, build_tiny_model, make_corpus, train_tiny_heal_model

from heal_rag.chroma import (
    HEALEmbeddingFunction,
    StaleModelError,
    build_index,
    check_collection,
    open_client,
    open_collection,
)
from heal_rag.data import Corpus
from heal_rag.labels import LabelPaths


@pytest.fixture()
def built(tmp_path):
    """A collection 'papers' built by a tuned model (a copy, so it can be retrained in place)."""
    model = tmp_path / "tuned"
    shutil.copytree(build_tiny_heal_model(), model)
    texts, paths, titles = make_corpus()
    corpus = Corpus([f"d{i}" for i in range(len(texts))], texts, titles, LabelPaths(paths))
    build_index(str(model), corpus, tmp_path / "db", collection_name="papers", show_progress=False)
    return model, tmp_path / "db"


def test_chromas_own_get_collection_with_the_base_models_function_is_refused(built):
    _, db = built
    base = HEALEmbeddingFunction(model_path=None)  # the case: same name, same width (384 here vs 16: ok)
    other = HEALEmbeddingFunction(model_path=str(build_tiny_model()))  # same name and width as the tuned model
    client = open_client(db)
    for function in (other, base):
        collection = client.get_collection("papers", embedding_function=function)
        with pytest.raises(StaleModelError, match="built by another model"):
            collection.query(query_texts=["laser"], n_results=1)
        with pytest.raises(StaleModelError):
            collection.add(ids=["new"], documents=["a new text"])
        assert collection.count() == 24, "nothing was added"
    with pytest.raises(StaleModelError):
        client.get_or_create_collection("papers", embedding_function=other).query(query_texts=["x"], n_results=1)


def test_the_right_function_passed_explicitly_still_works(built):
    model, db = built
    collection = open_client(db).get_collection("papers", embedding_function=HEALEmbeddingFunction(str(model)))
    assert len(collection.query(query_texts=["laser light"], n_results=3)["ids"][0]) == 3


def test_open_collection_and_chromas_get_collection_refuse_a_retrained_model(built):
    model, db = built
    train_tiny_heal_model(model, seed=99)
    with pytest.raises(StaleModelError, match="has changed since this collection was built"):
        open_collection(db, "papers")
    with pytest.raises(ValueError, match="has changed since this collection was built"):  # Chroma wraps it
        open_client(db).get_collection("papers").query(query_texts=["laser"], n_results=1)


def test_a_changed_model_is_reported_as_changed_before_its_backend_is_loaded(built):
    """A model retrained in place has lost its exports: the stale model is the problem to name, not the export."""
    model, _ = built
    with pytest.raises(StaleModelError, match="has changed since this collection was built"):
        HEALEmbeddingFunction(str(model), fingerprint="sha256:" + "0" * 64, backend="onnx")  # no onnx export there


def test_open_collection_with_an_explicit_model(built):
    model, db = built
    assert open_collection(db, "papers", model=str(model)).count() == 24
    with pytest.raises(StaleModelError):
        open_collection(db, "papers", model=str(build_tiny_model()))


def test_open_collection_on_a_missing_path_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="No Chroma database"):
        open_collection(tmp_path / "nope", "papers")
    assert not (tmp_path / "nope").exists()


def test_open_collection_names_the_collections_there(built):
    _, db = built
    with pytest.raises(ValueError, match=r"No collection 'paper'.*\['papers'\]"):
        open_collection(db, "paper")


def test_langchain_chroma_store_refuses_another_model(built):
    pytest.importorskip("langchain_chroma")
    from heal_rag.langchain import HEALEmbeddings, chroma_vectorstore

    model, db = built
    store = chroma_vectorstore(db, "papers", HEALEmbeddings(model=str(model)))
    assert len(store.similarity_search("laser", k=2)) == 2
    with pytest.raises(StaleModelError):
        chroma_vectorstore(db, "papers", HEALEmbeddings(model=str(build_tiny_model())))
    with pytest.raises(StaleModelError):
        check_collection(store._collection, HEALEmbeddings(model=str(build_tiny_model())))


def test_llamaindex_chroma_store_refuses_another_model(built):
    pytest.importorskip("llama_index.vector_stores.chroma")
    from heal_rag.llamaindex import HEALEmbedding, chroma_vector_store

    model, db = built
    assert chroma_vector_store(db, "papers", HEALEmbedding(model=str(model)))._collection.count() == 24
    with pytest.raises(StaleModelError):
        chroma_vector_store(db, "papers", HEALEmbedding(model=str(build_tiny_model())))


def test_a_collection_heal_rag_did_not_build_is_neither_extended_nor_dropped(tmp_path):
    client = open_client(tmp_path / "db")
    client.create_collection("theirs", embedding_function=None).add(ids=["x"], embeddings=[[0.0] * 16])
    texts, paths, titles = make_corpus()
    corpus = Corpus([f"d{i}" for i in range(len(texts))], texts, titles, LabelPaths(paths))
    for rebuild in (False, True):
        with pytest.raises(StaleModelError, match="not built by heal_rag"):
            build_index(
                str(build_tiny_heal_model()),
                corpus,
                tmp_path / "db",
                collection_name="theirs",
                rebuild=rebuild,
                show_progress=False,
            )
    assert client.get_collection("theirs", embedding_function=None).count() == 1
