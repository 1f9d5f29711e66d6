"""Reading corpora and queries from JSONL, and deterministic train/test splits."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heal_rag._validation import check_int, check_unique_ids
from heal_rag.labels import LabelPathError, LabelPaths, validate_path
from heal_rag.queries import Query


class CorpusFormatError(ValueError):
    """Raised when a corpus or query file is malformed; the message names the file and line."""


#: Record fields of a JSONL corpus that are not metadata.
_RECORD_FIELDS = {"id", "text", "labels", "title", "metadata"}


@dataclass(frozen=True)
class Corpus:
    """Documents with ids, optional titles, optional label paths and optional metadata.

    Attributes:
        ids: Unique document ids (checked when the corpus is built).
        texts: Document texts.
        titles: A title per document, or ``None``.
        labels: Label paths, or ``None`` for an unlabelled corpus.
        metadata: A metadata mapping per document (source, page, ...), or ``None``; vector stores keep it.

    Raises:
        ValueError: When the lists differ in length or an id repeats (the first duplicate is named).
    """

    ids: list[str]
    texts: list[str]
    titles: list[str | None]
    labels: LabelPaths | None = None
    metadata: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        lengths = {"texts": len(self.texts), "titles": len(self.titles)}
        if self.labels is not None:
            lengths["labels"] = len(self.labels)
        if self.metadata is not None:
            lengths["metadata"] = len(self.metadata)
        wrong = {name: length for name, length in lengths.items() if length != n}
        if wrong:
            raise ValueError(f"A corpus of {n} ids has {wrong}; give one of each per document.")
        check_unique_ids(self.ids, "document ids")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int]) -> Corpus:
        """The documents at ``indices``, in that order."""
        return Corpus(
            ids=[self.ids[i] for i in indices],
            texts=[self.texts[i] for i in indices],
            titles=[self.titles[i] for i in indices],
            labels=None if self.labels is None else self.labels.subset(indices),
            metadata=None if self.metadata is None else [self.metadata[i] for i in indices],
        )


def read_corpus(path: str | os.PathLike[str], require_labels: bool = True) -> Corpus:
    """Read a JSONL corpus of records ``{"id", "text", "labels"[, "title"][, "metadata"]}``.

    Any other field of a record (``"source"``, ``"url"``, ...) is kept in the document's metadata, together with the
    ``"metadata"`` object when there is one.

    Args:
        path: The JSONL file.
        require_labels: Fail if a record has no ``labels``. With ``False``, a corpus where no record has labels
            is returned with ``labels=None`` (mixing labelled and unlabelled records is an error either way).

    Raises:
        CorpusFormatError: With the file, line number and what to fix.
    """
    path = _corpus_file(path)
    records = list(_documents(path))
    if not records:
        raise CorpusFormatError(f"{path}: the corpus has no records.")
    return _corpus_of(records, path, require_labels, where=str(path))


def iter_corpus(
    path: str | os.PathLike[str], batch_size: int = 1024, require_labels: bool = False
) -> Iterator[Corpus]:
    """Read a JSONL corpus (the format of :func:`read_corpus`) in batches, never holding the whole file.

    Each batch is checked as it is read: ids must be unique across the whole file (only the ids are kept), and a
    file must not mix labelled and unlabelled records. For indexing corpora that do not fit in memory at once
    (:func:`heal_rag.chroma.build_index` takes these batches).

    Args:
        path: The JSONL file.
        batch_size: Records per batch (>= 1).
        require_labels: Fail on a record without ``labels``.

    Yields:
        :class:`Corpus` batches of up to ``batch_size`` documents, in file order.

    Raises:
        CorpusFormatError: With the file, line number and what to fix, when the batch holding it is read.
    """
    check_int("batch_size", batch_size, minimum=1)
    path = _corpus_file(path)
    labelled: bool | None = None
    batch: list[_Document] = []
    first_line = 1
    empty = True
    for document in _documents(path):
        batch.append(document)
        if len(batch) == batch_size:
            corpus = _corpus_of(batch, path, require_labels, where=f"{path} (records from line {first_line})")
            labelled = _check_consistent_labels(path, labelled, corpus)
            yield corpus
            empty = False
            first_line = document.line + 1
            batch = []
    if batch:
        corpus = _corpus_of(batch, path, require_labels, where=f"{path} (records from line {first_line})")
        _check_consistent_labels(path, labelled, corpus)
        yield corpus
    elif empty:
        raise CorpusFormatError(f"{path}: the corpus has no records.")


def _check_consistent_labels(path: Path, labelled: bool | None, corpus: Corpus) -> bool:
    now = corpus.labels is not None
    if labelled is not None and labelled != now:
        raise CorpusFormatError(
            f"{path}: some records have 'labels' and others do not. Give every record a label path, or none."
        )
    return now


@dataclass(frozen=True)
class _Document:
    line: int
    doc_id: str
    text: str
    title: str | None
    labels: list[str] | None
    metadata: dict[str, Any]


def _corpus_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.is_dir():
        raise CorpusFormatError(
            f"{str(path)!r} is a folder; this takes a JSONL corpus file ({{id, text, labels}} per line). "
            "`heal-rag train` and `heal-rag index` read folders of documents."
        )
    if not path.is_file():
        raise CorpusFormatError(
            f"Corpus file {str(path)!r} does not exist: give a JSONL corpus file (`heal-rag train` and `heal-rag "
            "index` also take a folder of documents)."
        )
    return path


def _documents(path: Path) -> Iterator[_Document]:
    """The file's records, each checked (id present and unique, text non-empty, metadata an object)."""
    seen: set[str] = set()
    for where, record in _json_records(path):  # where: "file:line"
        doc_id = record.get("id")
        text = record.get("text")
        if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
            raise CorpusFormatError(f"{where}: missing 'id'.")
        if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
            raise CorpusFormatError(f"{where}: 'id' must be a string or an integer, got {type(doc_id).__name__}.")
        doc_id = str(doc_id)
        if doc_id in seen:
            raise CorpusFormatError(f"{where}: duplicate id {doc_id!r}; ids must be unique.")
        seen.add(doc_id)
        if not isinstance(text, str) or not text.strip():
            raise CorpusFormatError(f"{where}: 'text' must be a non-empty string.")
        labels = record.get("labels")
        if isinstance(labels, str):
            labels = [labels]
        title = record.get("title")
        if title is not None and not isinstance(title, str):
            raise CorpusFormatError(f"{where}: 'title' must be a string, got {type(title).__name__}.")
        extra = record.get("metadata") or {}
        if not isinstance(extra, dict):
            raise CorpusFormatError(f"{where}: 'metadata' must be a JSON object.")
        metadata = {**{k: v for k, v in record.items() if k not in _RECORD_FIELDS}, **extra}
        line = int(where.rsplit(":", 1)[1])
        yield _Document(line, doc_id, text, str(title) if title else None, labels, metadata)


def _corpus_of(documents: list[_Document], path: Path, require_labels: bool, where: str) -> Corpus:
    paths = [d.labels for d in documents if d.labels is not None]
    unlabelled = len(documents) - len(paths)
    if unlabelled and (require_labels or paths):
        first = next(d for d in documents if d.labels is None)
        raise CorpusFormatError(
            f"{where}: {unlabelled} of {len(documents)} records have no 'labels' (first: line {first.line}, id "
            f"{first.doc_id!r}). Give every record a label path, "
            'e.g. "labels": ["Physics", "Optics"]' + ("." if paths else ", or cluster the corpus first.")
        )
    for document in documents if paths else ():  # each path checked with its line, before they are combined
        try:
            validate_path(document.line, document.labels)
        except LabelPathError as exc:
            message = str(exc).replace(f"Label path {document.line} ", "'labels' ", 1)
            raise CorpusFormatError(f"{path}:{document.line} (id {document.doc_id!r}): {message}") from None
    try:
        label_paths = LabelPaths(paths) if paths else None
    except LabelPathError as exc:
        raise CorpusFormatError(f"{path}: {exc}") from None
    metadata = [d.metadata for d in documents]
    return Corpus(
        ids=[d.doc_id for d in documents],
        texts=[d.text for d in documents],
        titles=[d.title for d in documents],
        labels=label_paths,
        metadata=metadata if any(metadata) else None,
    )


def read_queries(path: str | os.PathLike[str], known_ids: Sequence[str] | None = None) -> list[Query]:
    """Read queries from JSONL records ``{"query": str, "document_id": str}`` (``text``/``id`` also accepted).

    Raises:
        CorpusFormatError: For malformed lines or queries whose document id is not in ``known_ids``.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusFormatError(f"Query file {str(path)!r} does not exist.")
    known = set(known_ids) if known_ids is not None else None
    queries = []
    for where, record in _json_records(path):
        text = record.get("query", record.get("text"))
        doc_id = record.get("document_id", record.get("id"))
        if not isinstance(text, str) or not text.strip() or doc_id is None:
            raise CorpusFormatError(f"{where}: each query needs 'query' (text) and 'document_id'.")
        if known is not None and str(doc_id) not in known:
            raise CorpusFormatError(f"{where}: document_id {doc_id!r} is not in the corpus.")
        queries.append(Query(text=text, document_id=str(doc_id)))
    if not queries:
        raise CorpusFormatError(f"{path}: the query file holds no queries.")
    return queries


def _json_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("file:line", record)`` for each non-blank line of a UTF-8 JSONL file of objects."""
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            where = f"{path}:{line_no}"
            try:
                line = raw.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise CorpusFormatError(
                    f"{where}: not UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1}). Save the file as "
                    "UTF-8, e.g. `iconv -f latin1 -t utf-8 in.jsonl > out.jsonl`."
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusFormatError(f"{where}: not valid JSON ({exc.msg}).") from None
            if not isinstance(record, dict):
                raise CorpusFormatError(f"{where}: each line must be a JSON object.")
            yield where, record


def hashed_split(
    ids: Sequence[str], test_fraction: float = 0.3, salt: str = "heal_rag"
) -> tuple[list[int], list[int]]:
    """Deterministic train/test split by hashed id: the same id always lands on the same side.

    Args:
        ids: Document ids.
        test_fraction: Expected share of test documents, in ``(0, 1)``.
        salt: Changes the split while keeping it deterministic.

    Returns:
        ``(train_indices, test_indices)``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    train, test = [], []
    for index, doc_id in enumerate(ids):
        digest = hashlib.sha1(f"{salt}:{doc_id}".encode()).digest()
        share = int.from_bytes(digest[:8], "big") / 2**64
        (test if share < test_fraction else train).append(index)
    return train, test
