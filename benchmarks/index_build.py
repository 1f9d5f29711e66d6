"""Streaming index builds: throughput, peak memory, and what a re-run after a kill embeds again.

    python benchmarks/index_build.py [--documents 20000] [--backend torch] [--processes 1]
        [--skip-resume | --resume-only]

A JSONL corpus of ``--documents`` records is written under ``runs/bench-index/`` from the arXiv abstracts in
``../shared/data`` (beyond 21,450 the abstracts repeat under new ids), then ``heal-rag index`` runs as a user runs it,
in a child process:

1. a full build into a new database: wall time, documents per second, peak resident memory (the child's maximum
   RSS), and the records stored;
2. a build killed (SIGKILL) at half the full build's wall time, then the same command again: the records stored at
   the kill, the documents the re-run embedded, and the share embedded twice, ``(re-embedded − missing) / N``
   (target ≤ 1 %), whether the collection ends identical to the full build (ids and content hashes), and whether it
   holds every record of the corpus once with its current content hash (computed from the file as the build does);
3. the same command once more over the complete collection: what a re-run costs when nothing is left to embed (it
   reads every record's stored hash back and embeds nothing).

``--resume-only`` runs steps 2 and 3 alone, killed at half the full build time saved for the same documents, backend
and processes in the results file (a 200,000-document full build takes over an hour here); the resumed collection
is then checked against the corpus only.

The model is the arXiv HEAL model of ``benchmarks/rerank_quality.py`` (trained there when absent). Writes
``benchmarks/results/index_build.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from shared import ARXIV_FULL  # noqa: E402

from heal_rag.artifacts import write_json_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "bench-index"
RESULTS = Path(__file__).parent / "results" / "index_build.json"
LOG_LINE = re.compile(r"(\d+) documents embedded, (\d+) already stored")


def write_corpus(n_documents: int) -> Path:
    """``n_documents`` JSONL records from the arXiv abstracts (repeated under new ids past the end)."""
    records = [json.loads(line) for line in ARXIV_FULL.open(encoding="utf-8")]
    path = WORK / f"corpus-{n_documents}.jsonl"
    if path.is_file():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    with staging.open("w", encoding="utf-8") as handle:
        for i in range(n_documents):
            record = records[i % len(records)]
            handle.write(
                json.dumps(
                    {"id": f"a{i}", "text": record["text"], "labels": record["labels"], "title": record["title"]}
                )
                + "\n"
            )
    staging.replace(path)
    return path


def index_command(model: Path, corpus: Path, db: Path, backend: str, processes: int) -> list[str]:
    return [sys.executable, "-m", "heal_rag.cli", "index", "--model", str(model), "--data", str(corpus), "--db",
            str(db), "--backend", backend, "--processes", str(processes)]  # fmt: skip


def run_child(command: list[str], kill_after_s: float | None = None) -> tuple[float, str, bool]:
    """Run ``command``, SIGKILLed after ``kill_after_s``; returns wall seconds, stdout and whether it was killed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True
    )
    try:
        stdout, _ = child.communicate(timeout=kill_after_s)
        killed = False
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the CLI and its encoder workers, as a machine failure would
        stdout, _ = child.communicate()
        killed = True
    if not killed and child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}):\n{stdout}")
    return time.perf_counter() - started, stdout, killed


def counted_run(command: list[str]) -> tuple[float, int, int]:
    """Run a build to the end; its wall seconds and the documents it embedded and found already stored."""
    wall, stdout, _ = run_child(command)
    match = LOG_LINE.search(stdout)
    if match is None:
        raise RuntimeError(f"the build did not report what it embedded:\n{stdout}")
    return wall, int(match.group(1)), int(match.group(2))


def collection_state(db: Path) -> dict[str, str]:
    """Id → content hash of every record in the heal_rag collection at ``db`` (empty when there is none)."""
    import chromadb

    from heal_rag.chroma.index import CONTENT_KEY

    client = chromadb.PersistentClient(path=str(db))
    names = [c.name for c in client.list_collections()]
    if "heal_rag" not in names:
        return {}
    collection = client.get_collection("heal_rag")
    state: dict[str, str] = {}
    offset = 0
    while True:
        page = collection.get(include=["metadatas"], limit=5000, offset=offset)
        if not page["ids"]:
            return state
        state.update({i: str(m.get(CONTENT_KEY)) for i, m in zip(page["ids"], page["metadatas"], strict=True)})
        offset += len(page["ids"])


def corpus_state(corpus: Path) -> dict[str, str]:
    """Id → content hash of every record of ``corpus`` as ``heal-rag index`` computes it: a complete build's state."""
    from heal_rag.chroma.index import content_hashes
    from heal_rag.data import iter_corpus

    state: dict[str, str] = {}
    for batch in iter_corpus(corpus):
        state.update(zip(batch.ids, content_hashes(batch), strict=True))
    return state


def saved_results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def saved(key: str) -> dict[str, Any]:
    """The result saved under ``key`` (the full build ``--resume-only`` is timed from)."""
    results = saved_results()
    if key not in results:
        raise SystemExit(f"--resume-only needs a full build saved under {key!r} in {RESULTS}; run without it first.")
    return results[key]


def save(key: str, result: dict[str, Any]) -> None:
    results = saved_results()
    results[key] = result
    write_json_atomic(RESULTS, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=20_000)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--processes", type=int, default=1, help="encoder processes (torch backend)")
    runs = parser.add_mutually_exclusive_group()
    runs.add_argument("--skip-resume", action="store_true", help="the full build only (no kill and re-run)")
    runs.add_argument("--resume-only", action="store_true", help="the kill and re-run only, timed from a saved build")
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "rerank" / "arxiv" / "model")
    args = parser.parse_args()
    if not ARXIV_FULL.is_file():
        print(f"skipped: {ARXIV_FULL} is absent")
        return
    if not (args.model / "heal_rag.json").is_file():
        from quality import load_split
        from rerank_quality import heal_model

        args.model = heal_model("arxiv", load_split("arxiv"), 100)
    corpus = write_corpus(args.documents)
    n = args.documents

    key = f"{n}-{args.backend}-{args.processes}p"
    command = partial(index_command, args.model, corpus, backend=args.backend, processes=args.processes)
    if args.resume_only:
        result = saved(key)
        result.pop("identical_to_full_build", None)  # from an earlier resume; this one is checked against the corpus
        wall, full = result["full_build_s"], None
    else:
        wall, full, result = full_build(command, n, args)
    if args.skip_resume:
        save(key, result)
        return
    result |= resumed_build(command, corpus, n, wall, full)
    save(key, result)
    print(
        "| documents | backend | build s | killed at s | stored at kill | re-run s | re-run embedded | twice "
        "| complete | re-run when complete s |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|---:|")
    print(
        f"| {n:,} | {args.backend} | {wall:.0f} | {result['killed_at_s']:.0f} | {result['stored_at_kill']:,} | "
        f"{result['rerun_s']:.0f} | {result['rerun_embedded']:,} | {result['embedded_twice_share']:.2%} | "
        f"{result['complete_and_current']} | {result['complete_rerun_s']:.0f} |"
    )


def full_build(command: Any, n: int, args: argparse.Namespace) -> tuple[float, dict[str, str], dict[str, Any]]:
    """A build into a new database: its wall seconds, its collection state, and the result fields."""
    full_db = WORK / f"db-full-{n}"
    shutil.rmtree(full_db, ignore_errors=True)
    wall, _, _ = run_child(command(full_db))
    peak_rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest single process
    full = collection_state(full_db)
    print(f"full build: {n} documents in {wall:.0f} s ({n / wall:.1f}/s), peak RSS {peak_rss_mib:.0f} MiB", flush=True)
    result: dict[str, Any] = {
        "documents": n,
        "backend": args.backend,
        "processes": args.processes,
        "model": str(args.model.relative_to(ROOT)) if args.model.is_relative_to(ROOT) else str(args.model),
        "full_build_s": round(wall, 1),
        "documents_per_s": round(n / wall, 1),
        "peak_rss_mib": round(peak_rss_mib),
        "records": len(full),
        "cpus": os.cpu_count(),
    }
    return wall, full, result


def resumed_build(command: Any, corpus: Path, n: int, wall: float, full: dict[str, str] | None) -> dict[str, Any]:
    """A build SIGKILLed at ``wall / 2`` and run again: what the re-run embedded, and how the collection ends."""
    resumed_db = WORK / f"db-resumed-{n}"
    shutil.rmtree(resumed_db, ignore_errors=True)
    _, _, killed = run_child(command(resumed_db), kill_after_s=wall / 2)
    stored_at_kill = len(collection_state(resumed_db))
    print(f"killed at {wall / 2:.0f} s: {stored_at_kill} records stored", flush=True)
    rerun_wall, embedded, already = counted_run(command(resumed_db))
    resumed = collection_state(resumed_db)
    complete_wall, complete_embedded, _ = counted_run(command(resumed_db))
    print(f"re-run over the complete collection: {complete_wall:.0f} s, {complete_embedded} embedded", flush=True)
    result = {
        "killed_at_s": round(wall / 2, 1),
        "killed": killed,
        "stored_at_kill": stored_at_kill,
        "rerun_s": round(rerun_wall, 1),
        "rerun_embedded": embedded,
        "rerun_already_stored": already,
        "embedded_twice_share": round((embedded - (n - stored_at_kill)) / n, 4),
        "complete_and_current": resumed == corpus_state(corpus),
        "complete_rerun_s": round(complete_wall, 1),
        "complete_rerun_embedded": complete_embedded,
    }
    if full is not None:
        result["identical_to_full_build"] = resumed == full
    return result


if __name__ == "__main__":
    main()
