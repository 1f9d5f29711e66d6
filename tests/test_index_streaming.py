"""Index builds that stream a corpus in batches and, re-run after an interruption, embed only what is missing."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from conftest import build_tiny_heal_model, command_env, make_corpus, write_corpus_jsonl

from heal_rag.chroma import build_index, open_collection
from heal_rag.data import CorpusFormatError, iter_corpus, read_corpus


@pytest.fixture()
def corpus_file(tmp_path):
    texts, paths, titles = make_corpus()
    return write_corpus_jsonl(tmp_path / "corpus.jsonl", texts, paths, titles)


def _counts(caplog) -> tuple[int, int]:
    """(embedded, already stored) from build_index's log line."""
    line = [r.getMessage() for r in caplog.records if "already stored" in r.getMessage()][-1]
    numbers = [int(word) for word in line.replace(",", " ").split() if word.isdigit()]
    return numbers[0], numbers[1]


def test_streamed_batches_build_the_same_collection_as_the_whole_corpus(corpus_file, tmp_path):
    model = build_tiny_heal_model()
    whole = build_index(model, read_corpus(corpus_file), tmp_path / "db", "whole", show_progress=False)
    streamed = build_index(model, iter_corpus(corpus_file, batch_size=5), tmp_path / "db", "streamed",
                           batch_size=3, show_progress=False)  # fmt: skip
    a = whole.get(include=["embeddings", "metadatas", "documents"])
    b = streamed.get(include=["embeddings", "metadatas", "documents"])
    order_a, order_b = (
        sorted(range(len(a["ids"])), key=a["ids"].__getitem__),
        sorted(range(len(b["ids"])), key=b["ids"].__getitem__),
    )
    assert [a["ids"][i] for i in order_a] == [b["ids"][i] for i in order_b]
    assert [a["metadatas"][i] for i in order_a] == [b["metadatas"][i] for i in order_b]
    assert (a["embeddings"][order_a] == b["embeddings"][order_b]).all()


def test_iter_corpus_refuses_duplicate_ids_across_batches_and_mixed_labels(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "text": f"text {i}"}) for i in ["a", "b", "c", "a"]) + "\n")
    batches = iter_corpus(path, batch_size=2)
    assert next(batches).ids == ["a", "b"]
    with pytest.raises(CorpusFormatError, match=r"dup.jsonl:4: duplicate id 'a'"):
        next(batches)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        json.dumps({"id": "a", "text": "x", "labels": ["A"]}) + "\n" + json.dumps({"id": "b", "text": "y"}) + "\n"
    )
    with pytest.raises(CorpusFormatError, match="some records have 'labels' and others do not"):
        list(iter_corpus(mixed, batch_size=1))


def test_a_rerun_embeds_only_what_is_missing_or_changed(corpus_file, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="heal_rag.chroma.index")
    model = shutil.copytree(build_tiny_heal_model(), tmp_path / "model")
    corpus = read_corpus(corpus_file)
    half = len(corpus) // 2
    # An interrupted build: the first half stored.
    build_index(model, corpus.subset(range(half)), tmp_path / "db", "papers", show_progress=False)
    assert _counts(caplog) == (half, 0)
    build_index(model, corpus, tmp_path / "db", "papers", show_progress=False)
    assert _counts(caplog) == (len(corpus) - half, half)
    # A changed document (text, or its label path) is embedded again; the rest is not.
    records = [json.loads(line) for line in corpus_file.read_text().splitlines()]
    records[0]["text"] += " revised"
    records[1]["labels"] = records[-1]["labels"]
    corpus_file.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    collection = build_index(model, iter_corpus(corpus_file, batch_size=4), tmp_path / "db", "papers",
                             show_progress=False)  # fmt: skip
    assert _counts(caplog) == (2, len(corpus) - 2)
    stored = collection.get(ids=["d0", "d1"], include=["documents", "metadatas"])
    by_id = dict(zip(stored["ids"], zip(stored["documents"], stored["metadatas"], strict=True), strict=True))
    assert by_id["d0"][0].endswith(" revised")
    assert by_id["d1"][1]["heal_path"] == " > ".join(records[-1]["labels"])
    assert open_collection(tmp_path / "db", "papers").count() == len(corpus)


def test_the_cli_streams_a_jsonl_file_and_reports_what_a_rerun_saved(corpus_file, tmp_path, capsys):
    from heal_rag.cli import main

    model = shutil.copytree(build_tiny_heal_model(), tmp_path / "model")
    args = ["index", "--model", str(model), "--data", str(corpus_file), "--db", str(tmp_path / "db")]
    assert main(args) == 0
    assert main(args) == 0
    assert "0 documents embedded, 24 already stored" in capsys.readouterr().out


def test_a_bad_line_late_in_the_file_fails_before_anything_is_indexed(corpus_file, tmp_path, capsys):
    from heal_rag.cli import main

    with corpus_file.open("a") as handle:
        handle.write('{"id": "broken", "text": ""}\n')
    model = shutil.copytree(build_tiny_heal_model(), tmp_path / "model")
    assert main(["index", "--model", str(model), "--data", str(corpus_file), "--db", str(tmp_path / "db")]) != 0
    assert "corpus.jsonl:25: 'text' must be a non-empty string" in capsys.readouterr().err
    assert not (tmp_path / "db").exists()


def test_two_encoder_processes_store_the_same_vectors_and_the_pool_is_stopped(corpus_file, tmp_path):
    from heal_rag.encoder import HEALEncoder

    encoder = HEALEncoder.load(build_tiny_heal_model())
    one = build_index(encoder, read_corpus(corpus_file), tmp_path / "db", "one", show_progress=False)
    two = build_index(encoder, iter_corpus(corpus_file, batch_size=7), tmp_path / "db", "two", batch_size=5,
                      show_progress=False, processes=2)  # fmt: skip
    assert encoder._pool is None  # the worker processes were stopped with the build
    a, b = (c.get(include=["embeddings"]) for c in (one, two))
    vectors_a = dict(zip(a["ids"], a["embeddings"], strict=True))
    vectors_b = dict(zip(b["ids"], b["embeddings"], strict=True))
    assert vectors_a.keys() == vectors_b.keys()
    for doc_id, vector in vectors_a.items():
        assert abs(vector - vectors_b[doc_id]).max() < 1e-6


def test_each_worker_gets_one_share_of_a_call_not_tasks_of_a_few_texts(monkeypatch):
    from heal_rag import encoder as encoder_module
    from heal_rag.encoder import HEALEncoder

    monkeypatch.setattr(encoder_module, "POOL_CHUNK_SIZE", 40)
    encoder = HEALEncoder.load(build_tiny_heal_model())
    texts = [f"document {i} about topic {i % 7}" for i in range(100)]
    alone = encoder.embed_documents(texts)
    with encoder.multi_process(2):
        queue, sent = encoder._pool["input"], []
        put = queue.put
        monkeypatch.setattr(queue, "put", lambda task, *a, **k: (sent.append(len(task[1])), put(task, *a, **k)))
        assert abs(encoder.embed_documents(texts[:30]) - alone[:30]).max() < 1e-6
        assert sent == [15, 15]  # sentence-transformers' default would send ten tasks of 2 texts per worker
        sent.clear()
        assert abs(encoder.embed_documents(texts) - alone).max() < 1e-6
        assert sent == [40, 40, 20]  # a large call is still cut into tasks of at most POOL_CHUNK_SIZE


def test_processes_are_refused_with_a_runtime_backend_or_below_one(corpus_file, tmp_path):
    model = build_tiny_heal_model()
    with pytest.raises(ValueError, match="processes"):
        build_index(model, read_corpus(corpus_file), tmp_path / "db", processes=0, show_progress=False)
    with pytest.raises(ValueError, match="applies to the torch backend"):
        build_index(model, read_corpus(corpus_file), tmp_path / "db", processes=2, backend="onnx", show_progress=False)
    assert not (tmp_path / "db").exists()  # refused before anything was created


def test_content_hashes_are_what_the_build_stores(corpus_file, tmp_path):
    from heal_rag.chroma.index import CONTENT_KEY, content_hashes

    corpus = read_corpus(corpus_file)
    collection = build_index(build_tiny_heal_model(), corpus, tmp_path / "db", "papers", show_progress=False)
    stored = collection.get(include=["metadatas"])
    expected = dict(zip(corpus.ids, content_hashes(corpus), strict=True))
    assert {i: m[CONTENT_KEY] for i, m in zip(stored["ids"], stored["metadatas"], strict=True)} == expected
    assert len(set(expected.values())) == len(corpus)  # one per record: the text, title and path all count


def _build_stopped_mid_way(tmp_path, stop: int, to: str = "build"):
    """``heal-rag index --processes 2`` on 100,000 records, sent ``stop`` once it has stored its first batches.

    ``to``: ``"build"`` (the command's process), ``"group"`` (its process group, as a terminal sends Ctrl-C) or
    ``"worker"`` (one encoder process).

    Returns the build (ended), its stderr, and the processes it had spawned (two encoder workers and their watchdog).
    """
    import contextlib
    import os
    import signal
    import subprocess
    import sys

    pytest.importorskip("psutil")
    corpus = tmp_path / "big.jsonl"
    corpus.write_text("".join(f'{{"id": "d{i}", "text": "laser light lens study {i}"}}\n' for i in range(100_000)))
    env = command_env()
    command = [sys.executable, "-m", "heal_rag.cli", "index", "--model", str(build_tiny_heal_model()), "--data",
               str(corpus), "--db", str(tmp_path / "db"), "--processes", "2", "-q"]  # fmt: skip
    build = subprocess.Popen(
        command,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal gives a command
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not ignored, even under a background job
    )
    try:
        return _stop_mid_way(build, stop, to, tmp_path / "db")
    except BaseException:  # a failed check or a timeout: leave nothing of the build running in its own session
        with contextlib.suppress(ProcessLookupError):
            os.killpg(build.pid, signal.SIGKILL)
        raise


def _stop_mid_way(build, stop: int, to: str, db):
    import os
    import time

    import psutil

    parent, spawned = psutil.Process(build.pid), []
    deadline = time.monotonic() + 120
    while len(spawned) < 3 and build.poll() is None and time.monotonic() < deadline:
        spawned = [p for p in parent.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]
        time.sleep(0.2)
    assert len(spawned) == 3, "the encoder processes and their watchdog did not start"

    def stored_bytes() -> int:
        return sum(f.stat().st_size for f in db.rglob("*") if f.is_file())

    empty = stored_bytes()
    while build.poll() is None and stored_bytes() < empty + 200_000 and time.monotonic() < deadline:
        time.sleep(0.2)  # until the first batches are stored: the signal comes mid-build, the pool at work
    assert build.poll() is None and stored_bytes() >= empty + 200_000, "the build ended or stored nothing first"
    if to == "group":
        os.killpg(build.pid, stop)
    elif to == "worker":
        min(spawned, key=lambda p: (p.create_time(), p.pid)).send_signal(stop)  # a worker: the watchdog starts last
    else:
        build.send_signal(stop)
    _, err = build.communicate(timeout=180)
    return build, err, spawned


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="POSIX signals")
def test_sigterm_stops_an_index_build_cleanly_and_its_encoder_processes_with_it(tmp_path):
    import signal

    import psutil

    build, err, spawned = _build_stopped_mid_way(tmp_path, signal.SIGTERM)
    assert build.returncode == 128 + signal.SIGTERM
    assert "heal-rag index: terminated; no output was left half-written" in err
    _, alive = psutil.wait_procs(spawned, timeout=10)
    assert not alive, f"processes left running: {[p.cmdline() for p in alive]}"


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="POSIX signals")
def test_after_kill_9_the_watchdog_stops_the_encoder_processes(tmp_path):
    import signal

    import psutil

    build, _, spawned = _build_stopped_mid_way(tmp_path, signal.SIGKILL)  # no cleanup can run in the build itself
    assert build.returncode == -signal.SIGKILL
    _, alive = psutil.wait_procs(spawned, timeout=15)
    assert not alive, f"processes left running: {[p.cmdline() for p in alive]}"


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="POSIX signals")
def test_ctrl_c_in_a_terminal_stops_the_build_with_one_line_and_no_worker_tracebacks(tmp_path):
    import signal

    import psutil

    build, err, spawned = _build_stopped_mid_way(tmp_path, signal.SIGINT, to="group")  # the whole process group
    assert build.returncode == 130
    assert "heal-rag index: interrupted; no output was left half-written" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    assert "resource_tracker" not in err, err[-2000:]  # no "leaked semaphore objects" from the stopped workers
    _, alive = psutil.wait_procs(spawned, timeout=10)
    assert not alive, f"processes left running: {[p.cmdline() for p in alive]}"


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="POSIX signals")
def test_an_encoder_process_killed_mid_build_stops_the_build_with_what_to_do(tmp_path):
    import signal

    import psutil

    build, err, spawned = _build_stopped_mid_way(tmp_path, signal.SIGKILL, to="worker")  # as the OOM killer does
    assert build.returncode == 2, err[-2000:]
    assert "heal-rag index: error: 1 of 2 encoder processes died (exit code -9): killed, or out of memory" in err
    _, alive = psutil.wait_procs(spawned, timeout=10)
    assert not alive, f"processes left running: {[p.cmdline() for p in alive]}"


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="POSIX signals")
def test_a_worker_that_died_after_its_last_task_is_a_warning_not_an_error():
    import os
    import signal

    import numpy as np

    from heal_rag import HEALWarning
    from heal_rag.encoder import HEALEncoder

    encoder = HEALEncoder.load(build_tiny_heal_model())
    texts = [f"laser light {i}" for i in range(64)]
    with pytest.warns(HEALWarning, match=r"^1 of 2 encoder processes died \(exit code -9\); every text was embedded"):
        with encoder.multi_process(2):
            vectors = encoder.embed_documents(texts)
            worker = encoder._pool["processes"][1]
            os.kill(worker.pid, signal.SIGKILL)
            worker.join(timeout=30)
    np.testing.assert_allclose(vectors, encoder.embed_documents(texts), atol=1e-5)


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="POSIX signals")
def test_an_encoder_process_that_died_is_reported_with_what_to_do():
    import os
    import signal

    from heal_rag.encoder import EncoderProcessError, HEALEncoder

    encoder = HEALEncoder.load(build_tiny_heal_model())
    with pytest.raises(EncoderProcessError, match=r"1 of 2 encoder processes died \(exit code -9\).*Run the same"):
        with encoder.multi_process(2):
            texts = [f"laser light {i}" for i in range(64)]
            encoder.embed_documents(texts)  # both workers started and answering at once
            # As the out-of-memory killer does, here between two calls. The other worker might still answer in time
            # (sentence-transformers checks for dead workers after a second without an answer) or wait for ever on a
            # queue lock the dead one held; the call is refused before either.
            worker = encoder._pool["processes"][1]
            os.kill(worker.pid, signal.SIGKILL)
            worker.join(timeout=30)
            encoder.embed_documents(texts)
    assert encoder._pool is None


@pytest.mark.skipif(not hasattr(__import__("signal"), "pthread_sigmask"), reason="POSIX signal masks")
def test_a_ctrl_c_while_the_encoder_processes_start_is_raised_once_they_have_started():
    import os
    import signal
    import threading
    import time

    from heal_rag._pool import _sigint_held

    handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever ran pytest
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)  # a thread that does not block SIGINT, as Chroma's and torch's
    other.start()
    started = False
    try:
        with pytest.raises(KeyboardInterrupt):
            with _sigint_held():
                os.kill(os.getpid(), signal.SIGINT)  # the main thread blocks it: the other thread takes it
                time.sleep(0.2)  # not raised here, in the middle of starting processes
                started = True
        assert started
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        stop.set()
        other.join()
        signal.signal(signal.SIGINT, handler)
