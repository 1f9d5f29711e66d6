"""A real Chroma server (``chroma run``, from the chromadb package) shared through ``heal_rag.chroma.connect``.

The server is started by the fixture on a free localhost port and stopped afterwards; nothing is mocked. It checks
what several app instances sharing one index rely on: building and querying through the server, the embedding
function's configuration surviving the round trip (a fresh client needs no function), and the stale-model guard.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import build_tiny_heal_model, make_corpus, train_tiny_heal_model, write_corpus_jsonl

from heal_rag.chroma import StaleModelError, build_index, connect, open_collection
from heal_rag.data import Corpus
from heal_rag.labels import LabelPaths

CHROMA = Path(sys.executable).with_name("chroma")
pytestmark = pytest.mark.skipif(not CHROMA.is_file(), reason="the chroma command (chromadb) is not installed")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``chroma run`` on a free port; yields the port once the server answers."""
    port = _free_port()
    data = tmp_path_factory.mktemp("chroma-server")
    process = subprocess.Popen(
        [str(CHROMA), "run", "--path", str(data / "db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                connect("127.0.0.1", port)
                break
            except ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the Chroma server did not start") from None
                time.sleep(0.5)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture()
def corpus():
    texts, paths, titles = make_corpus()
    return Corpus([f"d{i}" for i in range(len(texts))], texts, titles, LabelPaths(paths))


def test_build_and_query_through_the_server_with_a_fresh_client(server, corpus, tmp_path):
    model = shutil.copytree(build_tiny_heal_model(), tmp_path / "model")
    build_index(str(model), corpus, None, "shared-papers", client=connect("127.0.0.1", server), show_progress=False)

    # Another app instance: a new client, no embedding function passed. Ours is rebuilt from the configuration the
    # server stored, so text queries work and carry the label path.
    collection = open_collection(None, "shared-papers", client=connect("127.0.0.1", server))
    assert collection.count() == len(corpus)
    hits = collection.query(query_texts=[corpus.texts[0]], n_results=1, include=["metadatas"])
    assert hits["ids"][0] == ["d0"]
    assert hits["metadatas"][0][0]["heal_path"] == " > ".join(corpus.labels.paths[0])
    # Chroma's own get_collection, no function passed: it embeds with ours, rebuilt from the stored configuration
    # (Chroma's default function would give 384-dimensional vectors, which this 16-dimensional collection refuses).
    raw = connect("127.0.0.1", server).get_collection("shared-papers")
    assert raw.query(query_texts=[corpus.texts[5]], n_results=1)["ids"][0] == ["d5"]

    # Re-running the build upserts by id: nothing is duplicated.
    build_index(str(model), corpus, None, "shared-papers", client=connect("127.0.0.1", server), show_progress=False)
    assert collection.count() == len(corpus)


def test_the_stale_model_guard_works_through_the_server(server, corpus, tmp_path):
    model = shutil.copytree(build_tiny_heal_model(), tmp_path / "model")
    build_index(str(model), corpus, None, "stale-check", client=connect("127.0.0.1", server), show_progress=False)
    train_tiny_heal_model(model, seed=7)  # retrained in place: same path, same width, other vectors
    with pytest.raises(StaleModelError):
        open_collection(None, "stale-check", client=connect("127.0.0.1", server))
    with pytest.raises(ValueError, match="has changed since this collection was built"):  # Chroma wraps it
        connect("127.0.0.1", server).get_collection("stale-check").query(query_texts=["laser"], n_results=1)
    with pytest.raises(StaleModelError):
        build_index(str(model), corpus, None, "stale-check", client=connect("127.0.0.1", server), show_progress=False)


def test_the_langchain_store_shares_the_server(server, corpus, tmp_path):
    pytest.importorskip("langchain_chroma")
    from heal_rag.langchain import HEALEmbeddings, chroma_vectorstore

    model = shutil.copytree(build_tiny_heal_model(), tmp_path / "model")
    build_index(str(model), corpus, None, "lc-papers", client=connect("127.0.0.1", server), show_progress=False)
    store = chroma_vectorstore(
        None, "lc-papers", HEALEmbeddings(model=str(model)), client=connect("127.0.0.1", server)
    )
    assert store.similarity_search(corpus.texts[3], k=1)[0].id == "d3"


def test_the_cli_indexes_into_the_server(server, tmp_path, capsys):
    from heal_rag.cli import main

    model = shutil.copytree(build_tiny_heal_model(), tmp_path / "model")
    texts, paths, titles = make_corpus()
    data = write_corpus_jsonl(tmp_path / "corpus.jsonl", texts, paths, titles)
    args = ["index", "--model", str(model), "--data", str(data), "--collection", "cli-papers"]
    assert main([*args, "--chroma-host", "127.0.0.1", "--chroma-port", str(server)]) == 0
    assert f"Chroma server at 127.0.0.1:{server}: {len(texts)} records" in capsys.readouterr().out
    assert open_collection(None, "cli-papers", client=connect("127.0.0.1", server)).count() == len(texts)
    for host in (f"127.0.0.1:{server}", f"http://127.0.0.1:{server}"):  # the port in the host wins over the default
        assert main([*args, "--chroma-host", host]) == 0
        assert f"Chroma server at 127.0.0.1:{server}: " in capsys.readouterr().out
    assert connect("127.0.0.1", str(server)).heartbeat()  # a port given as a string of digits


def test_no_server_is_named_with_the_command_that_starts_one(tmp_path):
    port = _free_port()
    with pytest.raises(ConnectionError, match=rf"No Chroma server answers at 127.0.0.1:{port} .*--port {port}`"):
        connect(f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match="port"):
        connect("127.0.0.1", 99999)
    with pytest.raises(ValueError, match="not both"):
        open_collection(tmp_path / "db", "papers", client=object())
    with pytest.raises(ValueError, match="client="):
        open_collection(None, "papers")
