"""The ``heal-rag`` command line.

``heal-rag demo``     the main job: API docs of the installed libraries as a folder → tune → index → report → answers.
``heal-rag train``    fine-tune on a folder of documents (chunked; folders are the label path) or a JSONL corpus
                      ``{id, text[, labels][, title]}`` and save a model directory; unlabelled data is clustered first.
``heal-rag cluster``  discover a label hierarchy for a JSONL corpus with HNMFk and write the labels.
``heal-rag index``    embed a folder (the chunks the model was tuned on) or a JSONL corpus into a Chroma collection.
``heal-rag eval``     A/B report of models (and BM25) on a labelled JSONL corpus with queries (extra 'eval').
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from typing import Any


def _whole_number(value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value!r}")
    return number


def _positive_int(value: str) -> int:
    return _whole_number(value, 1)


def _non_negative_int(value: str) -> int:
    return _whole_number(value, 0)


def _non_negative_int_or_auto(value: str) -> int | str:
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return _non_negative_int(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0 or 'auto', got {value!r}") from None


def _finite_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return number


def _level_weights(value: str) -> str | list[float]:
    if value in ("uniform", "deeper", "coarser"):
        return value
    try:
        weights = [float(v) for v in value.split(",")]
    except ValueError:
        weights = []
    if not weights or not all(math.isfinite(w) and w >= 0 for w in weights):
        raise argparse.ArgumentTypeError(
            f"--level-weights must be uniform, deeper, coarser or comma-separated non-negative numbers, got {value!r}"
        )
    return weights


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training (defaults: the recommended recipe)")
    group.add_argument("--base-model", default=None, help="model directory (default: embedded all-MiniLM-L6-v2)")
    group.add_argument("--epochs", type=_finite_float, default=None)
    group.add_argument("--max-steps", type=_positive_int, default=None, help="optimiser steps (overrides --epochs)")
    group.add_argument("--batch-size", type=_positive_int, default=None)
    group.add_argument("--lr", dest="learning_rate", type=_finite_float, default=None, help="learning rate")
    group.add_argument("--seed", type=int, default=None)
    group.add_argument("--max-seq-length", type=_positive_int, default=None, help="token limit while training")
    group.add_argument("--temperature", type=_finite_float, default=None, help="HEAL temperature τ")
    group.add_argument("--level-weights", type=_level_weights, default=None, help="uniform|deeper|coarser|w0,w1,..")
    group.add_argument("--query-document-weight", type=_finite_float, default=None)
    group.add_argument("--pair-loss", choices=["ranking", "supcon"], default=None, help="query↔document level form")
    group.add_argument("--pair-temperature", type=_finite_float, default=None, help="τ of the query↔document level")
    group.add_argument(
        "--hierarchy-views",
        choices=["both", "documents"],
        default=None,
        help="who joins the hierarchy levels: both (default; documents when every query is a generated heading or "
        "key sentence, unless the labels are discovered) or documents",
    )
    group.add_argument(
        "--inverse-cloze-rate",
        type=_finite_float,
        default=None,
        help="share of generated key-sentence queries paired with their text without the sentence (default 0; 0.9 "
        "when every query is a generated heading or key sentence, unless the labels are discovered)",
    )
    group.add_argument(
        "--pair-negatives",
        choices=["all", "other_leaves"],
        default=None,
        help="other_leaves: a query's own-leaf documents are not its negatives (fewer off-topic hits, lower MRR)",
    )
    group.add_argument(
        "--hard-negatives",
        type=_non_negative_int_or_auto,
        default=None,
        help="per query, this many of its nearest training documents from other leaves (base model) join its "
        "ranking as negatives, or 'auto' (4 where the data allow); default 0, 'auto' when the queries are "
        "headings and key sentences on given labels; each adds a document forward pass per row",
    )
    group.add_argument("--consistency-weight", type=_finite_float, default=None)
    group.add_argument(
        "--gather-across-devices",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="under torchrun: every rank's batch joins each rank's loss as positives and negatives (default: on)",
    )
    group.add_argument("--samples-per-leaf", type=_positive_int, default=None)
    group.add_argument("--leaves-per-parent", type=_positive_int, default=None)
    group.add_argument(
        "--base-weight-share",
        type=_share_or_auto,
        default=None,
        help="blend this share of the base model's weights back after training (0: off), or 'auto' (default): choose "
        "it on held-out documents and their queries (0.4 when there are too few of them, and for discovered labels)",
    )
    group.add_argument(
        "--blend-standard-errors",
        type=_finite_float,
        default=None,
        help="'auto' keeps the share nearest the base model within this many standard errors of the best held-out "
        "MRR@10 (default 0: the best; 1 when every query is a generated key sentence, unless the labels are "
        "discovered)",
    )


#: ``heal_rag.backends.BACKENDS``, spelt out so that ``--help`` does not import numpy and the runtimes' helpers.
BACKEND_CHOICES = ("torch", "onnx", "onnx-int8", "openvino", "openvino-bf16", "openvino-int8")

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
    "pair_loss",
    "pair_temperature",
    "hierarchy_views",
    "inverse_cloze_rate",
    "pair_negatives",
    "hard_negatives",
    "consistency_weight",
    "gather_across_devices",
    "samples_per_leaf",
    "leaves_per_parent",
    "base_weight_share",
    "blend_standard_errors",
)


def _share_or_auto(value: str) -> float | str:
    if value.strip().lower() == "auto":
        return "auto"
    try:
        share = float(value)
    except ValueError:
        share = math.nan
    if not 0.0 <= share < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) or 'auto', got {value!r}")
    return share


def _training_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The training flags the user set, validated as a whole (ranges, combinations) before any work starts."""
    from heal_rag.training import HEALTrainingConfig

    overrides = {key: getattr(args, key) for key in _TRAINING_KEYS if getattr(args, key) is not None}
    HEALTrainingConfig(**overrides)  # raises ValueError naming the setting
    return overrides


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``heal-rag``."""
    parser = argparse.ArgumentParser(prog="heal-rag", description="Hierarchy-aware retrieval for RAG (HEAL).")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    demo = sub.add_parser(
        "demo",
        help="the whole product end to end: build the API docs of numpy/scipy/scikit-learn as a folder tree, tune, "
        "index, evaluate (report), answer three questions",
    )
    demo.add_argument(
        "--data",
        default=None,
        help="a folder of documents or a JSONL corpus (default: the API docs of the installed numpy, scipy and "
        "scikit-learn); without labels, a hierarchy is discovered",
    )
    demo.add_argument(
        "--out", default="runs/demo", help="output directory (default: runs/demo; an earlier run is replaced)"
    )
    demo.add_argument("--test-fraction", type=_finite_float, default=0.3, help="share of documents held out")
    demo.add_argument(
        "--documents",
        type=_positive_int,
        default=800,
        help="use a hashed sample of N documents (default 800, to stay near a quarter of an hour on 2 cores)",
    )
    demo.add_argument(
        "--chunks-per-document",
        type=_positive_int,
        default=2,
        help="keep the first N chunks of each document (default 2, for the same reason)",
    )
    demo.add_argument("--question", action="append", default=None, help="a question for the chatbot (repeatable)")
    _add_training_options(demo)

    train = sub.add_parser("train", help="fine-tune an embedding model with the HEAL loss")
    train.add_argument(
        "--data",
        required=True,
        help="a folder of documents (.md .txt .rst .html .pdf; the folders are the label path), or a JSONL corpus "
        "{id, text[, labels][, title]} per line (without labels, a hierarchy is discovered)",
    )
    train.add_argument(
        "--out", required=True, help="output model directory (new or empty; written atomically at the end)"
    )
    train.add_argument("--overwrite", action="store_true", help="replace an earlier heal_rag model directory at --out")
    train.add_argument(
        "--checkpoints",
        default=None,
        help="write a checkpoint every --checkpoint-steps steps to this directory (default with --resume: "
        "<out>.checkpoints)",
    )
    train.add_argument("--checkpoint-steps", type=_positive_int, default=100, help="steps between checkpoints")
    train.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --checkpoints (same result)"
    )
    train.add_argument("--queries", default=None, help="JSONL queries: {query, document_id} per line")
    train.add_argument(
        "--no-pseudo-queries",
        action="store_true",
        help="do not generate queries for documents without one (documents-only training when no --queries)",
    )
    train.add_argument(
        "--hierarchy-depth",
        type=_positive_int,
        default=2,
        help="levels to discover when the corpus has no labels (default 2)",
    )
    _add_folder_options(train)
    train.add_argument(
        "--no-source-level",
        action="store_true",
        help="folders: do not make the source document a finest level of the loss (chunks of one document are "
        "positives there by default)",
    )
    _add_training_options(train)

    cluster = sub.add_parser("cluster", help="discover a label hierarchy with HNMFk")
    cluster.add_argument("--data", required=True, help="JSONL corpus: {id, text} per line (labels are ignored)")
    cluster.add_argument("--out", required=True, help="output JSONL: {id, labels, label_names, weights} per line")
    cluster.add_argument("--tree", default=None, help="hierarchy JSON (default: <out>.tree.json, and .tree.txt)")
    cluster.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _add_hierarchy_options(cluster)

    index = sub.add_parser("index", help="build a Chroma index of a corpus with a HEAL model (extra 'chroma')")
    index.add_argument("--model", required=True, help="HEAL model directory")
    index.add_argument(
        "--data",
        required=True,
        help="a folder of documents (cut into the chunks the model was tuned on), or a JSONL corpus "
        "{id, text[, labels][, title]} per line",
    )
    _add_folder_options(index)
    where = index.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="Chroma database folder")
    where.add_argument("--chroma-host", help="a Chroma server's host (started with `chroma run`), instead of --db")
    index.add_argument("--chroma-port", type=_positive_int, default=None, help="the Chroma server's port (8000)")
    index.add_argument("--collection", default="heal_rag", help="collection name (default: heal_rag)")
    index.add_argument("--batch-size", type=_positive_int, default=256, help="documents per upsert")
    index.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        help="encoder processes (torch backend; one per GPU where there are enough)",
    )
    index.add_argument(
        "--backend", choices=BACKEND_CHOICES, default="torch", help="encode with an exported backend (heal-rag export)"
    )
    index.add_argument(
        "--rebuild", action="store_true", help="drop an existing heal_rag collection of that name first"
    )
    index.add_argument(
        "--delete-missing",
        action="store_true",
        help="once --data is stored, delete the collection's records whose ids are not in it (documents removed, or "
        "shortened, since the last build)",
    )

    export = sub.add_parser(
        "export", help="export a model for fast CPU serving (ONNX Runtime or OpenVINO), checked against PyTorch"
    )
    export.add_argument("--model", required=True, help="heal_rag model directory (the export goes into it)")
    export.add_argument("--backend", choices=["onnx", "openvino"], default="onnx")
    export.add_argument("--quantize", choices=["int8"], default=None, help="dynamic int8 quantisation")
    export.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: OpenVINO computes in bfloat16 (--backend openvino; a CPU with native bf16)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export of the same kind")

    evaluate = sub.add_parser(
        "eval", help="compare models on a labelled corpus: Markdown/HTML report with plots (extra 'eval')"
    )
    evaluate.add_argument("--data", default=None, help="JSONL corpus: {id, text, labels[, title]} per line")
    evaluate.add_argument(
        "--compare",
        nargs="+",
        default=None,
        metavar="REPORT",
        help="combine earlier reports (their saved per-query scores) into one, instead of evaluating",
    )
    evaluate.add_argument(
        "--reference", default=None, help="the model the others are compared with (default: the first)"
    )
    evaluate.add_argument(
        "--queries", default=None, help="JSONL queries {query, document_id} (default: titles as queries)"
    )
    evaluate.add_argument(
        "--model",
        action="append",
        default=[],
        help="model directory to evaluate (repeatable); the base model is always evaluated first as the reference",
    )
    evaluate.add_argument(
        "--backend",
        action="append",
        default=[],
        choices=BACKEND_CHOICES,
        help="how --model encodes (heal-rag export): once for every --model, or once per --model in order, so "
        "`--model M --model M --backend torch --backend onnx-int8` compares an export with its model",
    )
    evaluate.add_argument("--base-model", default=None, help="reference model (default: embedded all-MiniLM-L6-v2)")
    evaluate.add_argument("--bm25", action="store_true", help="add the BM25 baseline")
    evaluate.add_argument("--out", default="runs/eval", help="report directory (default: runs/eval)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an earlier report at --out")
    evaluate.add_argument(
        "--max-seq-length",
        type=_positive_int,
        default=None,
        help="token limit for every model (default: each model's own, as it is deployed)",
    )
    evaluate.add_argument(
        "--k", type=_positive_int, default=10, help="cut-off of MRR, nDCG and hierarchical precision"
    )
    evaluate.add_argument("--context-k", type=_positive_int, default=5, help="passages handed to a generator")
    evaluate.add_argument("--map", choices=["tsne", "pca"], default="tsne", help="2-D map method")
    for command in (demo, train, cluster, index, evaluate, export):
        command.add_argument(
            "-q", "--quiet", action="store_true", help="print nothing but warnings and errors (no progress, no logs)"
        )
    return parser


def _add_folder_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("folders of documents (--data DIR)")
    group.add_argument(
        "--max-depth", type=_positive_int, default=None, help="keep at most this many folder levels in the label path"
    )
    group.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=None,
        help="tokens per chunk (default: the model's window; index: as the model was tuned)",
    )
    group.add_argument(
        "--chunk-overlap", type=int, default=None, help="tokens shared by neighbouring chunks (default: size / 8)"
    )


def _add_hierarchy_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("HNMFk")
    group.add_argument("--max-depth", type=_positive_int, default=2)
    group.add_argument("--k-min", type=_positive_int, default=2)
    group.add_argument("--k-max", type=_positive_int, default=10)
    group.add_argument("--n-perturbations", type=_positive_int, default=8)
    group.add_argument("--silhouette-threshold", type=_finite_float, default=0.8)
    group.add_argument("--min-node-size", type=_positive_int, default=30)
    group.add_argument(
        "--membership-threshold", type=_finite_float, default=None, help="also list topics above this share"
    )
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--n-jobs", type=int, default=-1, help="parallel jobs (default: all cores)")


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
    from heal_rag._process import (
        Terminated,
        one_line_warnings,
        quiet_resource_tracker,
        sigterm_as_interrupt,
        silence_progress_bars,
    )
    from heal_rag.distributed import is_main_process

    quiet_resource_tracker()
    # under torchrun / accelerate launch, rank 0 alone prints (errors still reach stderr from every rank)
    quiet = bool(getattr(args, "quiet", False)) or not is_main_process()
    if quiet:
        silence_progress_bars()
    try:
        with (
            sigterm_as_interrupt(),
            one_line_warnings(args.command),
            contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext(),
        ):
            return _run(args, show_progress=not quiet)
    except (ValueError, OSError) as exc:  # bad input, settings, paths or model files: a message, no traceback
        print(f"heal-rag {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # outputs are written whole or not at all; an index keeps what it stored
        stopped = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(
            f"heal-rag {args.command}: {stopped}; no output was left half-written. Run it again to continue (an "
            "index skips what it stored; training resumes with --checkpoints and --resume).",
            file=sys.stderr,
        )
        return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130


def _refuse_unused(args: argparse.Namespace, names: Sequence[str], why: str) -> None:
    """Refuse options given where they do nothing, instead of ignoring them without a word."""
    given = [name for name in names if getattr(args, name, None) not in (None, False, [])]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"{flags} {why}; leave {'it' if len(given) == 1 else 'them'} out.")


def _run(args: argparse.Namespace, show_progress: bool) -> int:
    """Run one command; ``show_progress=False`` for ``--quiet``."""
    args.show_progress = show_progress
    if args.command == "demo":
        from heal_rag.demo import run_demo

        run_demo(
            data=args.data,
            output_dir=args.out,
            base_model=args.base_model,
            test_fraction=args.test_fraction,
            documents=args.documents,
            chunks_per_document=args.chunks_per_document,
            questions=args.question,
            show_progress_bar=show_progress,
            **_training_overrides(args),
        )
        return 0
    commands = {"train": _train, "cluster": _cluster, "index": _index, "eval": _eval, "export": _export}
    return commands[args.command](args)


def _train(args: argparse.Namespace) -> int:
    from heal_rag.data import read_corpus, read_queries
    from heal_rag.outputs import prepare_output_dir
    from heal_rag.training import DEFAULT_QUERY_GENERATOR, fine_tune, measured_settings, only_key_sentence_queries

    overrides = _training_overrides(args)
    prepare_output_dir(
        args.out,
        overwrite=args.overwrite,
        inputs=[args.data, args.queries, args.base_model],
        what="--out",
        kind="model",
    )
    if os.path.isdir(args.data):
        return _train_on_folder(args, overrides)
    _refuse_unused(
        args, ("max_depth", "chunk_size", "chunk_overlap"), "apply to a folder of documents, not a JSONL corpus"
    )
    corpus = read_corpus(args.data, require_labels=False)
    labels, label_names = corpus.labels, None
    if labels is None:
        from heal_rag.hierarchy.discover import discover_training_labels

        print(
            f"{args.data} has no labels: discovering a hierarchy of up to {args.hierarchy_depth} levels (HNMFk)",
            flush=True,
        )
        labels, label_names, tree = discover_training_labels(
            corpus.texts, max_depth=args.hierarchy_depth, random_state=args.seed or 0, show_progress=args.show_progress
        )
        print(tree, flush=True)
    queries = read_queries(args.queries, known_ids=corpus.ids) if args.queries else None
    query_generator = None if args.no_pseudo_queries else DEFAULT_QUERY_GENERATOR
    overrides = measured_settings(  # discovered labels, generated queries: their measured settings, unless given
        overrides,
        discovered_labels=label_names is not None,
        key_sentence_queries=only_key_sentence_queries(corpus.titles, queries, query_generator),
    )
    result = fine_tune(
        corpus.texts,
        labels,
        label_names=label_names,
        ids=corpus.ids,
        titles=corpus.titles,
        queries=queries,
        query_generator=query_generator,
        output_dir=args.out,
        overwrite=args.overwrite,
        checkpoint_dir=args.checkpoints,
        checkpoint_steps=args.checkpoint_steps,
        resume_from_checkpoint=bool(args.resume),
        base_model=args.base_model,
        show_progress_bar=args.show_progress,
        **overrides,
    )
    print(f"saved to {result.output_dir} ({result.global_steps} steps, mean loss {result.train_loss:.4f})")
    print(result.describe_blend())
    return 0


def _train_on_folder(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from heal_rag.chunking import ChunkingConfig
    from heal_rag.documents import fine_tune_documents
    from heal_rag.training import DEFAULT_QUERY_GENERATOR

    if args.queries:
        raise ValueError("--queries goes with a JSONL corpus; a folder's chunks get their queries from headings.")
    ChunkingConfig(args.chunk_size, args.chunk_overlap)  # checked before any work
    result = fine_tune_documents(
        args.data,
        output_dir=args.out,
        max_depth=args.max_depth,
        chunk_size=args.chunk_size,
        chunk_overlap=args.chunk_overlap,
        source_level=not args.no_source_level,
        query_generator=None if args.no_pseudo_queries else DEFAULT_QUERY_GENERATOR,
        hierarchy_depth=args.hierarchy_depth,
        base_model=args.base_model,
        overwrite=args.overwrite,
        checkpoint_dir=args.checkpoints,
        checkpoint_steps=args.checkpoint_steps,
        resume_from_checkpoint=bool(args.resume),
        show_progress_bar=args.show_progress,
        **overrides,
    )
    if not result.metadata:  # a rank other than 0 under torchrun: rank 0 writes and reports
        return 0
    print(
        f"saved to {result.output_dir}: tuned on {len(result.chunks or [])} chunks of "
        f"{result.metadata['training'].get('documents')} documents ({result.global_steps} steps, mean loss "
        f"{result.train_loss:.4f})"
    )
    print(result.describe_blend())
    return 0


def _export(args: argparse.Namespace) -> int:
    from heal_rag.backends import export_model

    record = export_model(args.model, args.backend, args.quantize, precision=args.precision, overwrite=args.overwrite)
    print(
        f"{record.backend}: {record.file} written into {args.model}; least cosine to PyTorch on "
        f"{record.texts_checked} texts {record.min_cosine:.6f}. Use it with backend={record.backend!r} "
        f"(--backend {record.backend})."
    )
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from heal_rag.data import read_corpus
    from heal_rag.hierarchy.discover import (
        discover_labels,
        is_labels_file,
        is_tree_file,
        write_labels_jsonl,
        write_tree,
    )
    from heal_rag.outputs import prepare_output_file

    tree_path = args.tree or os.path.splitext(args.out)[0] + ".tree.json"
    outputs = (args.out, tree_path, os.path.splitext(tree_path)[0] + ".txt")
    if len({os.path.abspath(p) for p in outputs}) < len(outputs):
        raise ValueError(
            f"The labels ({args.out}), the tree ({tree_path}) and its text view ({outputs[2]}) must be three "
            "different files; give --tree a name that differs from --out by more than its suffix."
        )
    for path, ours in zip(outputs, (is_labels_file, is_tree_file, is_tree_file), strict=True):
        prepare_output_file(path, overwrite=args.overwrite, inputs=[args.data], ours=ours)
    corpus = read_corpus(args.data, require_labels=False)
    hnmfk, labels = discover_labels(
        corpus.texts,
        max_depth=args.max_depth,
        random_state=args.seed,
        k_range=(args.k_min, args.k_max),
        n_perturbations=args.n_perturbations,
        silhouette_threshold=args.silhouette_threshold,
        min_node_size=args.min_node_size,
        membership_threshold=args.membership_threshold,
        n_jobs=args.n_jobs,
        show_progress=args.show_progress,
    )
    write_labels_jsonl(args.out, corpus.ids, labels, hnmfk.node_names(), hnmfk.multi_memberships_)
    write_tree(hnmfk, tree_path)
    print(hnmfk.format_tree())
    print(f"\nlabels for {len(corpus)} documents written to {args.out}; hierarchy to {tree_path}")
    return 0


def _index(args: argparse.Namespace) -> int:
    from heal_rag.chroma import build_index, check_collection_name
    from heal_rag.data import iter_corpus
    from heal_rag.outputs import check_not_inputs

    check_collection_name(args.collection)
    if not os.path.isdir(args.data):
        why = "apply to a folder of documents, not a JSONL corpus"
        _refuse_unused(args, ("max_depth", "chunk_size", "chunk_overlap"), why)
    client = None
    if args.chroma_host:
        from heal_rag.chroma import connect
        from heal_rag.chroma.index import server_address

        host, port, ssl = server_address(args.chroma_host, args.chroma_port or 8000, ssl=False)
        client = connect(host, port, ssl=ssl)  # fails before any work when no server answers
    else:
        _refuse_unused(args, ("chroma_port",), "goes with --chroma-host; --db is a local database folder")
        check_not_inputs(args.db, [args.data, args.model])
    if os.path.isdir(args.data):
        from heal_rag.documents import chunks_for_model

        corpus = chunks_for_model(
            args.model,
            args.data,
            max_depth=args.max_depth,
            chunk_size=args.chunk_size,
            chunk_overlap=args.chunk_overlap,
            show_progress=not args.quiet,
        )
    else:
        for _ in iter_corpus(args.data, batch_size=4096):  # check the whole file before any work (reads only)
            pass
        corpus = iter_corpus(args.data, batch_size=4096)  # then stream it: texts are never all in memory
    # "N embedded, M already stored": what a re-run after an interruption saved. The handler lives for this
    # call only, so repeated calls in one process (tests, notebooks) neither duplicate nor write to a closed stream.
    log = logging.getLogger("heal_rag.chroma.index")
    handler = logging.StreamHandler(sys.stdout)
    previous_level = log.level
    if not args.quiet:
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        collection = build_index(
            args.model,
            corpus,
            args.db,
            collection_name=args.collection,
            batch_size=args.batch_size,
            rebuild=args.rebuild,
            show_progress=args.show_progress,
            backend=args.backend,
            client=client,
            processes=args.processes,
            delete_missing=args.delete_missing,
        )
    finally:
        log.removeHandler(handler)
        log.setLevel(previous_level)
    where = args.db if client is None else f"the Chroma server at {host}:{port}"
    print(f"collection {args.collection!r} in {where}: {collection.count()} records")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from heal_rag.data import read_corpus, read_queries
    from heal_rag.encoder import HEALEncoder, TruncationWarning, count_truncated
    from heal_rag.evaluation.report import EvaluationTask, evaluate_bm25, evaluate_embedding_model, write_report
    from heal_rag.models import load_sentence_transformer, set_max_seq_length
    from heal_rag.outputs import prepare_output_dir

    if args.compare:
        _refuse_unused(
            args,
            ("data", "queries", "model", "backend", "base_model", "bm25"),
            "evaluate models; --compare combines reports",
        )
        return _compare(args)
    if args.data is None:
        raise ValueError("heal-rag eval needs --data (a labelled JSONL corpus), or --compare REPORT [REPORT ...].")
    plan = _eval_plan(args)
    inputs = [args.data, args.queries, args.base_model, *args.model]
    prepare_output_dir(args.out, overwrite=args.overwrite, inputs=inputs, what="--out", kind="report")
    corpus = read_corpus(args.data)
    queries = read_queries(args.queries, known_ids=corpus.ids) if args.queries else None
    task = EvaluationTask.build(corpus, queries)
    print(f"{len(corpus)} documents, {len(task.query_texts)} queries", flush=True)
    evaluations = []
    for index, (model_path, backend, name) in enumerate(plan):
        print(f"[{index + 1}/{len(plan)}] {name}", flush=True)
        if backend == "torch":
            model = st_model = load_sentence_transformer(model_path)
        else:
            model = HEALEncoder.load(model_path, backend=backend, batch_size=64)
            st_model = model.model  # its tokenizer and token limit are the export's
        set_max_seq_length(st_model, args.max_seq_length)
        if truncated := count_truncated(st_model, corpus.texts):
            print(
                f"heal-rag eval: warning: {truncated} of {len(corpus)} documents are longer than {name}'s token limit "
                f"({st_model.max_seq_length}) and are embedded from their beginning only (chunk long documents).",
                file=sys.stderr,
            )
        with warnings.catch_warnings():  # an exported model's encoder would repeat the warning above
            warnings.simplefilter("ignore", TruncationWarning)
            evaluations.append(
                evaluate_embedding_model(
                    model, task, name, k=args.k, context_k=args.context_k, show_progress_bar=args.show_progress
                )
            )
    if args.bm25:
        evaluations.append(evaluate_bm25(task, k=args.k, context_k=args.context_k))
    if args.reference is not None:
        evaluations.sort(key=lambda e: e.name != args.reference)
    print("writing the report (plots, 2-D maps)", flush=True)
    out = write_report(
        evaluations,
        task,
        args.out,
        title=f"heal_rag evaluation: {Path(args.data).name}",
        map_method=args.map,
        overwrite=args.overwrite,
    )
    print((out / "report.md").read_text(encoding="utf-8").split("## Per level")[0])
    print(f"report: {out / 'report.html'} and {out / 'report.md'} (per-query scores in metrics.json)")
    return 0


def _eval_plan(args: argparse.Namespace) -> list[tuple[str | None, str, str]]:
    """(model path, backend, name in the report) of every model to evaluate, the reference model first.

    Everything that can be checked without loading a model is checked here, before any work: the backends, their
    exports, and ``--reference``.
    """
    plan: list[tuple[str | None, str, str]] = []
    models = [args.base_model, *args.model]
    for index, (path, backend) in enumerate(zip(models, _eval_backends(args.model, args.backend), strict=True)):
        name = _model_name(path) + ("" if backend == "torch" else f" ({backend})")
        if name in {shown for *_, shown in plan}:
            name = f"{name}#{index}"
        plan.append((path, backend, name))
    names = [name for *_, name in plan] + (["bm25"] if args.bm25 else [])
    if args.reference is not None and args.reference not in names:
        raise ValueError(f"--reference {args.reference!r} is none of the evaluated models: {names}.")
    return plan


def _eval_backends(models: Sequence[str], backends: Sequence[str]) -> list[str]:
    """The backend of the reference model (torch) and of each ``--model``: one ``--backend`` for all, or one each.

    A model without a checked export for its backend is refused here, before any model is evaluated.
    """
    from heal_rag.artifacts import read_metadata
    from heal_rag.backends import checked_export

    if backends and not models:
        raise ValueError("--backend says how each --model encodes; give the --model it is for, or leave it out.")
    if not backends:
        backends = ["torch"]
    if len(backends) == 1:
        backends = list(backends) * len(models)
    if len(backends) != len(models):
        raise ValueError(
            f"{len(backends)} --backend for {len(models)} --model: give one --backend for every model, or one per "
            "--model in the same order."
        )
    for model, backend in zip(models, backends, strict=True):
        if backend != "torch":  # read_metadata names a missing folder, or one that is not a heal_rag model
            checked_export(model, read_metadata(model), backend)
    return ["torch", *backends]


def _model_name(model_path: str | None) -> str:
    """A model's name in a report: its folder (``run/model`` for a folder named ``model``), or the default's name."""
    from pathlib import Path

    if model_path is None or model_path in ("default", "all-MiniLM-L6-v2"):
        return "all-MiniLM-L6-v2"
    path = Path(model_path)
    return f"{path.parent.name}/{path.name}" if path.name == "model" and path.parent.name else path.name


def _compare(args: argparse.Namespace) -> int:
    from heal_rag.evaluation.report import compare_reports
    from heal_rag.outputs import prepare_output_dir

    prepare_output_dir(args.out, overwrite=args.overwrite, inputs=args.compare, what="--out", kind="report")
    out = compare_reports(args.compare, args.out, reference=args.reference, overwrite=args.overwrite)
    print((out / "report.md").read_text(encoding="utf-8").split("## Per level")[0])
    print(f"report: {out / 'report.html'} and {out / 'report.md'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
