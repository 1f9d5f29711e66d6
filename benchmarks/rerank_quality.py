"""Does the hierarchy-aware reranker help, and what does it cost? Retriever alone vs the default reranker.

For each shared dataset (arXiv, 20 Newsgroups, MedQuAD; the quality benchmark's 2,000 / 600 split), HEAL is trained
with its defaults (100 steps of batch 32, 128 tokens), which also chooses the reranker's settings on its held-out
training queries and stores them in heal_rag.json. On the held-out queries, 20 candidates are retrieved by cosine and
reranked (the documents' true paths in metadata, as in an indexed labelled corpus). Reported, per dataset: nDCG@10 and
MRR@10 (the top 10 of the reranked 20), off-topic@5 and context-miss@5 (its top 5), for the retriever alone and the
reranker with the model's settings, with 95 % paired bootstrap intervals against the retriever; and why the gold
passage leaves the top 5 where it does. (Route mode, measured here until it was removed, is recorded in
benchmarks/README.md.)

Latency: a 20,000-record Chroma index (arXiv texts and paths; the vectors are random unit vectors, since search cost
depends on the index size and width, not on what the vectors mean), 100 title queries, interleaved rounds:
``embed_query`` + Chroma query of 5, against ``embed_query`` + Chroma query of 20 + rerank to 5.

    python benchmarks/rerank_quality.py [--datasets arxiv 20newsgroups medquad] [--steps 100] [--latency-only]

Prints tables and writes benchmarks/results/rerank_quality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from quality import Budget, load_split, train_heal  # noqa: E402
from shared import ARXIV_FULL  # noqa: E402

from heal_rag.artifacts import write_json_atomic  # noqa: E402
from heal_rag.encoder import HEALEncoder  # noqa: E402
from heal_rag.evaluation.retrieval import format_paired, paired_difference, per_query_scores, top_k_indices  # noqa: E402
from heal_rag.rerank import HierarchyScorer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "rerank"
RESULTS = Path(__file__).parent / "results" / "rerank_quality.json"
METRICS = ("nDCG@10", "MRR@10", "off-topic@5", "context-miss@5")
CANDIDATES = 20


def heal_model(name: str, split: Any, steps: int) -> Path:
    """The dataset's default HEAL model (trained once, then reused from runs/rerank)."""
    path = WORK / name / "model"
    if not (path / "heal_rag.json").is_file():
        budget = Budget(steps=steps, batch_size=32, learning_rate=1e-4, warmup_ratio=0.1, max_seq_length=128, seed=42)
        train_heal(split, budget, path.parent, {})  # writes <dataset>/model
    return path


def rerank_all(scorer: HierarchyScorer, query_embeddings, doc_embeddings, candidates, paths) -> np.ndarray:
    ranked = np.empty_like(candidates)
    for row, picked in enumerate(candidates):
        results = scorer.rerank(
            "",
            ["" for _ in picked],
            paths=[paths[i] for i in picked],
            similarities=(doc_embeddings[picked] @ query_embeddings[row]).tolist(),
            query_embedding=query_embeddings[row],
        )
        ranked[row] = picked[[r.index for r in results]]
    return ranked


def why_gold_leaves(scorer, query_embeddings, candidates, ranked, gold, level_ids, doc_embeddings) -> dict[str, Any]:
    """What the queries whose gold passage the reranker pushes out of the top 5 have in common."""
    from heal_rag.rerank import certainty

    dropped = [q for q in range(len(gold)) if gold[q] in candidates[q, :5] and gold[q] not in ranked[q, :5]]
    if not dropped:
        return {"queries": 0}
    probabilities = scorer.encoder.level_probabilities(query_embeddings[dropped], scorer.temperature)
    leaf = len(probabilities) - 1
    predicted = probabilities[leaf].argmax(axis=1)
    gold_leaf = level_ids[gold[dropped], leaf]
    rank_before = [int(np.flatnonzero(candidates[q] == gold[q])[0]) for q in dropped]
    gaps = [float(doc_embeddings[gold[q]] @ query_embeddings[q] - doc_embeddings[ranked[q, 4]] @ query_embeddings[q])
            for q in dropped]  # fmt: skip
    return {
        "queries": len(dropped),
        "gold_leaf_is_not_the_querys_most_likely": float(np.mean(predicted != gold_leaf)),
        "mean_leaf_certainty": float(np.mean(certainty(probabilities[leaf], scorer.confidence_floor))),
        "mean_rank_before": float(np.mean(rank_before)),
        "mean_similarity_lead_over_the_new_fifth": float(np.mean(gaps)),
    }


def quality(name: str, steps: int) -> dict[str, Any] | None:
    split = load_split(name, 2000, 600)
    if split is None:
        return None
    encoder = HEALEncoder.load(heal_model(name, split, steps))
    encoder.model.max_seq_length = 128
    queries = encoder.embed_queries(split.test_queries)
    docs = encoder.embed_documents(split.test_texts)
    gold = np.arange(len(split.test_texts))
    level_ids = split.test_level_ids
    paths = split.test_paths  # the documents' true paths, as an indexed labelled corpus holds them
    candidates = top_k_indices(queries, docs, CANDIDATES)
    systems = {"retriever alone": candidates}
    default = HierarchyScorer(encoder)
    systems["reranker (model's settings)"] = rerank_all(default, queries, docs, candidates, paths)
    scores = {
        system: per_query_scores(ranked, gold, level_ids, level_ids, k=10, recall_at=(1, 10), context_k=5)
        for system, ranked in systems.items()
    }
    base = scores["retriever alone"]
    return {
        "queries": len(gold),
        "settings": default.config(),
        "record": encoder.metadata["training"].get("reranker"),
        "metrics": {system: {m: float(s[m].mean()) for m in METRICS} for system, s in scores.items()},
        "minus_retriever": {
            system: {m: paired_difference(s[m], base[m]).as_dict() for m in METRICS}
            for system, s in scores.items()
            if system != "retriever alone"
        },
        "gold_leaves_top5": why_gold_leaves(
            default, queries, candidates, systems["reranker (model's settings)"], gold, level_ids, docs
        ),
    }


def latency(model: Path, rounds: int = 3, n_queries: int = 100) -> dict[str, Any] | None:
    import chromadb  # noqa: F401

    from heal_rag.chroma import build_index, open_collection
    from heal_rag.data import Corpus, read_corpus
    from heal_rag.metadata import path_from_metadata

    if not ARXIV_FULL.is_file():
        print(f"latency: {ARXIV_FULL} absent, skipped")
        return None
    encoder = HEALEncoder.load(model)
    arxiv = read_corpus(ARXIV_FULL)
    n = 20000
    db = WORK / "latency-db"
    if not (db / "chroma.sqlite3").is_file():
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(n, encoder.dimension)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        corpus = Corpus(arxiv.ids[:n], arxiv.texts[:n], arxiv.titles[:n], arxiv.labels.subset(range(n)))
        build_index(encoder, corpus, db, "latency", embeddings=vectors, show_progress=False)
    collection = open_collection(db, "latency")
    scorer = HierarchyScorer(encoder)
    questions = [t for t in arxiv.titles[n : n + n_queries] if t]

    def retrieve(question: str) -> None:
        collection.query(query_embeddings=[encoder.embed_queries([question])[0]], n_results=5)

    def retrieve_and_rerank(question: str) -> None:
        embedding = encoder.embed_queries([question])[0]
        hits = collection.query(query_embeddings=[embedding], n_results=CANDIDATES,
                                include=["metadatas", "distances", "documents"])  # fmt: skip
        scorer.rerank(
            question,
            hits["documents"][0],
            paths=[path_from_metadata(m) for m in hits["metadatas"][0]],
            similarities=[1.0 - d for d in hits["distances"][0]],
            query_embedding=embedding,
            top_n=5,
        )

    timings: dict[str, list[float]] = {"retrieve": [], "retrieve + rerank": []}
    for _ in range(rounds):
        for question in questions:
            for name, call in (("retrieve", retrieve), ("retrieve + rerank", retrieve_and_rerank)):
                started = time.perf_counter()
                call(question)
                timings[name].append((time.perf_counter() - started) * 1000)
    p50 = {name: float(np.percentile(values, 50)) for name, values in timings.items()}
    p95 = {name: float(np.percentile(values, 95)) for name, values in timings.items()}
    return {"records": n, "queries": len(questions), "rounds": rounds, "p50_ms": p50, "p95_ms": p95,
            "ratio_p50": p50["retrieve + rerank"] / p50["retrieve"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["arxiv", "20newsgroups", "medquad"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--latency-only", action="store_true", help="measure latency only (keeps earlier quality)")
    parser.add_argument("--skip-latency", action="store_true", help="quality only (keeps an earlier latency)")
    args = parser.parse_args()
    # Parts run separately (quality while something else holds the CPU, latency on a quiet machine) are merged.
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results["command" if not args.latency_only else "latency_command"] = "python " + " ".join(sys.argv)
    if not args.latency_only:
        for name in args.datasets:
            result = quality(name, args.steps)
            if result is None:
                continue
            results[name] = result
            print(f"\n### {name} ({result['queries']} held-out queries, 20 candidates; settings {result['settings']})")
            print("| system | " + " | ".join(METRICS) + " |\n|---|" + "---:|" * len(METRICS))
            for system, values in result["metrics"].items():
                cells = [f"{values[m]:.4f}" for m in METRICS]
                if system in result["minus_retriever"]:
                    cells = [
                        f"{values[m]:.4f} ({format_paired(result['minus_retriever'][system][m])})" for m in METRICS
                    ]
                print(f"| {system} | " + " | ".join(cells) + " |")
            print("gold pushed out of the top 5:", result["gold_leaves_top5"])
    model = WORK / "arxiv" / "model"
    if model.is_dir() and not args.skip_latency:
        results["latency"] = latency(model)
        print("\nlatency:", results["latency"])
    write_json_atomic(RESULTS, results)
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
