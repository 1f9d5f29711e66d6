"""The ``heal-rag`` command line.

``heal-rag demo``   fine-tune on the bundled demo corpus and print a before/after table (the main job).
``heal-rag train``  fine-tune on a JSONL corpus ``{id, text, labels[, title]}`` and save a model directory.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any


def _level_weights(value: str) -> str | list[float]:
    if value in ("uniform", "deeper", "coarser"):
        return value
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--level-weights must be uniform, deeper, coarser or comma-separated numbers, got {value!r}"
        ) from None


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training (defaults: the recommended recipe)")
    group.add_argument("--base-model", default=None, help="model directory (default: embedded all-MiniLM-L6-v2)")
    group.add_argument("--epochs", type=float, default=None)
    group.add_argument("--max-steps", type=int, default=None, help="optimiser steps (overrides --epochs)")
    group.add_argument("--batch-size", type=int, default=None)
    group.add_argument("--lr", dest="learning_rate", type=float, default=None, help="learning rate")
    group.add_argument("--seed", type=int, default=None)
    group.add_argument("--max-seq-length", type=int, default=None)
    group.add_argument("--temperature", type=float, default=None, help="HEAL temperature τ")
    group.add_argument("--level-weights", type=_level_weights, default=None, help="uniform|deeper|coarser|w0,w1,..")
    group.add_argument("--query-document-weight", type=float, default=None)
    group.add_argument("--consistency-weight", type=float, default=None)
    group.add_argument("--samples-per-leaf", type=int, default=None)
    group.add_argument("--leaves-per-parent", type=int, default=None)


_TRAINING_KEYS = (
    "epochs",
    "max_steps",
    "batch_size",
    "learning_rate",
    "seed",
    "max_seq_length",
    "temperature",
    "level_weights",
    "query_document_weight",
    "consistency_weight",
    "samples_per_leaf",
    "leaves_per_parent",
)


def _training_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in _TRAINING_KEYS if getattr(args, key) is not None}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``heal-rag``."""
    parser = argparse.ArgumentParser(prog="heal-rag", description="Hierarchy-aware retrieval for RAG (HEAL).")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    demo = sub.add_parser("demo", help="fine-tune on the demo corpus and print a before/after table")
    demo.add_argument("--data", default=None, help="labelled JSONL corpus with titles (default: bundled arXiv mini)")
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--test-fraction", type=float, default=0.3)
    _add_training_options(demo)

    train = sub.add_parser("train", help="fine-tune an embedding model with the HEAL loss")
    train.add_argument("--data", required=True, help="JSONL corpus: {id, text, labels[, title]} per line")
    train.add_argument("--out", required=True, help="output model directory (written atomically)")
    train.add_argument("--queries", default=None, help="JSONL queries: {query, document_id} per line")
    train.add_argument(
        "--no-pseudo-queries",
        action="store_true",
        help="do not generate queries for documents without one (documents-only training when no --queries)",
    )
    _add_training_options(train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``heal-rag`` console script."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from heal_rag import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "demo":
            from heal_rag.demo import run_demo

            run_demo(
                data=args.data,
                output_dir=args.out,
                base_model=args.base_model,
                test_fraction=args.test_fraction,
                **_training_overrides(args),
            )
        elif args.command == "train":
            return _train(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"heal-rag {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _train(args: argparse.Namespace) -> int:
    from heal_rag.data import read_corpus, read_queries
    from heal_rag.training import DEFAULT_QUERY_GENERATOR, fine_tune

    corpus = read_corpus(args.data, require_labels=False)
    if corpus.labels is None:
        raise ValueError(
            f'{args.data} has no \'labels\'. Add a label path to every record, e.g. "labels": ["Physics", '
            '"Optics"] (automatic hierarchy discovery is planned as `heal-rag cluster`).'
        )
    queries = read_queries(args.queries, known_ids=corpus.ids) if args.queries else None
    result = fine_tune(
        corpus.texts,
        corpus.labels,
        ids=corpus.ids,
        titles=corpus.titles,
        queries=queries,
        query_generator=None if args.no_pseudo_queries else DEFAULT_QUERY_GENERATOR,
        output_dir=args.out,
        base_model=args.base_model,
        **_training_overrides(args),
    )
    print(f"saved to {result.output_dir} ({result.global_steps} steps, mean loss {result.train_loss:.4f})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
