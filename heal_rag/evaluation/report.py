"""The A/B evaluation behind ``heal-rag eval``: score models on a labelled corpus and write a report.

For each model: queries against the corpus (retrieval metrics of :func:`heal_rag.evaluation.per_query_scores`,
and each model's difference to the first with a paired bootstrap interval) and a leave-one-out 10-NN path
prediction for every document (:mod:`heal_rag.evaluation.classification`). The
report directory holds ``report.md``, ``report.html``, ``metrics.json`` and two plots: ``levels.png`` (per-level
metrics, one bar per model) and ``map.png`` (a 2-D map of the document embeddings per model, coloured by the
top-level label).
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json
import os
from collections.abc import Mapping, Sequence
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
    """Embed queries and documents with ``model`` and score its retrieval and path prediction.

    ``model`` is a SentenceTransformer (or anything with ``encode_query/_document``), or a
    :class:`~heal_rag.encoder.HEALEncoder` of any backend (``HEALEncoder.load(path, backend="onnx-int8")``).

    Example:
        ```python
        from heal_rag.data import read_corpus
        from heal_rag.models import load_sentence_transformer

        task = EvaluationTask.build(read_corpus("corpus.jsonl"))
        result = evaluate_embedding_model(load_sentence_transformer(None), task, "untouched")
        result.retrieval.as_dict()["nDCG@10"]
        ```
    """
    from heal_rag.encoder import HEALEncoder

    if isinstance(model, HEALEncoder):  # its own batch size; vectors are normalised
        documents = model.embed_documents(task.corpus.texts, show_progress_bar=show_progress_bar)
        queries = model.embed_queries(task.query_texts)
    else:
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
    from heal_rag.evaluation.plots import plot_embedding_maps

    labels = task.corpus.labels
    assert labels is not None  # EvaluationTask.build checked it
    names_by_id = labels.level_names(0)
    top_names = [names_by_id[i] for i in task.level_ids[:, 0]]
    summary = (
        f"{len(task.corpus)} documents, {len(task.query_texts)} queries, {labels.depth} levels "
        f"({' → '.join(str(labels.n_labels(level)) for level in range(labels.depth))} labels)"
    )
    with atomic_directory(out_dir, overwrite=overwrite, kind="report") as staging:
        mapped = [e for e in evaluations if e.document_embeddings is not None]
        if mapped:
            plot_embedding_maps(
                mapped, top_names, staging / "map.png", method=map_method, max_points=map_points, seed=seed
            )
        _write_report_files(staging, evaluations, title, summary, task_fingerprint(task), has_map=bool(mapped))
    return Path(out_dir)


def task_fingerprint(task: EvaluationTask) -> str:
    """SHA-256 of what makes two evaluations comparable query by query: the corpus, queries and gold documents."""
    digest = hashlib.sha256()
    for doc_id, text in zip(task.corpus.ids, task.corpus.texts, strict=True):
        digest.update(f"{doc_id}\0{text}\0".encode())
    for query, gold in zip(task.query_texts, task.gold.tolist(), strict=True):
        digest.update(f"{query}\0{gold}\0".encode())
    return "sha256:" + digest.hexdigest()


def _write_report_files(
    directory: Path, evaluations: Sequence[ModelEvaluation], title: str, summary: str, fingerprint: str, has_map: bool
) -> None:
    """report.md, report.html, levels.png and metrics.json (with every model's per-query scores)."""
    from heal_rag.evaluation.plots import plot_level_metrics

    plot_level_metrics(evaluations, directory / "levels.png")
    tables = _tables(evaluations)
    write_text_atomic(directory / "report.md", _markdown(title, summary, tables, has_map=has_map))
    write_text_atomic(directory / "report.html", _html(title, summary, tables, has_map=has_map))
    write_json_atomic(
        directory / "metrics.json",
        {
            "summary": summary,
            "task_fingerprint": fingerprint,
            "reference": evaluations[0].name if evaluations else None,
            "models": {e.name: e.as_dict() for e in evaluations},
            "minus_reference": paired_differences(evaluations),
            "per_query": {
                e.name: {metric: np.round(values, 6).tolist() for metric, values in e.retrieval_per_query.items()}
                for e in evaluations
                if e.retrieval_per_query is not None
            },
        },
    )


def _report_labels(folders: Sequence[Path]) -> dict[Path, str]:
    """Each report folder's shortest trailing path that no other folder ends in (``report``, else ``b/report``...)."""
    paths = {folder: folder.resolve().parts for folder in folders}
    labels = {}
    for folder, parts in paths.items():
        others = [p for f, p in paths.items() if p != parts]
        n = next((n for n in range(1, len(parts)) if all(p[-n:] != parts[-n:] for p in others)), len(parts))
        labels[folder] = Path(*parts[-n:]).as_posix()
    return labels


def _unique_name(name: str, label: str, taken: Mapping[str, Any]) -> str:
    """``name``, else with its report's label (:func:`_report_labels`), else numbered: the first not in ``taken``."""
    numbered = (f"{name} ({label} #{i})" for i in itertools.count(2))
    return next(s for s in itertools.chain([name, f"{name} ({label})"], numbered) if s not in taken)


def compare_reports(
    report_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    reference: str | None = None,
    title: str = "heal_rag comparison",
    overwrite: bool = False,
) -> Path:
    """One report comparing the models of earlier reports, from their saved per-query scores (nothing re-encoded).

    The reports must come from the same corpus and queries (their task fingerprints must agree). A model that
    appears in several reports with the same scores is taken once; different models with the same name get the
    report's folder name, or as much of its path as tells the reports apart (``b/report`` beside ``a/report``).

    Args:
        report_dirs: Folders written by ``heal-rag eval`` (or :func:`write_report`).
        out_dir: Where the comparison goes (new, empty, or an earlier heal_rag report with ``overwrite=True``).
        reference: The model the others are compared with (default: the first model of the first report).
        title: Report title.
        overwrite: Replace an earlier report at ``out_dir``.

    Raises:
        ValueError: When a folder holds no per-query scores, or the reports were made on different tasks.
    """
    from heal_rag.evaluation.classification import ClassificationReport

    loaded = []
    for folder in report_dirs:
        path = Path(folder) / "metrics.json"
        if not path.is_file():
            raise ValueError(f"{str(folder)!r} holds no metrics.json: give folders written by `heal-rag eval`.")
        payload = json.loads(path.read_text(encoding="utf-8"))
        if "per_query" not in payload:
            raise ValueError(f"{path} has no per-query scores (written by an older heal_rag): re-run the evaluation.")
        loaded.append((Path(folder), payload))
    fingerprints = {payload.get("task_fingerprint") for _, payload in loaded}
    if len(fingerprints) != 1:
        raise ValueError(
            "The reports were made on different corpora or queries, so their scores cannot be compared query by "
            "query: evaluate every model on the same --data and --queries."
        )
    evaluations: dict[str, ModelEvaluation] = {}
    named: dict[str, str] = {}  # shown name -> the name in its report
    labels = _report_labels([folder for folder, _ in loaded])
    for folder, payload in loaded:
        k = int(next(key for key in next(iter(payload["per_query"].values())) if key.startswith("MRR@")).split("@")[1])
        for name, scores in payload["per_query"].items():
            per_query = {metric: np.asarray(values) for metric, values in scores.items()}
            if any(
                named[shown] == name
                and all(np.array_equal(earlier.retrieval_per_query[m], per_query[m]) for m in per_query)
                for shown, earlier in evaluations.items()
            ):
                continue  # the same model, evaluated again
            shown = _unique_name(name, labels[folder], evaluations)
            named[shown] = name
            context_k = int(next(m for m in per_query if m.startswith("context-miss@")).split("@")[1])
            recall_at = tuple(sorted(int(m.split("@")[1]) for m in per_query if m.startswith("Recall@")))
            retrieval = RetrievalReport.from_per_query(per_query, k=k, recall_at=recall_at, context_k=context_k)
            classification = (payload["models"].get(name) or {}).get("classification")
            report = None
            if classification:
                levels = sorted(int(key[5:]) for key in classification if key.startswith("acc/L"))
                report = ClassificationReport(
                    [classification[f"acc/L{level}"] for level in levels],
                    classification["hP"],
                    classification["hR"],
                    classification["hF1"],
                    len(next(iter(per_query.values()))),
                )
            evaluations[shown] = ModelEvaluation(shown, retrieval, report, None, per_query)
    ordered = list(evaluations.values())
    if reference is not None:
        if reference not in evaluations:
            raise ValueError(f"No model {reference!r} in these reports; they hold {list(evaluations)}.")
        ordered = [evaluations[reference]] + [e for e in ordered if e.name != reference]
    summary = loaded[0][1]["summary"] + f"; compared from {len(loaded)} reports"
    with atomic_directory(out_dir, overwrite=overwrite, kind="report") as staging:
        _write_report_files(staging, ordered, title, summary, next(iter(fingerprints)), has_map=False)
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
