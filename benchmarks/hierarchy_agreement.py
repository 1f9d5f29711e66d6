"""HNMFk against real taxonomies, and how its run time grows.

For arxiv_oai (6 → 14 → 143) and 20newsgroups (6 → 20) from ../shared/data: fit HNMFk (depth 2) and compare the
discovered level-0 and level-1 labels with the true ones (adjusted mutual information and NMI). Baselines: flat
scikit-learn NMF and KMeans on the same TF-IDF, with k equal to the number of labels HNMFk found at that level.
Then time HNMFk on 2k, 5k and 20k arXiv abstracts.

    python benchmarks/hierarchy_agreement.py [--n-jobs 2] [--sizes 2000 5000 21450]

Prints tables and writes benchmarks/results/hierarchy_agreement.json. Skips a dataset that is absent.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from heal_rag.artifacts import write_json_atomic
from heal_rag.data import read_corpus
from heal_rag.hierarchy import HNMFk

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {
    "arxiv_oai": SHARED / "arxiv_oai" / "arxiv_oai_hier.jsonl",
    "20newsgroups": SHARED / "20newsgroups" / "20newsgroups.jsonl",
}
RESULTS = Path(__file__).parent / "results" / "hierarchy_agreement.json"


def hashed_order(ids: list[str]) -> list[int]:
    return sorted(range(len(ids)), key=lambda i: hashlib.sha1(ids[i].encode()).hexdigest())


def flat_baselines(texts: list[str], k: int, seed: int) -> dict[str, np.ndarray]:
    tfidf = TfidfVectorizer(
        stop_words="english", sublinear_tf=True, min_df=2, max_df=0.5, max_features=20000, dtype=np.float32
    ).fit_transform(texts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        nmf = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=400).fit_transform(tfidf)
    kmeans = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(tfidf)
    return {"flat NMF": nmf.argmax(axis=1), "KMeans": kmeans}


def agreement(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    return {
        "AMI": float(adjusted_mutual_info_score(true, predicted)),
        "NMI": float(normalized_mutual_info_score(true, predicted)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 21450])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    report: dict = {"command": "python " + " ".join(sys.argv), "agreement": {}, "timing": []}

    for name, path in DATASETS.items():
        if not path.is_file():
            print(f"[skip] {name}: {path} not found")
            continue
        corpus = read_corpus(path)
        true_ids = corpus.labels.level_ids()
        started = time.perf_counter()
        model = HNMFk(max_depth=2, random_state=args.seed, n_jobs=args.n_jobs)
        found = model.fit_transform(corpus.texts).level_ids()
        seconds = time.perf_counter() - started
        rows = []
        comparisons = [(0, 0), (1, 1)] + ([(1, 2)] if corpus.labels.depth > 2 else [])
        for found_level, true_level in comparisons:
            k = int(found[:, found_level].max() + 1)
            row = {
                "discovered level": found_level,
                "true level": true_level,
                "k": k,
                "true k": int(true_ids[:, true_level].max() + 1),
                "HNMFk": agreement(true_ids[:, true_level], found[:, found_level]),
            }
            for baseline, predicted in flat_baselines(corpus.texts, k, args.seed).items():
                row[baseline] = agreement(true_ids[:, true_level], predicted)
            rows.append(row)
        report["agreement"][name] = {
            "n_docs": len(corpus),
            "seconds": seconds,
            "rows": rows,
            "tree": model.format_tree(max_children=10),
        }
        print(f"\n{name}: {len(corpus)} documents, HNMFk depth 2 in {seconds:.1f} s")
        print(model.format_tree(max_children=6))
        print("\n| discovered vs true level | k (true k) | HNMFk AMI / NMI | flat NMF AMI / NMI | KMeans AMI / NMI |")
        print("|---|---:|---:|---:|---:|")
        for row in rows:
            cells = [f"{row[m]['AMI']:.3f} / {row[m]['NMI']:.3f}" for m in ("HNMFk", "flat NMF", "KMeans")]
            print(
                f"| L{row['discovered level']} vs L{row['true level']} | {row['k']} ({row['true k']}) | "
                + " | ".join(cells)
                + " |"
            )

    arxiv = DATASETS["arxiv_oai"]
    if arxiv.is_file():
        corpus = read_corpus(arxiv)
        order = hashed_order(corpus.ids)
        print("\n| documents | HNMFk depth 2 (s) | nodes | first-level k |")
        print("|---:|---:|---:|---:|")
        for size in args.sizes:
            texts = [corpus.texts[i] for i in order[:size]]
            started = time.perf_counter()
            model = HNMFk(max_depth=2, random_state=args.seed, n_jobs=args.n_jobs).fit(texts)
            seconds = time.perf_counter() - started
            again = (
                HNMFk(max_depth=2, random_state=args.seed, n_jobs=args.n_jobs).fit(texts)
                if size == args.sizes[0]
                else None
            )
            deterministic = None if again is None else again.labels_.paths == model.labels_.paths
            report["timing"].append(
                {
                    "n_docs": len(texts),
                    "seconds": seconds,
                    "nodes": len(model.nodes()),
                    "root_k": model.tree_.k,
                    "deterministic_rerun": deterministic,
                }
            )
            print(
                f"| {len(texts)} | {seconds:.1f} | {len(model.nodes())} | {model.tree_.k} |"
                + ("" if deterministic is None else f" (re-run identical: {deterministic})")
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, report)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
