"""The main job: fine-tune on the training part of a labelled corpus, compare before/after on the held-out part.

Retrieval task: each held-out document's title is a query; the held-out abstracts are the corpus; the source
abstract is the gold passage. Reported: MRR@10, Recall@1, Recall@10 and hierarchical precision@10 per level.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from heal_rag.artifacts import write_json_atomic
from heal_rag.data import Corpus, demo_corpus_path, hashed_split, read_corpus
from heal_rag.evaluation.retrieval import RetrievalReport, evaluate_retrieval
from heal_rag.labels import LabelPaths
from heal_rag.outputs import prepare_output_dir, write_marker

#: Token limit used by the demo for training and for both evaluations (before and after).
DEMO_MAX_SEQ_LENGTH = 128


@dataclass(frozen=True)
class DemoResult:
    """Before/after reports and where the tuned model and results were written."""

    before: RetrievalReport
    after: RetrievalReport
    model_dir: Path
    results_path: Path
    n_train: int
    n_test: int
    train_seconds: float


def evaluate_model(model: Any, test: Corpus, level_ids: np.ndarray, batch_size: int = 64) -> RetrievalReport:
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


def run_demo(
    data: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str] = "runs/demo",
    base_model: str | None = None,
    test_fraction: float = 0.3,
    show_progress_bar: bool = True,
    **training_overrides: Any,
) -> DemoResult:
    """Fine-tune on a deterministic training split and print a before/after table on the rest.

    Args:
        data: JSONL corpus with titles (default: the bundled arXiv demo corpus). Without labels, a 2-level
            hierarchy is discovered with HNMFk on the training part and held-out texts are projected onto it, and
            training uses :data:`heal_rag.training.DISCOVERED_LABELS_SETTINGS` where ``training_overrides`` is silent.
        output_dir: Where the tuned model (``<output_dir>/model``) and ``results.json`` go: new, empty, or an
            earlier demo run (which is replaced); a directory heal_rag did not write is refused.
        base_model: Base model (default: the embedded all-MiniLM-L6-v2).
        test_fraction: Share of documents held out, chosen by hashed id.
        show_progress_bar: Show progress bars.
        **training_overrides: :class:`heal_rag.HEALTrainingConfig` fields.
    """
    from heal_rag.models import load_sentence_transformer, set_max_seq_length
    from heal_rag.training import DISCOVERED_LABELS_SETTINGS, fine_tune

    output_dir = prepare_output_dir(output_dir, overwrite=True, inputs=[data], what="Demo output directory")
    corpus = read_corpus(data or demo_corpus_path(), require_labels=False)
    train_idx, test_idx = hashed_split(corpus.ids, test_fraction=test_fraction)
    label_names = None
    if corpus.labels is None:
        corpus, label_names = _with_discovered_labels(corpus, train_idx, test_idx)
        training_overrides = {**DISCOVERED_LABELS_SETTINGS, **training_overrides}
    level_ids = corpus.labels.level_ids()
    train, test = corpus.subset(train_idx), corpus.subset(test_idx)
    test_level_ids = level_ids[test_idx]
    output_dir.mkdir(parents=True, exist_ok=True)
    write_marker(output_dir, "demo")
    print(
        f"corpus: {len(corpus)} documents, {corpus.labels.depth} levels "
        f"({' → '.join(str(corpus.labels.n_labels(lv)) for lv in range(corpus.labels.depth))} labels); "
        f"train {len(train)}, held out {len(test)}",
        flush=True,
    )

    # Abstracts average ~180 tokens; 128 keeps the demo well inside 10 minutes on 2 CPU cores.
    training_overrides.setdefault("max_seq_length", DEMO_MAX_SEQ_LENGTH)
    base = load_sentence_transformer(base_model)
    set_max_seq_length(base, training_overrides["max_seq_length"])
    before = evaluate_model(base, test, test_level_ids)
    del base

    started = time.perf_counter()
    result = fine_tune(
        train.texts,
        train.labels,
        ids=train.ids,
        titles=train.titles,
        output_dir=output_dir / "model",
        overwrite=True,
        base_model=base_model,
        label_names=label_names,
        show_progress_bar=show_progress_bar,
        **training_overrides,
    )
    train_seconds = time.perf_counter() - started
    after = evaluate_model(result.model, test, test_level_ids)

    print()
    print(format_table(before, after, title=f"Held-out title → abstract retrieval ({len(test)} queries)"))
    print(f"\nfine-tune: {result.global_steps} steps in {train_seconds:.0f} s; model saved to {result.output_dir}")
    print(result.describe_blend())
    results_path = output_dir / "results.json"
    write_json_atomic(
        results_path,
        {
            "data": str(data or demo_corpus_path()),
            "n_train": len(train),
            "n_test": len(test),
            "train_seconds": train_seconds,
            "global_steps": result.global_steps,
            "before": before.as_dict(),
            "after": after.as_dict(),
            "training": result.metadata["training"],
        },
    )
    return DemoResult(before, after, result.output_dir, results_path, len(train), len(test), train_seconds)


def _with_discovered_labels(
    corpus: Corpus, train_idx: list[int], test_idx: list[int]
) -> tuple[Corpus, dict[str, str]]:
    """Label an unlabelled corpus with HNMFk fitted on its training part; held-out texts are projected."""
    from heal_rag.hierarchy.discover import discover_labels

    print("The corpus has no labels: discovering a hierarchy with HNMFk on the training part", flush=True)
    train_texts = [corpus.texts[i] for i in train_idx]
    hnmfk, train_labels = discover_labels(train_texts, max_depth=2)
    test_labels = hnmfk.transform([corpus.texts[i] for i in test_idx])
    print(hnmfk.format_tree(max_children=8), flush=True)
    paths: list[tuple[str, ...]] = [()] * len(corpus)
    weights: list[tuple[float, ...]] = [()] * len(corpus)
    for indices, labels in ((train_idx, train_labels), (test_idx, test_labels)):
        for position, index in enumerate(indices):
            paths[index] = labels.paths[position]
            weights[index] = labels.weights[position]
    labelled = Corpus(corpus.ids, corpus.texts, corpus.titles, LabelPaths(paths, weights=weights))
    return labelled, hnmfk.node_names()


def format_table(before: RetrievalReport, after: RetrievalReport, title: str = "") -> str:
    """Markdown table: metric | untouched | HEAL | change."""
    lines = [title] if title else []
    lines += ["| metric | untouched | HEAL | change |", "|---|---:|---:|---:|"]
    after_values = after.as_dict()
    for name, value in before.as_dict().items():
        lines.append(f"| {name} | {value:.4f} | {after_values[name]:.4f} | {after_values[name] - value:+.4f} |")
    return "\n".join(lines)


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``results.json`` written by :func:`run_demo`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
