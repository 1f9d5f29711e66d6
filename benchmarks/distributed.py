"""Does ``--gather-across-devices`` help? Two processes under torchrun, with and without it (issue 20).

Under ``torchrun`` each rank's loss sees only its own batch unless ``gather_across_devices`` joins every rank's rows
(with gradients) as positives and negatives, as sentence-transformers' in-batch-negative losses do. This trains one
shared split (``quality.py``'s sample, title → text, its true label paths) three ways at the same global batch and
step budget, on CPU with the gloo backend:

- ``single``: one process, batch ``2 × --per-rank-batch`` (what the gathered loss is meant to recover);
- ``ranks``: ``torchrun --nproc_per_node 2``, ``--per-rank-batch`` per rank, each rank's loss on its own rows
  (``--no-gather-across-devices``);
- ``gathered``: the same with ``--gather-across-devices`` (the default since this benchmark's two datasets).

Every run is ``heal-rag train`` on a JSONL file written under runs/ (from ../shared/data; never committed), with
``--base-weight-share 0`` so that the loss alone is compared (the blend would move each run by its own choice).
Held-out retrieval as in ``quality.py``, with 95 % paired bootstrap intervals against ``ranks``, and the wall time
of each run (2 processes share the machine's cores).

    python benchmarks/distributed.py [--dataset 20newsgroups] [--steps 100] [--per-rank-batch 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import quality  # noqa: E402
from shared import output_file  # noqa: E402

from heal_rag.artifacts import write_json_atomic  # noqa: E402
from heal_rag.evaluation.retrieval import format_paired, paired_difference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "bench-distributed"
RESULTS = Path(__file__).parent / "results" / "distributed.json"
RUNS = ("single", "ranks", "gathered")
COLUMNS = ("nDCG@10", "MRR@10", "Recall@1", "hP@10/leaf", "off-topic@5")


def write_corpus(split: quality.Split, path: Path) -> Path:
    """The split's training documents as a heal_rag JSONL corpus (title = the query)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for doc_id, text, query, labels in zip(
            split.train_ids, split.train_texts, split.train_queries, split.train_labels.paths, strict=True
        ):
            handle.write(json.dumps({"id": doc_id, "text": text, "title": query, "labels": list(labels)}) + "\n")
    return path


def train(run: str, corpus: Path, output_dir: Path, steps: int, per_rank_batch: int) -> float:
    """``heal-rag train`` as ``run`` says; returns its wall time in seconds."""
    arguments = ["train", "--data", str(corpus), "--out", str(output_dir), "--overwrite", "--max-steps", str(steps)]
    arguments += ["--max-seq-length", "128", "--base-weight-share", "0", "--seed", "42"]
    if run == "single":
        command = [sys.executable, "-m", "heal_rag.cli", *arguments, "--batch-size", str(2 * per_rank_batch)]
    else:
        # --standalone: a rendezvous on localhost with a free port, chosen by torchrun
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        command += ["-m", "heal_rag.cli", *arguments]
        command += ["--batch-size", str(per_rank_batch)]
        command.append("--gather-across-devices" if run == "gathered" else "--no-gather-across-devices")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if run != "single":
        env["OMP_NUM_THREADS"] = "1"  # one core per rank on the 2-core machine
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    return time.perf_counter() - started


def evaluate(split: quality.Split, model_dir: Path) -> dict[str, Any]:
    """Held-out retrieval of the saved model, per query (for the paired intervals) and averaged."""
    from heal_rag.evaluation import top_k_indices
    from heal_rag.models import load_sentence_transformer, set_max_seq_length

    model = load_sentence_transformer(model_dir)
    set_max_seq_length(model, 128)
    kwargs = {"batch_size": 64, "normalize_embeddings": True, "convert_to_numpy": True}
    queries = model.encode_query(split.test_queries, **kwargs)  # the training documents (quality.embed) not needed
    ranked = top_k_indices(queries, model.encode_document(split.test_texts, **kwargs), quality.RANK_DEPTH)
    retrieval, _ = quality.score(split, ranked, {})
    return {"retrieval": retrieval, "per_query": quality.retrieval_per_query(split, ranked)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="20newsgroups", choices=sorted(quality.DATASETS))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--per-rank-batch", type=int, default=16)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--output", type=output_file, default=RESULTS)
    args = parser.parse_args()

    split = quality.load_split(args.dataset, *quality.DEFAULT_SIZES)
    if split is None:
        return
    corpus = write_corpus(split, WORK / args.dataset / "train.jsonl")
    results: dict[str, Any] = {}
    per_query: dict[str, Any] = {}
    for run in args.runs:
        seconds = train(run, corpus, WORK / args.dataset / run, args.steps, args.per_rank_batch)
        evaluation = evaluate(split, WORK / args.dataset / run)
        results[run] = {"train_seconds": round(seconds, 1), "retrieval": evaluation["retrieval"]}
        per_query[run] = evaluation["per_query"]
        values = {c: round(quality._value(results[run], c, "retrieval"), 4) for c in COLUMNS}
        print(f"[{args.dataset}] {run}: {seconds:.0f} s {json.dumps(values)}", flush=True)

    leaf = split.test_level_ids.shape[1] - 1
    names = {"hP@10/leaf": f"hP@10/L{leaf}"}
    differences = {}
    if "ranks" in per_query:
        for run in per_query:
            if run != "ranks":
                differences[f"{run} - ranks"] = {
                    c: paired_difference(per_query[run][key], per_query["ranks"][key]).as_dict()
                    for c, key in ((c, names.get(c, c)) for c in COLUMNS)
                }
                cells = ", ".join(f"{c} {format_paired(d)}" for c, d in differences[f"{run} - ranks"].items())
                print(f"{run} - ranks: {cells}", flush=True)
    write_json_atomic(
        args.output,
        {
            "dataset": args.dataset,
            "steps": args.steps,
            "per_rank_batch": args.per_rank_batch,
            "runs": results,
            "differences": differences,
        },
    )
    print(f"wrote {args.output}", flush=True)


if __name__ == "__main__":
    main()
