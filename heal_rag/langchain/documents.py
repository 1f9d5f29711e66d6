"""A folder as LangChain ``Document`` objects with their label path in metadata, and chunks back as documents."""

from __future__ import annotations

import os

from langchain_core.documents import Document

from heal_rag.data import Corpus
from heal_rag.metadata import record_metadata
from heal_rag.sources import read_directory


def load_folder(
    root: str | os.PathLike[str], *, max_depth: int | None = None, show_progress: bool = True
) -> list[Document]:
    """Read a folder tree into LangChain documents: one per file, the folders above it as the label path.

    Each document's ``id`` is its path below ``root``; its metadata holds ``source``, ``file_name``, ``title`` and
    the label path (``heal_path`` as ``"A > B"`` and ``heal_l0``, ``heal_l1``, ...), all flat values, so the
    documents go into any LangChain vector store and back into :func:`heal_rag.documents.fine_tune_documents`. The
    text keeps its headings as Markdown ``#`` lines, which ``fine_tune_documents`` reads back as the chunks' training
    queries (as it does for any document whose ``source`` is a ``.md``, ``.rst`` or ``.html`` file).
    Files that cannot be read are reported (see :func:`heal_rag.sources.read_directory`), not raised.

    Example:
        ```python
        from heal_rag.langchain import load_folder
        from heal_rag.documents import fine_tune_documents

        docs = load_folder("manuals", max_depth=2)   # your splitters, filters, ... work on these as usual
        fine_tune_documents(docs, output_dir="models/manuals")
        ```
    """
    report = read_directory(root, max_depth=max_depth, show_progress=show_progress)
    out = []
    for document in report.documents:
        metadata = record_metadata(document.metadata, document.path, document.title)
        out.append(Document(page_content=document.headed_text(), metadata=metadata, id=document.id))
    return out


def to_documents(chunks: Corpus) -> list[Document]:
    """Chunks (e.g. ``fine_tune_documents(...).chunks``) as LangChain documents with flat metadata and their ids.

    Example:
        ```python
        from heal_rag.documents import fine_tune_documents
        from heal_rag.langchain import HEALEmbeddings, chroma_vectorstore, to_documents

        result = fine_tune_documents("manuals", output_dir="models/manuals")
        store = chroma_vectorstore("chroma_db", "manuals", HEALEmbeddings(model="models/manuals"))
        store.add_documents(to_documents(result.chunks), ids=result.chunks.ids)
        ```
    """
    paths = chunks.labels.paths if chunks.labels is not None else [None] * len(chunks)
    metadata = chunks.metadata or [{} for _ in range(len(chunks))]
    out = []
    for chunk_id, text, path, extra in zip(chunks.ids, chunks.texts, paths, metadata, strict=True):
        flat = record_metadata(extra, path)
        out.append(Document(page_content=text, metadata=flat, id=chunk_id))
    return out
