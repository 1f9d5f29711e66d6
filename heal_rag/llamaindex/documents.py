"""A folder as LlamaIndex ``Document`` objects with their label path in metadata, and chunks back as nodes."""

from __future__ import annotations

import os
from typing import TypeVar

from llama_index.core.schema import BaseNode, Document, TextNode

from heal_rag.data import Corpus
from heal_rag.llamaindex.retriever import exclude_hierarchy_metadata
from heal_rag.metadata import record_metadata
from heal_rag.sources import read_directory

NodeT = TypeVar("NodeT", bound=BaseNode)


def load_folder(
    root: str | os.PathLike[str], *, max_depth: int | None = None, show_progress: bool = True
) -> list[Document]:
    """Read a folder tree into LlamaIndex documents: one per file, the folders above it as the label path.

    Each document's ``id_`` is its path below ``root``; its metadata holds ``source``, ``file_name``, ``title`` and
    the label path (``heal_path`` as ``"A > B"`` and ``heal_l0``, ...), flat values any vector store accepts; the
    label keys are excluded from the LLM text and every key from the embedded text (training reads the text alone,
    and nodes a splitter cuts from these documents inherit the exclusion). Use them in an ingestion pipeline as
    usual, or pass them to :func:`heal_rag.documents.fine_tune_documents`. The text keeps its headings as Markdown
    ``#`` lines, which ``fine_tune_documents`` reads back as the chunks' training queries.

    Example:
        ```python
        from heal_rag.llamaindex import load_folder
        from heal_rag.documents import fine_tune_documents

        documents = load_folder("manuals")
        fine_tune_documents(documents, output_dir="models/manuals")
        ```
    """
    report = read_directory(root, max_depth=max_depth, show_progress=show_progress)
    out = []
    for document in report.documents:
        metadata = record_metadata(document.metadata, document.path, document.title)
        out.append(_embed_text_only(Document(text=document.headed_text(), metadata=metadata, id_=document.id)))
    return out


def to_nodes(chunks: Corpus) -> list[TextNode]:
    """Chunks (e.g. ``fine_tune_documents(...).chunks``) as LlamaIndex nodes with flat metadata and their ids.

    The metadata is kept out of the embedded text, so the index embeds each chunk as the model was tuned on it.
    """
    paths = chunks.labels.paths if chunks.labels is not None else [None] * len(chunks)
    metadata = chunks.metadata or [{} for _ in range(len(chunks))]
    out = []
    for chunk_id, text, path, extra in zip(chunks.ids, chunks.texts, paths, metadata, strict=True):
        flat = record_metadata(extra, path)
        out.append(_embed_text_only(TextNode(text=text, metadata=flat, id_=chunk_id)))
    return out


def _embed_text_only(node: NodeT) -> NodeT:
    """Keep every metadata key out of the node's embedded text, heal_rag's own out of its LLM text too.

    LlamaIndex embeds metadata by default; without it an index embeds the text the model was tuned on.
    """
    node = exclude_hierarchy_metadata(node)
    node.excluded_embed_metadata_keys = list(node.metadata)
    return node
