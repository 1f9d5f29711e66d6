"""The A/B evaluation behind ``heal-rag eval``: score models on a labelled corpus and write a report.

For each model: queries against the corpus (retrieval metrics of :func:`heal_rag.evaluation.per_query_scores`,
and each model's difference to the first with a paired bootstrap interval) and a leave-one-out 10-NN path
prediction for every document (:mod:`heal_rag.evaluation.classification`). The
report directory holds ``report.md``, ``report.html``, ``metrics.json`` and two plots: ``levels.png`` (per-level
metrics, one bar per model) and ``map.png`` (a 2-D map of the document embeddings per model, coloured by the
top-level label).
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from heal_rag.artifacts import write_json_atomic, write_text_atomic
from heal_rag.data import Corpus
from heal_rag.evaluation.classification import (
    ClassificationReport,
    hierarchical_classification_report,
    knn_predict_level_ids,
)
from heal_rag.evaluation.retrieval import (
    RetrievalReport,
    format_paired,
    paired_difference,
    per_query_scores,
    top_k_indices,
)
from heal_rag.outputs import atomic_directory
from heal_rag.queries import Query


@dataclass(frozen=True)
class ModelEvaluation:
    """What one model (or BM25) scored on a corpus.

    Attributes:
        name: Display name (``untouched``, a model directory's name, ``bm25``).
        retrieval: Retrieval metrics.
        classification: Path prediction metrics (``None`` for a lexical baseline).
        document_embeddings: The normalised document vectors (``None`` for a lexical baseline), for the map.
        retrieval_per_query: Each retrieval metric per query (for paired comparisons between models).
        query_embeddings: The normalised query vectors (``None`` for a lexical baseline), e.g. for reranking.
    """

    name: str
    retrieval: RetrievalReport
    classification: ClassificationReport | None
    document_embeddings: np.ndarray | None
    retrieval_per_query: dict[str, np.ndarray] | None = None
    query_embeddings: np.ndarray | None = None

    def as_dict(self) -> dict[str, Any]:
        """Metrics as plain JSON."""
        return {
            "retrieval": self.retrieval.as_dict(),
            "classification": self.classification.as_dict() if self.classification else None,
        }


@dataclass(frozen=True)
class EvaluationTask:
    """Queries with their gold documents over a labelled corpus."""

    corpus: Corpus
    query_texts: list[str]
    gold: np.ndarray
    level_ids: np.ndarray

    @classmethod
    def build(cls, corpus: Corpus, queries: Sequence[Query] | None = None) -> EvaluationTask:
        """Use ``queries`` (text → document id), or else each titled document's title as its query.

        Raises:
            ValueError: For an unlabelled corpus, or when there is nothing to use as queries.
        """
        if corpus.labels is None:
            raise ValueError(
                "The corpus has no labels: evaluation needs a label path per document. Add 'labels' to the JSONL, "
                "or label it first with `heal-rag cluster`."
            )
        index_of = {doc_id: i for i, doc_id in enumerate(corpus.ids)}
        if queries:
            unknown = [q.document_id for q in queries if q.document_id not in index_of]
            if unknown:
                raise ValueError(f"{len(unknown)} queries refer to unknown document ids, e.g. {unknown[0]!r}.")
            texts = [q.text for q in queries]
            gold = [index_of[q.document_id] for q in queries]
        else:
            titled = [(title, i) for i, title in enumerate(corpus.titles) if title and title.strip()]
            if not titled:
                raise ValueError(
                    "No queries to evaluate: pass a query file ({query, document_id} per line), or give the "
                    "documents titles to use as queries."
                )
            texts, gold = [t for t, _ in titled], [i for _, i in titled]
        return cls(corpus, texts, np.asarray(gold), corpus.labels.level_ids())


def evaluate_embedding_model(
    model: Any,
    task: EvaluationTask,
    name: str,
    *,
    k: int = 10,
    context_k: int = 5,
    knn_k: int = 10,
    batch_size: int = 64,
    show_progress_bar: bool = True,
) -> ModelEvaluation:
    """Embed queries and documents with a SentenceTransformer (or anything with ``encode_query/_document``).

    Example:
        ```python
        from heal_rag.data import read_corpus
        from heal_rag.models import load_sentence_transformer

        task = EvaluationTask.build(read_corpus("corpus.jsonl"))
        result = evaluate_embedding_model(load_sentence_transformer(None), task, "untouched")
        result.retrieval.as_dict()["nDCG@10"]
        ```
    """
    kwargs = {"batch_size": batch_size, "normalize_embeddings": True, "show_progress_bar": show_progress_bar}
    documents = np.asarray(model.encode_document(task.corpus.texts, **kwargs))
    queries = np.asarray(model.encode_query(task.query_texts, **kwargs))
    retrieval, per_query = _score_rankings(top_k_indices(queries, documents, max(k, context_k)), task, k, context_k)
    predicted = knn_predict_level_ids(documents, documents, task.level_ids, k=knn_k, exclude_self=True)
    classification = hierarchical_classification_report(predicted, task.level_ids)
    return ModelEvaluation(name, retrieval, classification, documents, per_query, queries)


def _score_rankings(
    ranked: np.ndarray, task: EvaluationTask, k: int, context_k: int
) -> tuple[RetrievalReport, dict[str, np.ndarray]]:
    """The retrieval report of ``ranked`` and the per-query scores behind it."""
    per_query = per_query_scores(
        ranked, task.gold, task.level_ids[task.gold], task.level_ids, k=k, recall_at=(1, k), context_k=context_k
    )
    return RetrievalReport.from_per_query(per_query, k=k, recall_at=(1, k), context_k=context_k), per_query


def bm25_rankings(documents: Sequence[str], queries: Sequence[str], k: int) -> np.ndarray:
    """The ``k`` best documents per query (``(Q, k)`` indices, best first) with bm25s: Lucene BM25, English stop words.

    Example:
        ```python
        bm25_rankings(["qubits decohere", "prime gaps"], ["prime numbers"], k=1)  # [[1]]
        ```
    """
    try:
        import bm25s
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("The BM25 baseline needs bm25s: pip install 'heal_rag[eval]'") from exc
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(documents), stopwords="en", show_progress=False), show_progress=False)
    tokens = bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
    ranked, _ = retriever.retrieve(tokens, k=min(k, len(documents)), show_progress=False)
    return np.asarray(ranked)


def evaluate_bm25(task: EvaluationTask, *, k: int = 10, context_k: int = 5) -> ModelEvaluation:
    """The lexical baseline: :func:`bm25_rankings` over the corpus."""
    ranked = bm25_rankings(task.corpus.texts, task.query_texts, max(k, context_k))
    return evaluate_ranked(ranked, task, "bm25", k=k, context_k=context_k)


def evaluate_ranked(
    ranked: np.ndarray, task: EvaluationTask, name: str, *, k: int = 10, context_k: int = 5
) -> ModelEvaluation:
    """Score given rankings (``(Q, ≥ max(k, context_k))`` document indices, best first), e.g. a reranker's output.

    Example:
        ```python
        evaluate_ranked(reranked_indices, task, "HEAL + reranker").retrieval.as_dict()["nDCG@10"]
        ```
    """
    retrieval, per_query = _score_rankings(np.asarray(ranked), task, k, context_k)
    return ModelEvaluation(name, retrieval, None, None, per_query)


def write_report(
    evaluations: Sequence[ModelEvaluation],
    task: EvaluationTask,
    out_dir: str | os.PathLike[str],
    *,
    title: str = "heal_rag evaluation",
    map_method: str = "tsne",
    map_points: int = 2000,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write ``report.md``, ``report.html``, ``metrics.json``, ``levels.png`` and ``map.png`` to ``out_dir``.

    The directory is written whole or not at all. It must be new, empty, or an earlier heal_rag report (replaced
    only with ``overwrite=True``); see :mod:`heal_rag.outputs`.

    Raises:
        heal_rag.outputs.OutputPathError: When ``out_dir`` may not be written.

    Returns:
        The report directory.
    """
    from heal_rag.evaluation.plots import plot_embedding_maps, plot_level_metrics

    labels = task.corpus.labels
    assert labels is not None  # EvaluationTask.build checked it
    names_by_id = labels.level_names(0)
    top_names = [names_by_id[i] for i in task.level_ids[:, 0]]
    with atomic_directory(out_dir, overwrite=overwrite, kind="report") as staging:
        plot_level_metrics(evaluations, staging / "levels.png")
        mapped = [e for e in evaluations if e.document_embeddings is not None]
        if mapped:
            plot_embedding_maps(
                mapped, top_names, staging / "map.png", method=map_method, max_points=map_points, seed=seed
            )
        tables = _tables(evaluations)
        summary = (
            f"{len(task.corpus)} documents, {len(task.query_texts)} queries, {labels.depth} levels "
            f"({' → '.join(str(labels.n_labels(level)) for level in range(labels.depth))} labels)"
        )
        write_text_atomic(staging / "report.md", _markdown(title, summary, tables, has_map=bool(mapped)))
        write_text_atomic(staging / "report.html", _html(title, summary, tables, has_map=bool(mapped)))
        write_json_atomic(
            staging / "metrics.json",
            {
                "summary": summary,
                "models": {e.name: e.as_dict() for e in evaluations},
                "minus_reference": paired_differences(evaluations),
            },
        )
    return Path(out_dir)


def paired_differences(evaluations: Sequence[ModelEvaluation]) -> dict[str, dict[str, dict[str, float]]]:
    """Each model minus the first (the reference), per retrieval metric, with a 95 % paired bootstrap interval.

    Returns:
        ``{model: {metric: {"mean", "low", "high", "wins", "losses"}}}`` (see
        :func:`heal_rag.evaluation.paired_difference`); models without per-query scores are left out.
    """
    reference = evaluations[0].retrieval_per_query if evaluations else None
    if reference is None:
        return {}
    return {
        e.name: {m: paired_difference(e.retrieval_per_query[m], reference[m]).as_dict() for m in reference}
        for e in evaluations[1:]
        if e.retrieval_per_query is not None
    }


def _tables(evaluations: Sequence[ModelEvaluation]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(caption, header, rows) for the retrieval and classification tables; the first model is the reference.

    Retrieval differences carry their 95 % paired bootstrap interval over the queries.
    """
    paired = paired_differences(evaluations)
    out = []
    for caption, getter in (
        ("Retrieval", lambda e: e.retrieval.as_dict()),
        ("Path prediction (leave-one-out 10-NN)", lambda e: e.classification.as_dict() if e.classification else {}),
    ):
        rows_by_model = {e.name: getter(e) for e in evaluations}
        metrics = list(dict.fromkeys(m for values in rows_by_model.values() for m in values))
        if not metrics:
            continue
        names = list(rows_by_model)
        header = ["metric", *names]
        if len(names) > 1:
            header += [f"{n} − {names[0]}" for n in names[1:]]
        rows = []
        for metric in metrics:
            values = [rows_by_model[n].get(metric) for n in names]
            cells = [metric] + ["–" if v is None else f"{v:.4f}" for v in values]
            reference = values[0]
            for name, value in zip(names[1:], values[1:], strict=True):
                interval = paired.get(name, {}).get(metric)
                if value is None or reference is None:
                    cells.append("–")
                elif interval is None:
                    cells.append(f"{value - reference:+.4f}")
                else:
                    cells.append(format_paired(interval))
            rows.append(cells)
        out.append((caption, header, rows))
    return out


def _markdown(title: str, summary: str, tables: list[tuple[str, list[str], list[list[str]]]], has_map: bool) -> str:
    lines = [f"# {title}", "", summary, ""]
    lines += [
        "Lower is better for context-miss and off-topic (the hallucination-risk proxies: the gold passage missing "
        "from, and passages of another leaf in, what a generator would see); higher is better for the rest. "
        "A retrieval difference to the reference shows its 95 % paired bootstrap interval over the queries: "
        "when the interval contains 0, the two models are not told apart on this query set.",
        "",
    ]
    for caption, header, rows in tables:
        lines += [f"## {caption}", "", "| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    lines += ["## Per level", "", "![per-level metrics](levels.png)", ""]
    if has_map:
        lines += ["## Document embeddings", "", "![2-D map coloured by top-level label](map.png)", ""]
    return "\n".join(lines)


def _html(title: str, summary: str, tables: list[tuple[str, list[str], list[list[str]]]], has_map: bool) -> str:
    parts = [
        "<!doctype html>",
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}td:first-child{text-align:left}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>",
    ]
    for caption, header, rows in tables:
        parts.append(f"<h2>{html.escape(caption)}</h2><table><tr>")
        parts += [f"<th>{html.escape(h)}</th>" for h in header]
        parts.append("</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    parts.append("<h2>Per level</h2><img src='levels.png' alt='per-level metrics'>")
    if has_map:
        parts.append("<h2>Document embeddings</h2><img src='map.png' alt='2-D map coloured by top-level label'>")
    parts.append("</body></html>")
    return "\n".join(parts)
