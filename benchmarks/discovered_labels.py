"""Retrieval value of discovered labels: HEAL on HNMFk labels vs HEAL on the true labels vs the untouched model.

Same split as `make demo` (bundled arXiv mini corpus, 70/30 hashed split, 128 tokens). HNMFk is fitted on the
training texts only, once per ``--depths`` value (default 2 and 3). Each label source trains with the settings
``heal-rag train`` gives it: the true labels with ``fine_tune``'s defaults (``base_weight_share="auto"``),
discovered labels with ``heal_rag.training.DISCOVERED_LABELS_SETTINGS`` (fixed share 0.4, query↔document
weight 6, hierarchy τ 0.2). Every model is scored on the held-out part against the TRUE hierarchy: title →
abstract MRR@10, Recall@1/10, hierarchical precision@10 per true level, graded nDCG@10, context-miss@5 and
off-topic@5.

    python benchmarks/discovered_labels.py [--depths 2 3]
    python benchmarks/discovered_labels.py --shares 0.4 0.6

``--shares`` trains each label source once without blending (its other settings as above) and scores the
model blended with the base at each ``base_weight_share``.

Prints a table and writes benchmarks/results/discovered_labels.json (``--shares``: discovered_labels-shares.json);
about 3 to 4 minutes per trained model on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from shared import ARXIV_MINI, require  # noqa: E402

from heal_rag.artifacts import write_json_atomic  # noqa: E402
from heal_rag.data import hashed_split, read_corpus  # noqa: E402
from heal_rag.evaluation.retrieval import RetrievalReport, evaluate_retrieval  # noqa: E402
from heal_rag.hierarchy.discover import discover_labels  # noqa: E402
from heal_rag.models import (  # noqa: E402
    blend_with_base_weights,
    copy_weights,
    load_sentence_transformer,
    set_max_seq_length,
)
from heal_rag.training import DISCOVERED_LABELS_SETTINGS, fine_tune  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "discovered_labels.json"
RUNS = Path(__file__).resolve().parents[1] / "runs" / "discovered_labels"


#: Token limit of training and both evaluations (the earlier demo's setting, which these figures were measured with).
DEMO_MAX_SEQ_LENGTH = 128


def evaluate_model(model, test, level_ids: np.ndarray, batch_size: int = 64) -> RetrievalReport:
    """Title → abstract retrieval on ``test`` with ``model``; ``level_ids`` are the test documents' label ids."""
    queries = [title or text[:200] for title, text in zip(test.titles, test.texts, strict=True)]
    query_emb = model.encode_query(queries, batch_size=batch_size, normalize_embeddings=True)
    doc_emb = model.encode_document(test.texts, batch_size=batch_size, normalize_embeddings=True)
    return evaluate_retrieval(
        np.asarray(query_emb),
        np.asarray(doc_emb),
        gold_doc=np.arange(len(test)),
        query_level_ids=level_ids,
        doc_level_ids=level_ids,
        k=10,
        recall_at=(1, 10),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", nargs="+", type=int, default=[2, 3], help="HNMFk max_depth values to try")
    parser.add_argument(
        "--shares",
        nargs="+",
        type=float,
        default=None,
        help="score blends at these base_weight_share values of one unblended run (default: each source's setting)",
    )
    args = parser.parse_args()
    corpus = read_corpus(require(ARXIV_MINI))
    train_idx, test_idx = hashed_split(corpus.ids, test_fraction=0.3)
    train, test = corpus.subset(train_idx), corpus.subset(test_idx)
    test_level_ids = corpus.labels.level_ids()[test_idx]
    report: dict = {"command": "python " + " ".join(sys.argv), "n_train": len(train), "n_test": len(test)}

    base = load_sentence_transformer(None)
    set_max_seq_length(base, DEMO_MAX_SEQ_LENGTH)
    results = {"untouched": evaluate_model(base, test, test_level_ids).as_dict()}
    base_state = base.state_dict()

    runs: list[tuple[str, object, list[str] | None, dict]] = [("HEAL, true labels", train.labels, None, {})]
    for depth in args.depths:
        started = time.perf_counter()
        hnmfk, discovered = discover_labels(train.texts, max_depth=depth, show_progress=False)
        report[f"hnmfk depth {depth} seconds"] = time.perf_counter() - started
        report[f"hnmfk depth {depth} tree"] = hnmfk.format_tree(max_children=10)
        report[f"hnmfk depth {depth} leaves"] = len(set(map(tuple, discovered.paths)))
        print(report[f"hnmfk depth {depth} tree"])
        runs.append((f"HEAL, HNMFk depth {depth}", discovered, hnmfk.node_names(), dict(DISCOVERED_LABELS_SETTINGS)))

    for name, labels, names, settings in runs:
        if args.shares is not None:
            settings = {**settings, "base_weight_share": 0.0}  # blended below, once per share
        started = time.perf_counter()
        result = fine_tune(
            train.texts,
            labels,
            ids=train.ids,
            titles=train.titles,
            label_names=names,
            output_dir=RUNS / name.split(", ")[1].replace(" ", "-"),
            max_seq_length=DEMO_MAX_SEQ_LENGTH,
            show_progress_bar=False,
            **settings,
        )
        report[f"{name} seconds"] = time.perf_counter() - started
        report[f"{name} settings"] = {**settings, "blend": result.describe_blend()}
        print(f"{name}: {result.describe_blend()}, {report[f'{name} seconds']:.0f} s")
        if args.shares is None:
            results[name] = evaluate_model(result.model, test, test_level_ids).as_dict()
            continue
        tuned_state = copy_weights(result.model)
        for share in args.shares:
            result.model.load_state_dict(tuned_state)
            blend_with_base_weights(result.model, base_state, share)
            results[f"{name}, share {share:g}"] = evaluate_model(result.model, test, test_level_ids).as_dict()

    report["results"] = results
    columns = list(results)
    print(f"\nHeld-out title → abstract retrieval ({len(test)} queries), scored against the true hierarchy\n")
    print("| metric | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for metric in results["untouched"]:
        print(f"| {metric} | " + " | ".join(f"{results[c][metric]:.4f}" for c in columns) + " |")
    path = RESULTS if args.shares is None else RESULTS.with_name("discovered_labels-shares.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, report)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
