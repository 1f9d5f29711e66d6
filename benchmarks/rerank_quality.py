"""Does hierarchy-aware reranking help? Retriever alone vs retriever + HierarchyScorer, over a β/temperature grid.

Held-out part of the demo split (title → abstract, 638 queries over 638 abstracts), a HEAL model (default: the
one `make demo` writes), 20 candidates retrieved by cosine, documents labelled with their true paths (as in an
indexed, labelled corpus; queries are unlabelled). Metrics: nDCG@10 (graded), MRR@10, hierarchical precision@10,
and the hallucination-risk proxies off-topic@5 and context-miss@5 over the 5 passages a generator would get.

    python benchmarks/rerank_quality.py [--model runs/demo/model]

Prints a table and writes benchmarks/results/rerank_quality.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from shared import ARXIV_MINI, require  # noqa: E402

from heal_rag.artifacts import write_json_atomic  # noqa: E402
from heal_rag.data import hashed_split, read_corpus  # noqa: E402
from heal_rag.encoder import HEALEncoder  # noqa: E402
from heal_rag.evaluation.retrieval import evaluate_rankings, top_k_indices  # noqa: E402
from heal_rag.rerank import HierarchyScorer  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "rerank_quality.json"
METRICS = ["nDCG@10", "MRR@10", "hP@10/L2", "off-topic@5", "context-miss@5"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/demo/model")
    parser.add_argument("--candidates", type=int, default=20)
    args = parser.parse_args()

    corpus = read_corpus(require(ARXIV_MINI))
    _, test_idx = hashed_split(corpus.ids, test_fraction=0.3)
    test = corpus.subset(test_idx)
    level_ids = corpus.labels.level_ids()[test_idx]
    encoder = HEALEncoder.load(args.model)
    queries = encoder.embed_queries([t or "" for t in test.titles])
    docs = encoder.embed_documents(test.texts)
    candidates = top_k_indices(queries, docs, args.candidates)
    gold = np.arange(len(test))

    def report(ranked: np.ndarray) -> dict[str, float]:
        return evaluate_rankings(ranked, gold, level_ids, level_ids, k=10, recall_at=(1, 10), context_k=5).as_dict()

    rows = [{"setting": "retriever alone", **report(candidates)}]
    for mode in ("rescore", "route"):
        for beta in (0.01, 0.02, 0.05, 0.1):
            for temperature in (0.02, 0.05, 0.1):
                scorer = HierarchyScorer(encoder, beta=beta, temperature=temperature, mode=mode)
                reranked = []
                for q, cand in enumerate(candidates):
                    results = scorer.rerank(
                        "",
                        [test.texts[i] for i in cand],
                        paths=[test.labels.paths[i] for i in cand],
                        similarities=(docs[cand] @ queries[q]).tolist(),
                        query_embedding=queries[q],
                    )
                    reranked.append([cand[r.index] for r in results])
                rows.append({"setting": f"{mode} β={beta} T={temperature}", **report(np.array(reranked))})

    base = rows[0]
    best = max(rows[1:], key=lambda r: (r["nDCG@10"] - base["nDCG@10"]) - (r["off-topic@5"] - base["off-topic@5"]))
    print(f"\nReranking {args.candidates} candidates, {len(test)} held-out queries, model {args.model}\n")
    print("| setting | " + " | ".join(METRICS) + " |")
    print("|---|" + "---:|" * len(METRICS))
    for row in rows:
        mark = " **(best)**" if row is best else ""
        print(f"| {row['setting']}{mark} | " + " | ".join(f"{row[m]:.4f}" for m in METRICS) + " |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS, {"command": "python " + " ".join(sys.argv), "rows": rows, "best": best["setting"]})
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
