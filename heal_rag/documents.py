"""From the user's own documents to a tuned model and an index of the same chunks.

One path for every source: a folder tree, a JSONL corpus, LangChain ``Document`` objects or LlamaIndex
documents/nodes are read (:mod:`heal_rag.sources`), cut into chunks that fit the model (:mod:`heal_rag.chunking`),
labelled (the folders, the user's metadata, or a hierarchy discovered with HNMFk for a flat source), given training
queries (the heading above a chunk, else its key sentence, or questions from an LLM) and tuned with HEAL, where the
source document is one more, finest level. The chunking settings are saved with the model, so
:func:`index_documents` later cuts exactly the chunks the model was tuned on, with the same ids.

Example:
    ```python
    from heal_rag.documents import fine_tune_documents, index_documents

    result = fine_tune_documents("manuals/", output_dir="models/manuals")       # folders are the label path
    index_documents("models/manuals", "manuals/", db_path="chroma_db", collection_name="manuals")
    ```
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from heal_rag.chunking import DOCUMENT_ID_KEY, ChunkingConfig, chunk_documents
from heal_rag.data import Corpus, read_corpus
from heal_rag.queries import QueryGenerator
from heal_rag.sources import ReadReport, SourceDocument, from_langchain, from_llamaindex, read_directory
from heal_rag.sources.frameworks import PathFrom
from heal_rag.training import (
    DEFAULT_QUERY_GENERATOR,
    FineTuneResult,
    fine_tune,
    measured_settings,
    only_generated_queries,
    only_key_sentence_queries,
)

DocumentsInput = str | os.PathLike[str] | Sequence[Any]


@dataclass(frozen=True)
class DocumentsFineTuneResult(FineTuneResult):
    """What :func:`fine_tune_documents` returns: :class:`~heal_rag.training.FineTuneResult` plus the chunks.

    Attributes:
        chunks: The chunks the model was tuned on (ids ``"<document id>#<n>"``, paths, metadata); pass them to
            :func:`heal_rag.chroma.build_index`, or to ``heal_rag.langchain.to_documents`` /
            ``heal_rag.llamaindex.to_nodes`` for your own vector store.
        read_report: What a folder read found (``None`` for other sources).
    """

    chunks: Corpus | None = None
    read_report: ReadReport | None = None


def load_documents(
    data: DocumentsInput,
    *,
    path_key: PathFrom = None,
    root: str | os.PathLike[str] | None = None,
    max_depth: int | None = None,
    show_progress: bool = True,
) -> tuple[list[SourceDocument], ReadReport | None]:
    """Read documents from a folder, a JSONL corpus, LangChain documents or LlamaIndex documents/nodes.

    Args:
        data: A folder (the folders below it are the label path), a ``.jsonl`` corpus (``labels`` are the path), a
            sequence of LangChain ``Document`` objects, LlamaIndex documents/nodes, or :class:`SourceDocument`.
        path_key: For framework documents, where the label path is (see :func:`heal_rag.sources.path_for`).
        root: For framework documents, the folder their ``file_path``/``source`` is relative to.
        max_depth: Keep at most this many levels of each path.
        show_progress: Progress bars.

    Returns:
        The documents, and the folder read's report (``None`` for other sources).

    Raises:
        FileNotFoundError: For a path that does not exist.
        ValueError: For an empty source, or documents of which only some have a label path.
    """
    if isinstance(data, (str, os.PathLike)):
        path = Path(data).expanduser()
        if path.is_dir():
            report = read_directory(path, max_depth=max_depth, show_progress=show_progress)
            return report.documents, report
        if not path.exists():
            raise FileNotFoundError(f"{str(data)!r} does not exist: give a folder or a JSONL corpus.")
        corpus = read_corpus(path, require_labels=False)
        return _from_corpus(corpus, max_depth), None
    items = list(data)
    if not items:
        raise ValueError("No documents given.")
    first = items[0]
    if all(isinstance(item, SourceDocument) for item in items):
        return items, None
    if hasattr(first, "page_content"):
        return from_langchain(items, path_key=path_key, root=root, max_depth=max_depth), None
    if hasattr(first, "get_content") or hasattr(getattr(first, "node", None), "get_content"):
        return from_llamaindex(items, path_key=path_key, root=root, max_depth=max_depth), None
    raise TypeError(
        f"Cannot read documents of type {type(first).__name__}: give a folder, a JSONL file, LangChain Documents "
        "or LlamaIndex documents/nodes."
    )


def _from_corpus(corpus: Corpus, max_depth: int | None) -> list[SourceDocument]:
    paths = corpus.labels.paths if corpus.labels is not None else [None] * len(corpus)
    metadata = corpus.metadata or [{} for _ in range(len(corpus))]
    return [
        SourceDocument(
            id=doc_id,
            text=text,
            path=(path[:max_depth] if max_depth else path) if path else None,
            metadata=dict(extra),
            title=title,
        )
        for doc_id, text, title, path, extra in zip(
            corpus.ids, corpus.texts, corpus.titles, paths, metadata, strict=True
        )
    ]


def discover_document_labels(
    documents: Sequence[SourceDocument], *, max_depth: int = 2, random_state: int = 0, show_progress: bool = True
) -> tuple[list[SourceDocument], dict[str, str]]:
    """Label documents that have no path with a hierarchy discovered by HNMFk on their whole texts.

    Whole documents are clustered (not chunks), so every chunk of a document inherits one path. Under ``torchrun``
    rank 0 alone runs HNMFk and every rank gets its labels (see
    :func:`heal_rag.hierarchy.discover.discover_training_labels`).

    Returns:
        The documents with paths (HNMFk node ids such as ``("2", "2.3")``), and readable node names.
    """
    from heal_rag.distributed import is_main_process
    from heal_rag.hierarchy.discover import discover_training_labels

    labels, node_names, tree = discover_training_labels(
        [d.text for d in documents], max_depth=max_depth, random_state=random_state, show_progress=show_progress
    )
    if show_progress and is_main_process():
        print(tree, flush=True)
    labelled = [replace(d, path=tuple(path)) for d, path in zip(documents, labels.paths, strict=True)]
    return labelled, node_names


def fine_tune_documents(
    documents: DocumentsInput,
    *,
    output_dir: str | os.PathLike[str],
    path_key: PathFrom = None,
    root: str | os.PathLike[str] | None = None,
    max_depth: int | None = None,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
    source_level: bool = True,
    question_generator: Any = None,
    query_generator: QueryGenerator | None = DEFAULT_QUERY_GENERATOR,
    hierarchy_depth: int = 2,
    base_model: str | os.PathLike[str] | None = None,
    show_progress_bar: bool = True,
    **fine_tune_kwargs: Any,
) -> DocumentsFineTuneResult:
    """Tune a model on the user's documents: read, chunk, label, make queries, fine-tune with HEAL.

    Args:
        documents: A folder, a JSONL corpus, LangChain ``Document`` objects or LlamaIndex documents/nodes (see
            :func:`load_documents`).
        output_dir: Where the tuned model goes (see :func:`heal_rag.fine_tune`).
        path_key: For framework documents, the metadata key (or per-level keys, or a callable) of the label path.
        root: For framework documents, the folder their file paths start below.
        max_depth: Keep at most this many levels of each path (e.g. 2: the top two folders).
        chunk_size: Tokens per chunk at most (``None``: the model's window).
        chunk_overlap: Tokens shared by neighbouring chunks (``None``: an eighth of the chunk size).
        source_level: Make the source document one more, finest level of the loss, so chunks of one document are
            positives there (see the README's "How it works").
        question_generator: An :class:`~heal_rag.question_generation.LLMQuestionGenerator` (or anything with
            ``generate(texts, ids) -> list[Query]``) for LLM-written questions; chunks it gives none get
            ``query_generator``'s.
        query_generator: Offline queries for chunks without one: the heading above the chunk, else its key
            sentence (the default); ``None``: chunks without a query train as documents only.
        hierarchy_depth: Levels to discover with HNMFk when the documents have no label paths.
        base_model: Base model directory (``None``: the embedded all-MiniLM-L6-v2).
        show_progress_bar: Progress bars and stage messages.
        **fine_tune_kwargs: Passed to :func:`heal_rag.fine_tune` (``overwrite``, ``max_steps``, ``epochs``, ...).
            Unless ``config`` is given whole, discovered labels get
            :data:`~heal_rag.training.DISCOVERED_LABELS_SETTINGS`, chunks whose queries are all generated key
            sentences :data:`~heal_rag.training.KEY_SENTENCE_QUERY_SETTINGS` and chunks whose queries are their
            headings and key sentences (the default generator, no ``question_generator``)
            :data:`~heal_rag.training.HEADING_QUERY_SETTINGS`, under the settings given here.

    Returns:
        A :class:`DocumentsFineTuneResult`: the model, and the chunks it was tuned on.

    Example:
        ```python
        from langchain_core.documents import Document
        from heal_rag.documents import fine_tune_documents

        docs = [  # as any LangChain loader gives them: metadata["source"] holds the file path
            Document("Bolt the pump to a level base ...", metadata={"source": "manuals/pump/setup/install.md"}),
            Document("Replace the mechanical seal ...", metadata={"source": "manuals/pump/repair/seal.md"}),
            Document("Grease the valve stem ...", metadata={"source": "manuals/valve/upkeep.md"}),
        ]
        result = fine_tune_documents(docs, root="manuals/", output_dir="models/manuals", max_steps=10)
        ```
    """
    from heal_rag.distributed import is_main_process
    from heal_rag.models import load_sentence_transformer
    from heal_rag.outputs import prepare_output_dir

    chunking = ChunkingConfig(chunk_size, chunk_overlap)
    prepare_output_dir(
        output_dir,
        overwrite=bool(fine_tune_kwargs.get("overwrite")),
        inputs=[documents if isinstance(documents, (str, os.PathLike)) else None, base_model],
        what="Model directory",
        kind="model",
    )
    tokenizer_model = load_sentence_transformer(base_model)  # a wrong model, or a chunk_size it cannot read, fails
    chunking = chunking.resolved(tokenizer_model)  # before any document is read
    # under torchrun, rank 0 alone reports (the trainer's own progress bar is rank 0's too)
    report_progress = show_progress_bar and is_main_process()
    docs, report = load_documents(
        documents, path_key=path_key, root=root, max_depth=max_depth, show_progress=report_progress
    )
    if report is not None and report_progress:
        print(report.summary(), flush=True)
    label_names = None
    if all(d.path is None for d in docs):
        if report_progress:
            print(
                f"The documents have no label paths: discovering a hierarchy of up to {hierarchy_depth} levels (HNMFk)"
            )
        docs, label_names = discover_document_labels(docs, max_depth=hierarchy_depth, show_progress=report_progress)
    chunks = chunk_documents(
        docs,
        tokenizer_model,
        chunk_size=chunking.chunk_size,
        chunk_overlap=chunking.chunk_overlap,
        show_progress=report_progress,
    )
    del tokenizer_model
    queries = None
    if question_generator is not None:
        queries = question_generator.generate(chunks.texts, chunks.ids)
    metadata = chunks.metadata or []
    if "config" not in fine_tune_kwargs:  # a config given whole is used as it is
        fine_tune_kwargs = measured_settings(  # discovered labels, generated queries: their measured settings
            fine_tune_kwargs,
            discovered_labels=label_names is not None,
            key_sentence_queries=only_key_sentence_queries(chunks.titles, queries, query_generator),
            heading_queries=only_generated_queries(queries, query_generator),
        )
    result = fine_tune(
        chunks.texts,
        chunks.labels,
        ids=chunks.ids,
        titles=chunks.titles,
        queries=queries,
        query_generator=query_generator,
        source_ids=[m[DOCUMENT_ID_KEY] for m in metadata] if source_level else None,
        label_names=label_names,
        training_record={"chunking": chunking.as_dict(), "documents": len(docs), "chunks": len(chunks)},
        output_dir=output_dir,
        base_model=base_model,
        show_progress_bar=show_progress_bar,
        **fine_tune_kwargs,
    )
    return DocumentsFineTuneResult(**vars(result), chunks=chunks, read_report=report)


def chunks_for_model(
    model: str | os.PathLike[str],
    data: DocumentsInput,
    *,
    path_key: PathFrom = None,
    root: str | os.PathLike[str] | None = None,
    max_depth: int | None = None,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
    show_progress: bool = True,
) -> Corpus:
    """The chunks of ``data`` cut as ``model`` was tuned: its recorded chunking settings, unless overridden.

    Documents without a label path keep none here; :func:`heal_rag.chroma.build_index` predicts them.
    """
    from heal_rag.encoder import HEALEncoder

    encoder = HEALEncoder.load(model)
    recorded: dict[str, Any] = (encoder.metadata or {}).get("training", {}).get("chunking") or {}
    docs, report = load_documents(data, path_key=path_key, root=root, max_depth=max_depth, show_progress=show_progress)
    if report is not None and show_progress:
        print(report.summary(), flush=True)
    if any(d.path is None for d in docs):
        docs = [replace(d, path=None) for d in docs]  # discovered paths are the model's to predict
    return chunk_documents(
        docs,
        encoder,
        chunk_size=chunk_size if chunk_size is not None else recorded.get("chunk_size"),
        chunk_overlap=chunk_overlap if chunk_overlap is not None else recorded.get("chunk_overlap"),
        show_progress=show_progress,
    )


def index_documents(
    model: str | os.PathLike[str],
    data: DocumentsInput,
    db_path: str | os.PathLike[str],
    collection_name: str = "heal_rag",
    *,
    path_key: PathFrom = None,
    root: str | os.PathLike[str] | None = None,
    max_depth: int | None = None,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
    batch_size: int = 256,
    rebuild: bool = False,
    show_progress: bool = True,
    delete_missing: bool = False,
) -> Any:
    """Index the user's documents in Chroma as the chunks ``model`` was tuned on (same settings, same ids).

    With ``delete_missing``, chunks of documents no longer in ``data`` (or beyond a shortened document's end) are
    deleted once the rest is stored (see :func:`heal_rag.chroma.build_index`).

    Returns:
        The Chroma collection (see :func:`heal_rag.chroma.build_index`).
    """
    from heal_rag.chroma import build_index, check_collection_name

    check_collection_name(collection_name)
    chunks = chunks_for_model(
        model,
        data,
        path_key=path_key,
        root=root,
        max_depth=max_depth,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        show_progress=show_progress,
    )
    return build_index(
        model,
        chunks,
        db_path,
        collection_name=collection_name,
        batch_size=batch_size,
        rebuild=rebuild,
        show_progress=show_progress,
        delete_missing=delete_missing,
    )
