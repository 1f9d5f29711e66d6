"""Encoding speed and retrieval quality of the exported backends (ONNX Runtime, OpenVINO; bf16, int8) against PyTorch.

    python benchmarks/backends.py                 # speed, quality on the three datasets, 21,450-abstract index build
    python benchmarks/backends.py --skip-index    # without the index build (the longest part)

Models: the per-dataset HEAL models of ``benchmarks/rerank_quality.py`` (``runs/rerank/<dataset>/model``, trained
there when absent: 100 steps, 128 tokens), each exported here to every backend (``heal_rag.backends.export_model``).
Everything encodes at 128 tokens, the training length. ``openvino-bf16`` is measured only on a CPU with native bf16
(``heal_rag.backends.cpu_has_native_bf16``); the CPU is recorded in the JSON.

* **Speed** (arXiv model): documents at batch 32 (256 held-out abstracts per timing) and queries at batch 1 (100
  titles, one call each), in rounds that interleave the backends; the median round is reported, with the spread.
* **Quality**: each dataset's 600 held-out queries against its 600 held-out documents; nDCG@10 and MRR@10 of every
  backend minus PyTorch fp32, with paired 95% bootstrap intervals. The target is |difference| ≤ 0.005.
* **Index build**: ``heal_rag.chroma.build_index`` of all 21,450 arXiv abstracts, PyTorch then the recommended
  backend (among those whose quality differences all lie within the target, the one with the highest geometric
  mean of its document and query speed-ups), one build each.

Writes ``benchmarks/results/backends.json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from quality import load_split  # noqa: E402
from rerank_quality import heal_model  # noqa: E402
from shared import ARXIV_FULL  # noqa: E402

from heal_rag.artifacts import read_metadata, write_json_atomic  # noqa: E402
from heal_rag.backends import BACKENDS, cpu_has_native_bf16, export_model, export_options  # noqa: E402
from heal_rag.encoder import HEALEncoder  # noqa: E402
from heal_rag.evaluation.retrieval import format_paired, paired_difference, per_query_scores, top_k_indices  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "backends.json"
DATASETS = ("arxiv", "20newsgroups", "medquad")
TARGET = 0.005
MAX_SEQ_LENGTH = 128


#: The backends this machine can run as named (bf16 only where the CPU has it natively).
MEASURED = tuple(b for b in BACKENDS if b != "openvino-bf16" or cpu_has_native_bf16())


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), since speed-ups depend on its instruction set."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def export_all(model: Path) -> dict[str, Any]:
    """Export ``model`` to every backend not yet exported; the agreement records from ``heal_rag.json``."""
    done = (read_metadata(model).get("exports") or {}).keys()
    for backend in MEASURED[1:]:
        if backend not in done:
            export_model(model, **export_options(backend))
    return read_metadata(model)["exports"]


def load(model: Path, backend: str, batch_size: int = 32) -> HEALEncoder:
    encoder = HEALEncoder.load(model, backend=backend, batch_size=batch_size)
    encoder.model.max_seq_length = MAX_SEQ_LENGTH
    return encoder


def speed(model: Path, documents: list[str], queries: list[str], rounds: int) -> dict[str, Any]:
    """Documents/s at batch 32 and queries/s at batch 1 for every backend, interleaved over ``rounds``."""
    encoders = {backend: load(model, backend) for backend in MEASURED}
    for encoder in encoders.values():  # warm-up: first-call allocations and graph compilation are not timed
        encoder.embed_documents(documents[:32])
        encoder.embed_queries(queries[:1])
    timings: dict[str, dict[str, list[float]]] = {b: {"documents/s": [], "queries/s": []} for b in MEASURED}
    for round_number in range(rounds):
        order = MEASURED if round_number % 2 == 0 else MEASURED[::-1]
        for backend in order:
            encoder = encoders[backend]
            started = time.perf_counter()
            encoder.embed_documents(documents)
            timings[backend]["documents/s"].append(len(documents) / (time.perf_counter() - started))
            started = time.perf_counter()
            for query in queries:
                encoder.embed_queries([query])
            timings[backend]["queries/s"].append(len(queries) / (time.perf_counter() - started))
        print(f"  speed round {round_number + 1}/{rounds} done", flush=True)
    table: dict[str, Any] = {}
    for backend, values in timings.items():
        table[backend] = {
            name: {"median": statistics.median(v), "min": min(v), "max": max(v)} for name, v in values.items()
        }
    for backend in MEASURED:
        for name in ("documents/s", "queries/s"):
            table[backend][name]["speedup"] = table[backend][name]["median"] / table["torch"][name]["median"]
    return {"documents": len(documents), "queries": len(queries), "rounds": rounds, "backends": table}


def quality(name: str) -> dict[str, Any] | None:
    split = load_split(name, 2000, 600)
    if split is None:
        return None
    model = heal_model(name, split, 100)
    agreement = export_all(model)
    gold = np.arange(len(split.test_texts))
    scores = {}
    for backend in MEASURED:
        encoder = load(model, backend)
        ranked = top_k_indices(
            encoder.embed_queries(split.test_queries), encoder.embed_documents(split.test_texts), 10
        )
        scores[backend] = per_query_scores(ranked, gold, split.test_level_ids, split.test_level_ids, k=10)
    result: dict[str, Any] = {"queries": len(gold), "agreement": agreement, "metrics": {}, "minus_torch": {}}
    for backend, values in scores.items():
        result["metrics"][backend] = {m: float(values[m].mean()) for m in ("nDCG@10", "MRR@10")}
        if backend != "torch":
            result["minus_torch"][backend] = {
                m: paired_difference(values[m], scores["torch"][m]).as_dict() for m in ("nDCG@10", "MRR@10")
            }
    return result


def recommended(speeds: dict[str, Any], qualities: dict[str, Any]) -> str:
    """The fastest backend whose nDCG@10 and MRR@10 stay within the target on every dataset.

    Fastest: the highest geometric mean of the document (batch 32) and query (batch 1) speed-ups over PyTorch, since
    an app pays for both (indexing, and every question).
    """

    def within(backend: str) -> bool:
        return all(
            abs(q["minus_torch"][backend][m]["mean"]) <= TARGET
            for q in qualities.values()
            for m in ("nDCG@10", "MRR@10")
        )

    def speedup(backend: str) -> float:
        figures = speeds["backends"][backend]
        return (figures["documents/s"]["speedup"] * figures["queries/s"]["speedup"]) ** 0.5

    candidates = [b for b in MEASURED[1:] if within(b)] or ["torch"]
    return max(candidates, key=speedup)


def index_build(model: Path, backend: str) -> dict[str, Any] | None:
    """Seconds to embed and store all 21,450 arXiv abstracts with PyTorch, then with ``backend``."""
    from heal_rag.chroma import build_index
    from heal_rag.data import read_corpus

    if not ARXIV_FULL.is_file():
        print(f"index build: {ARXIV_FULL} absent, skipped")
        return None
    corpus = read_corpus(ARXIV_FULL)
    seconds = {}
    for name in ("torch", backend) if backend != "torch" else ("torch",):
        with tempfile.TemporaryDirectory() as db:
            started = time.perf_counter()
            build_index(load(model, name), corpus, Path(db) / "db", "bench", show_progress=False)
            seconds[name] = time.perf_counter() - started
        print(f"  index build with {name}: {seconds[name]:.0f} s", flush=True)
    return {"documents": len(corpus), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved speed rounds (default 5)")
    parser.add_argument("--skip-index", action="store_true", help="leave out the 21,450-abstract index build")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv),
        "max_seq_length": MAX_SEQ_LENGTH,
        "cpu": cpu_name(),
        "native_bf16": "openvino-bf16" in MEASURED,
    }

    qualities = {name: q for name in DATASETS if (q := quality(name)) is not None}
    results["quality"] = qualities
    for name, q in qualities.items():
        print(f"\n### {name}: {q['queries']} held-out queries (backend − torch, paired 95% CI)")
        print("| backend | least cosine to torch | nDCG@10 | MRR@10 |\n|---|---:|---:|---:|")
        for backend in MEASURED:
            cosine = q["agreement"].get(backend, {}).get("min_cosine", 1.0)
            cells = [f"{q['metrics'][backend][m]:.4f}" for m in ("nDCG@10", "MRR@10")]
            if backend != "torch":
                cells = [
                    f"{c} ({format_paired(q['minus_torch'][backend][m])})"
                    for c, m in zip(cells, ("nDCG@10", "MRR@10"), strict=True)
                ]
            print(f"| {backend} | {cosine:.4f} | " + " | ".join(cells) + " |")

    arxiv = load_split("arxiv", 2000, 600)
    if arxiv is None or "arxiv" not in qualities:
        print("speed: the arXiv data is absent, skipped")
        write_json_atomic(RESULTS, results)
        return
    results["speed"] = speed(
        heal_model("arxiv", arxiv, 100), arxiv.test_texts[:256], arxiv.test_queries[:100], args.rounds
    )
    print(f"\n### speed ({args.rounds} interleaved rounds, median [min, max]; 2 CPU cores)")
    print("| backend | documents/s (batch 32) | × torch | queries/s (batch 1) | × torch |\n|---|---:|---:|---:|---:|")
    for backend, values in results["speed"]["backends"].items():
        d, q = values["documents/s"], values["queries/s"]
        print(
            f"| {backend} | {d['median']:.1f} [{d['min']:.1f}, {d['max']:.1f}] | {d['speedup']:.2f} | "
            f"{q['median']:.1f} [{q['min']:.1f}, {q['max']:.1f}] | {q['speedup']:.2f} |"
        )
    results["recommended"] = recommended(results["speed"], qualities)
    print(f"\nrecommended backend: {results['recommended']}")
    if not args.skip_index:
        results["index_build"] = index_build(heal_model("arxiv", arxiv, 100), results["recommended"])
    write_json_atomic(RESULTS, results)
    if results.get("index_build"):
        print("index build:", json.dumps(results["index_build"]))
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
