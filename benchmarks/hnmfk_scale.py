"""Hierarchy discovery at scale: HNMFk's wall time and peak memory on up to 200,000 documents (2 cores).

    python benchmarks/hnmfk_scale.py [--documents 20000 200000] [--max-depth 2]

The documents are the 21,450 arXiv abstracts of ``../shared/data``, repeated past the end (a repeated abstract is a
new document to HNMFk; the vocabulary and the topics stay those of arXiv). Each size runs in a fresh child process
(so peak memory is that run's): ``HNMFk(max_depth, random_state=0).fit(texts)`` with the defaults users get (model
selection on a seeded sample of at most ``max_selection_docs`` documents per node, every document assigned by
projection onto the node's topics). Reported: wall seconds of the vectoriser and of the whole fit, peak resident
memory (MiB), nodes and leaves. Target (issue 20): 200,000 documents in under 10 minutes and 8 GiB.

Writes ``benchmarks/results/hnmfk_scale.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from shared import ARXIV_FULL  # noqa: E402

from heal_rag.artifacts import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "hnmfk_scale.json"


def child(n_documents: int, max_depth: int) -> None:
    """Fit HNMFk on ``n_documents`` texts in this process and print one JSON line of figures."""
    from heal_rag.hierarchy import HNMFk

    abstracts = [json.loads(line)["text"] for line in ARXIV_FULL.open(encoding="utf-8")]
    texts = [abstracts[i % len(abstracts)] for i in range(n_documents)]
    started = time.perf_counter()
    model = HNMFk(max_depth=max_depth, random_state=0)
    model.fit(texts)
    fit_s = time.perf_counter() - started
    nodes = model.nodes()
    print(
        json.dumps(
            {
                "documents": n_documents,
                "max_depth": max_depth,
                "fit_s": round(fit_s, 1),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "nodes": len(nodes),
                "leaves": sum(1 for n in nodes if n.is_leaf),
                "root_k": model.tree_.k,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--max-depth", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.documents[0], args.max_depth)
        return
    if not ARXIV_FULL.is_file():
        print(f"skipped: {ARXIV_FULL} is absent")
        return
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    print("| documents | depth | fit s | peak RSS MiB | nodes | leaves |\n|---:|---:|---:|---:|---:|---:|")
    for n in args.documents:
        command = [sys.executable, __file__, "--child", "--documents", str(n), "--max-depth", str(args.max_depth)]
        output = subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ}).stdout
        figures = json.loads(output.strip().splitlines()[-1])
        figures["cpus"] = os.cpu_count()
        results[f"{n}-depth{args.max_depth}"] = figures
        write_json_atomic(RESULTS, results)
        print(
            f"| {n:,} | {args.max_depth} | {figures['fit_s']:.0f} | {figures['peak_rss_mib']:,} | "
            f"{figures['nodes']} | {figures['leaves']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
