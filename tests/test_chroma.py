"""Chroma: the registered embedding function, the index builder, persistence and the stale-model refusal."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("chromadb")

from chromadb.utils.embedding_functions import known_embedding_functions  # noqa: E402
from conftest import (  # noqa: E402
    build_tiny_heal_model,
    build_tiny_model,
    make_corpus,
    train_tiny_heal_model,
    write_corpus_jsonl,
)

from heal_rag.chroma import HEALEmbeddingFunction, StaleModelError, build_index, open_collection  # noqa: E402
from heal_rag.cli import main  # noqa: E402
from heal_rag.data import Corpus  # noqa: E402
from heal_rag.labels import LabelPaths  # noqa: E402


def small_corpus(labelled: bool = True) -> Corpus:
    texts, paths, titles = make_corpus()
    return Corpus(
        ids=[f"d{i}" for i in range(len(texts))],
        texts=texts,
        titles=titles,
        labels=LabelPaths(paths) if labelled else None,
    )


@pytest.fixture()
def heal_model_copy(tmp_path):
    path = tmp_path / "model"
    shutil.copytree(build_tiny_heal_model(), path)
    return path


def test_embedding_function_is_registered_and_returns_float32_arrays(heal_model_copy, monkeypatch):
    assert known_embedding_functions["heal_rag"] is HEALEmbeddingFunction
    function = HEALEmbeddingFunction(str(heal_model_copy))
    vectors = function(["laser light", "plasma ion"])
    assert len(vectors) == 2 and vectors[0].dtype == np.float32 and vectors[0].shape == (16,)
    assert function.default_space() == "cosine"
    config = function.get_config()
    assert json.loads(json.dumps(config)) == config  # primitives only
    assert config["fingerprint"].startswith("sha256:")
    calls = []
    monkeypatch.setattr(function.encoder, "embed_queries", lambda texts: calls.append(texts) or np.zeros((1, 16)))
    function.embed_query(["what is a laser"])
    assert calls == [["what is a laser"]], "queries must go through the query path"


def test_build_index_is_idempotent_and_stores_paths(heal_model_copy, tmp_path):
    db = tmp_path / "db"
    collection = build_index(str(heal_model_copy), small_corpus(), db, collection_name="papers", show_progress=False)
    assert collection.count() == 24
    assert collection.configuration_json["hnsw"]["space"] == "cosine"
    record = collection.get(ids=["d5"], include=["metadatas"])["metadatas"][0]
    assert record["heal_path"] == "Physics > Plasma" and record["heal_l0"] == "Physics" and record["title"]
    again = build_index(str(heal_model_copy), small_corpus(), db, collection_name="papers", show_progress=False)
    assert again.count() == 24
    hits = again.query(query_texts=[small_corpus().texts[5]], n_results=3)
    assert "d5" in hits["ids"][0][:2]  # near-identical siblings may tie with the tiny model


def test_unlabelled_corpus_gets_predicted_paths(heal_model_copy, tmp_path):
    collection = build_index(
        str(heal_model_copy),
        small_corpus(labelled=False),
        tmp_path / "db",
        collection_name="plain",
        show_progress=False,
    )
    metadatas = collection.get(include=["metadatas"])["metadatas"]
    assert all(" > " in m["heal_path"] for m in metadatas)


def test_reopen_in_a_fresh_process_without_passing_the_function(heal_model_copy, tmp_path):
    db = tmp_path / "db"
    build_index(str(heal_model_copy), small_corpus(), db, collection_name="papers", show_progress=False)
    script = textwrap.dedent(
        f"""
        import json
        import heal_rag.chroma  # registers the embedding function
        from heal_rag.chroma import open_collection
        collection = open_collection({str(db)!r}, "papers")
        result = collection.query(query_texts=["plasma ion fusion tokamak"], n_results=4, include=["metadatas"])
        print(json.dumps([m["heal_l1"] for m in result["metadatas"][0]]))
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    leaves = json.loads(completed.stdout.strip().splitlines()[-1])
    assert leaves[0] == "Plasma"


def test_a_different_model_is_refused(heal_model_copy, tmp_path):
    db = tmp_path / "db"
    build_index(str(heal_model_copy), small_corpus(), db, collection_name="papers", show_progress=False)
    with pytest.raises(StaleModelError, match="built by a different model"):
        build_index(str(build_tiny_model()), small_corpus(), db, collection_name="papers", show_progress=False)
    rebuilt = build_index(
        str(build_tiny_model()), small_corpus(), db, collection_name="papers", rebuild=True, show_progress=False
    )
    assert rebuilt.count() == 24


def test_a_model_retrained_in_place_is_refused_on_reopen(heal_model_copy, tmp_path):
    db = tmp_path / "db"
    build_index(str(heal_model_copy), small_corpus(), db, collection_name="papers", show_progress=False)
    # Same path, same width, new weights: the silent failure users complain about.
    train_tiny_heal_model(heal_model_copy, seed=123)
    script = textwrap.dedent(
        f"""
        import heal_rag.chroma
        from heal_rag.chroma import open_collection
        open_collection({str(db)!r}, "papers").query(query_texts=["laser"], n_results=1)
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert completed.returncode != 0
    assert "has changed since this collection was built" in completed.stderr


def test_index_cli(heal_model_copy, tmp_path, capsys):
    texts, paths, titles = make_corpus()
    data = write_corpus_jsonl(tmp_path / "c.jsonl", texts, paths, titles)
    args = [
        "index",
        "--model",
        str(heal_model_copy),
        "--data",
        str(data),
        "--db",
        str(tmp_path / "db"),
        "--collection",
        "cli-test",
        "--batch-size",
        "5",
    ]
    assert main(args) == 0
    assert main(args) == 0  # idempotent
    assert "24 records" in capsys.readouterr().out
    assert open_collection(tmp_path / "db", "cli-test").count() == 24
    other = [
        "index",
        "--model",
        str(build_tiny_model()),
        "--data",
        str(data),
        "--db",
        str(tmp_path / "db"),
        "--collection",
        "cli-test",
    ]
    assert main(other) == 2
    assert "different model" in capsys.readouterr().err


def test_empty_input_follows_chromas_contract(heal_model_copy, tmp_path):
    """Chroma's protocol wrapper rejects empty embedding lists (as for its built-in functions); building an index
    of an empty corpus is a no-op."""
    function = HEALEmbeddingFunction(str(heal_model_copy))
    with pytest.raises(ValueError, match="non-empty"):
        function([])
    empty = Corpus(ids=[], texts=[], titles=[], labels=None)
    assert (
        build_index(str(heal_model_copy), empty, tmp_path / "db", collection_name="empty", show_progress=False).count()
        == 0
    )
