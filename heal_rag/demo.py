"""The main job: the whole product on a corpus built where it runs, from the folder to answers with citations.

``heal-rag demo`` (and ``make demo``):

1. builds the API documentation of the installed numpy, scipy and scikit-learn as a folder tree (see
   :mod:`heal_rag.api_docs`), or takes ``--data DIR|FILE``;
2. reads and chunks it as ``heal-rag train --data DIR`` does, and keeps a deterministic 30 % of the documents out;
3. tunes the embedded all-MiniLM-L6-v2 on the chunks of the rest;
4. indexes every chunk in a local Chroma database;
5. evaluates, on the held-out documents' queries searched in the whole index, the untouched model, the tuned model
   and the tuned model with the hierarchy reranker, with paired intervals, and writes ``heal-rag eval``'s report;
6. answers three example questions with the chatbot, citing each source with its hierarchy path.

Queries are the held-out documents' first headings (for the API docs: the docstring's summary line, which is not
part of the passage); the gold passage is the document's first chunk.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from heal_rag.artifacts import write_json_atomic
from heal_rag.chunking import CHUNK_INDEX_KEY, DOCUMENT_ID_KEY
from heal_rag.data import Corpus, hashed_split
from heal_rag.outputs import prepare_output_dir, write_marker
from heal_rag.queries import Query

#: Token limit of the demo's chunks and training (the model reads 256; 128 keeps the demo near a quarter of an hour).
DEMO_MAX_SEQ_LENGTH = 128
#: The demo's size, chosen so that it finishes in about a quarter of an hour on 2 slow CPU cores (~25 chunks/s to
#: encode, ~20 s per training step with the mined hard negatives): a hashed sample of the documents, their first
#: chunks (signature, description, parameters), and one epoch. ``heal-rag train --data runs/demo/api_docs`` takes
#: the whole tree.
DEMO_DOCUMENTS = 800
DEMO_CHUNKS_PER_DOCUMENT = 2
DEMO_EPOCHS = 1.0
#: Questions the demo's chatbot answers over the API documentation.
DEMO_QUESTIONS = (
    "How do I export a decision tree so that Graphviz can draw it?",
    "How can I compute the eigenvalues of a symmetric matrix?",
    "Which function finds the roots of a polynomial?",
)
#: Candidates the reranker reorders (retrieval depth).
RERANK_CANDIDATES = 20
#: The metrics of the demo's table, the ones a RAG engineer reads first (lower is better for the first two).
HEADLINE_METRICS = ("context-miss@5", "off-topic@5", "nDCG@10", "MRR@10")


@dataclass
class StageTimer:
    """Wall time of each named stage, in order."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` and say what is happening."""
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes:
        model_dir: The tuned model.
        report_dir: ``heal-rag eval``'s report (``report.html``, ``report.md``, plots, per-query scores).
        db_path: The Chroma database holding every chunk (collection :data:`DEMO_COLLECTION`).
        results_path: ``results.json``: metrics, paired differences, stage times, answers.
        metrics: ``{system: {metric: value}}`` for the untouched model, HEAL and HEAL + reranker.
        differences: ``{comparison: {metric: {mean, low, high, ...}}}`` (paired 95 % bootstrap intervals).
        stage_seconds: Wall time of each stage.
        answers: ``(question, answer, citations)`` of the chatbot.
    """

    model_dir: Path
    report_dir: Path
    db_path: Path
    results_path: Path
    metrics: dict[str, dict[str, float]]
    differences: dict[str, dict[str, dict[str, float]]]
    stage_seconds: dict[str, float]
    answers: list[tuple[str, str, str]]


#: Collection name of the demo's index.
DEMO_COLLECTION = "heal-demo"


def run_demo(
    data: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str] = "runs/demo",
    base_model: str | None = None,
    test_fraction: float = 0.3,
    documents: int | None = DEMO_DOCUMENTS,
    chunks_per_document: int | None = DEMO_CHUNKS_PER_DOCUMENT,
    questions: Sequence[str] | None = None,
    libraries: tuple[str, ...] | None = None,
    show_progress_bar: bool = True,
    **training_overrides: Any,
) -> DemoResult:
    """Run the whole product end to end and print one short table (see the module docstring).

    Args:
        data: A folder of documents or a JSONL corpus; ``None``: the API documentation of the installed numpy, scipy
            and scikit-learn, built into ``<output_dir>/api_docs``. Without labels, a hierarchy is discovered.
        output_dir: New, empty, or an earlier demo run (replaced); a directory heal_rag did not write is refused.
        base_model: Base model (default: the embedded all-MiniLM-L6-v2).
        test_fraction: Share of documents held out (by hashed id), in ``(0, 1)``.
        documents: Use at most this many documents, a deterministic sample by hashed id (``None``: all).
        chunks_per_document: Keep the first chunks of each document only (``None``: all).
        questions: Questions for the chatbot (default: :data:`DEMO_QUESTIONS` for the API docs, else three
            held-out queries).
        libraries: Libraries whose API docs make the default corpus (default:
            :data:`heal_rag.api_docs.DEFAULT_LIBRARIES`; a subpackage such as ``"scipy.cluster"`` makes a small one).
        show_progress_bar: Progress bars.
        **training_overrides: :class:`heal_rag.HEALTrainingConfig` fields.

    Returns:
        A :class:`DemoResult`.
    """
    from heal_rag.training import HEALTrainingConfig

    HEALTrainingConfig(**training_overrides)  # every setting checked before any work
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}.")
    out = prepare_output_dir(
        output_dir, overwrite=True, inputs=[data, base_model], what="Demo output directory", kind="demo"
    )
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "demo")
    timer = StageTimer()
    with timer.stage("corpus"):
        source, corpus_info = _corpus_source(data, out, libraries)
    with timer.stage("read and chunk"):
        chunks, train_ids, label_names, overrides = _read_and_chunk(
            source, base_model, documents, chunks_per_document, test_fraction, show_progress_bar
        )
        training_overrides = {**overrides, **training_overrides}
        task = _evaluation_task(chunks, train_ids)
        print(f"{len(chunks)} chunks; {len(task.query_texts)} held-out queries", flush=True)
    return _tune_evaluate_index_answer(
        chunks, train_ids, task, label_names, out, base_model, questions, corpus_info, timer, show_progress_bar,
        training_overrides,
    )  # fmt: skip


def _corpus_source(
    data: str | os.PathLike[str] | None, out: Path, libraries: tuple[str, ...] | None
) -> tuple[Path, dict[str, Any]]:
    """The folder or file to read, and what to say about it."""
    if data is not None:
        return Path(data), {"data": str(data)}
    from heal_rag.api_docs import DEFAULT_LIBRARIES, build_api_docs

    docs = build_api_docs(out / "api_docs", libraries=libraries or DEFAULT_LIBRARIES, overwrite=True)
    print(docs.describe(), flush=True)
    return docs.root, {
        "data": "api_docs",
        "versions": docs.versions,
        "fingerprint": docs.fingerprint,
        "objects": docs.n_objects,
        "folders": docs.n_folders,
    }


def _read_and_chunk(
    source: Path,
    base_model: str | None,
    max_documents: int | None,
    chunks_per_document: int | None,
    test_fraction: float,
    progress: bool,
) -> tuple[Corpus, set[str], dict[str, str] | None, dict[str, Any]]:
    """Chunks of every document, the ids of the training chunks, discovered label names and their settings."""
    from heal_rag.chunking import ChunkingConfig, chunk_documents
    from heal_rag.documents import discover_document_labels, load_documents
    from heal_rag.models import load_sentence_transformer, set_max_seq_length
    from heal_rag.training import DEFAULT_QUERY_GENERATOR, measured_settings, only_key_sentence_queries

    docs, report = load_documents(source, show_progress=progress)
    if report is not None:
        print(report.summary(), flush=True)
    if max_documents is not None and len(docs) > max_documents:
        order = sorted(range(len(docs)), key=lambda i: hashlib.sha1(f"heal_rag-demo:{docs[i].id}".encode()).digest())
        docs = [docs[i] for i in sorted(order[:max_documents])]
        print(f"the demo uses a hashed sample of {len(docs)} documents (--documents)", flush=True)
    label_names = None
    if all(d.path is None for d in docs):
        print("The documents have no label paths: discovering a hierarchy with HNMFk", flush=True)
        docs, label_names = discover_document_labels(docs, show_progress=progress)
    model = load_sentence_transformer(base_model)
    set_max_seq_length(model, DEMO_MAX_SEQ_LENGTH)
    chunking = ChunkingConfig().resolved(model)
    chunks = chunk_documents(docs, model, chunk_size=chunking.chunk_size, chunk_overlap=chunking.chunk_overlap,
                             show_progress=progress)  # fmt: skip
    if chunks_per_document is not None:
        metadata = chunks.metadata or []
        chunks = chunks.subset([i for i, m in enumerate(metadata) if m[CHUNK_INDEX_KEY] < chunks_per_document])
    documents = list(dict.fromkeys(m[DOCUMENT_ID_KEY] for m in chunks.metadata or []))
    train_index, _ = hashed_split(documents, test_fraction=test_fraction)
    train_documents = {documents[i] for i in train_index}
    train_ids = {
        i for i, m in zip(chunks.ids, chunks.metadata or [], strict=True) if m[DOCUMENT_ID_KEY] in train_documents
    }
    if len(train_documents) < 2:
        raise ValueError(
            f"test_fraction {test_fraction:g} leaves {len(train_documents)} of {len(documents)} documents to train "
            "on; lower it (e.g. 0.3) or give more documents."
        )
    train_titles = [title for i, title in zip(chunks.ids, chunks.titles, strict=True) if i in train_ids]
    overrides = measured_settings(
        {"training_record": {"chunking": chunking.as_dict(), "documents": len(docs)}},
        discovered_labels=label_names is not None,
        key_sentence_queries=only_key_sentence_queries(train_titles, None, DEFAULT_QUERY_GENERATOR),
        heading_queries=True,  # the demo's queries are its chunks' headings and key sentences
    )
    return chunks, train_ids, label_names, overrides


def _evaluation_task(chunks: Corpus, train_ids: set[str]) -> Any:
    """Held-out queries (the first heading of each held-out document, else its key sentence) → its first chunk."""
    from heal_rag.evaluation.report import EvaluationTask
    from heal_rag.queries import KeySentenceQueryGenerator

    first_chunks = [
        i for i, (chunk_id, m) in enumerate(zip(chunks.ids, chunks.metadata or [], strict=True))
        if chunk_id not in train_ids and m[CHUNK_INDEX_KEY] == 0
    ]  # fmt: skip
    texts = KeySentenceQueryGenerator()(
        [chunks.texts[i] for i in first_chunks], [chunks.titles[i] for i in first_chunks]
    )
    queries = [Query(text, chunks.ids[i]) for i, text in zip(first_chunks, texts, strict=True) if text]
    if not queries:
        raise ValueError("No held-out documents to evaluate on: give more documents or a larger test_fraction.")
    return EvaluationTask.build(chunks, queries)


def _tune_evaluate_index_answer(
    chunks: Corpus,
    train_ids: set[str],
    task: Any,
    label_names: dict[str, str] | None,
    out: Path,
    base_model: str | None,
    questions: Sequence[str] | None,
    corpus_info: dict[str, Any],
    timer: StageTimer,
    progress: bool,
    training_overrides: dict[str, Any],
) -> DemoResult:
    from heal_rag.chroma import build_index, open_collection
    from heal_rag.encoder import HEALEncoder
    from heal_rag.evaluation.report import evaluate_embedding_model, write_report
    from heal_rag.models import load_sentence_transformer
    from heal_rag.training import fine_tune

    with timer.stage("untouched model"):
        base = load_sentence_transformer(base_model)
        untouched = evaluate_embedding_model(base, task, "untouched", show_progress_bar=progress)
        del base
    with timer.stage("fine-tune"):
        train = chunks.subset([i for i, chunk_id in enumerate(chunks.ids) if chunk_id in train_ids])
        training_overrides.setdefault("max_seq_length", DEMO_MAX_SEQ_LENGTH)
        training_overrides.setdefault("epochs", DEMO_EPOCHS)
        result = fine_tune(
            train.texts,
            train.labels,
            ids=train.ids,
            titles=train.titles,
            source_ids=[m[DOCUMENT_ID_KEY] for m in train.metadata or []],
            label_names=label_names,
            output_dir=out / "model",
            overwrite=True,
            base_model=base_model,
            show_progress_bar=progress,
            **training_overrides,
        )
        print(result.describe_blend(), flush=True)
    with timer.stage("tuned model"):
        encoder = HEALEncoder.load(result.output_dir)
        tuned = evaluate_embedding_model(encoder.model, task, "HEAL", show_progress_bar=progress)
    with timer.stage("reranker"):
        reranked = _rerank_evaluation(encoder, task, tuned)
    with timer.stage("index"):
        build_index(encoder, chunks, out / "chroma", DEMO_COLLECTION, rebuild=True, show_progress=progress,
                    embeddings=tuned.document_embeddings)  # fmt: skip
    with timer.stage("report"):
        report_dir = write_report([untouched, tuned, reranked], task, out / "report", title="heal_rag demo",
                                  map_method="pca", overwrite=True)  # fmt: skip
    with timer.stage("answers"):
        answers = _answer(encoder, open_collection(out / "chroma", DEMO_COLLECTION), questions, corpus_info, task)
    return _finish(out, result, untouched, tuned, reranked, report_dir, answers, corpus_info, timer, len(chunks))


def _rerank_evaluation(encoder: Any, task: Any, tuned: Any) -> Any:
    """HEAL retrieval of :data:`RERANK_CANDIDATES` chunks, reranked by the hierarchy scorer, scored as a system."""
    from heal_rag.evaluation.report import evaluate_ranked
    from heal_rag.evaluation.retrieval import top_k_indices
    from heal_rag.rerank import HierarchyScorer

    scorer = HierarchyScorer(encoder)
    documents, queries = tuned.document_embeddings, tuned.query_embeddings
    # held-out documents may sit in folders training never saw: the scorer predicts those, as it would in the index
    paths = [p if min(scorer.tree.ids_for_path(p)) >= 0 else None for p in task.corpus.labels.paths]
    candidates = top_k_indices(queries, documents, RERANK_CANDIDATES)
    ranked = np.empty_like(candidates)
    for row, (query, picked) in enumerate(zip(task.query_texts, candidates, strict=True)):
        results = scorer.rerank(
            query,
            [task.corpus.texts[i] for i in picked],
            paths=[paths[i] for i in picked],
            similarities=(documents[picked] @ queries[row]).tolist(),
            query_embedding=queries[row],
        )
        ranked[row] = picked[[r.index for r in results]]
    return evaluate_ranked(ranked, task, "HEAL + reranker")


def _answer(
    encoder: Any, collection: Any, questions: Sequence[str] | None, corpus_info: dict[str, Any], task: Any
) -> list[tuple[str, str, str]]:
    from heal_rag.chatbot import Chatbot, citations

    if questions is None:
        questions = DEMO_QUESTIONS if corpus_info.get("data") == "api_docs" else task.query_texts[:3]
    bot = Chatbot(encoder, collection)
    answers = []
    for question in questions:
        answer, sources = bot.ask(question)
        answers.append((question, answer, citations(sources)))
        print(f"\nQ: {question}\nA: {answer}\n{citations(sources)}", flush=True)
    return answers


def _finish(
    out: Path,
    result: Any,
    untouched: Any,
    tuned: Any,
    reranked: Any,
    report_dir: Path,
    answers: list[tuple[str, str, str]],
    corpus_info: dict[str, Any],
    timer: StageTimer,
    n_chunks: int,
) -> DemoResult:
    from heal_rag.evaluation.retrieval import paired_difference

    systems = {"untouched": untouched, "HEAL": tuned, "HEAL + reranker": reranked}
    metrics = {name: evaluation.retrieval.as_dict() for name, evaluation in systems.items()}
    comparisons = {"HEAL - untouched": (tuned, untouched), "HEAL + reranker - HEAL": (reranked, tuned)}
    differences = {
        name: {
            metric: paired_difference(a.retrieval_per_query[metric], b.retrieval_per_query[metric]).as_dict()
            for metric in HEADLINE_METRICS
        }
        for name, (a, b) in comparisons.items()
    }
    print()
    print(format_table(metrics, differences, n_queries=untouched.retrieval.n_queries, n_chunks=n_chunks))
    print("\nstage times: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timer.seconds.items()))
    print(f"total {sum(timer.seconds.values()):.0f} s; report: {report_dir / 'report.html'}")
    results_path = out / "results.json"
    write_json_atomic(
        results_path,
        {
            "corpus": corpus_info,
            "chunks": n_chunks,
            "queries": untouched.retrieval.n_queries,
            "metrics": metrics,
            "differences": differences,
            "stage_seconds": timer.seconds,
            "training": result.metadata["training"],
            "answers": [{"question": q, "answer": a, "citations": c} for q, a, c in answers],
        },
    )
    return DemoResult(
        result.output_dir, report_dir, out / "chroma", results_path, metrics, differences, timer.seconds, answers
    )


def format_table(
    metrics: dict[str, dict[str, float]],
    differences: dict[str, dict[str, dict[str, float]]],
    n_queries: int,
    n_chunks: int,
) -> str:
    """The demo's Markdown table: each headline metric for the three systems, with paired 95 % intervals."""
    from heal_rag.evaluation.retrieval import format_paired

    lines = [
        f"Held-out queries searched in all {n_chunks} chunks ({n_queries} queries; lower is better for the first two)",
        "| metric | untouched | HEAL | HEAL − untouched | HEAL + reranker | reranker − HEAL |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for metric in HEADLINE_METRICS:
        lines.append(
            f"| {metric} | {metrics['untouched'][metric]:.4f} | {metrics['HEAL'][metric]:.4f} | "
            f"{format_paired(differences['HEAL - untouched'][metric])} | {metrics['HEAL + reranker'][metric]:.4f} | "
            f"{format_paired(differences['HEAL + reranker - HEAL'][metric])} |"
        )
    return "\n".join(lines)
