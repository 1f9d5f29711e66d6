"""Documents the user already loaded with LangChain or LlamaIndex, with a label path from their metadata."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from heal_rag.labels import PATH_SEPARATOR
from heal_rag.metadata import metadata_keys, path_from_metadata
from heal_rag.sources.document import Section, SourceDocument
from heal_rag.sources.formats import HTML_SUFFIXES, MARKDOWN_SUFFIXES, RST_SUFFIXES, parse_markdown

#: Sources whose text may carry Markdown headings: Markdown files as a loader reads them, and the folder helpers'
#: documents of every headed format (:meth:`SourceDocument.headed_text`).
HEADED_SUFFIXES = MARKDOWN_SUFFIXES + HTML_SUFFIXES + RST_SUFFIXES
_MARKDOWN_HEADING = re.compile(r"^#{1,6}[ \t]+\S", re.MULTILINE)

#: Metadata keys holding a document's file path, in the order they are tried (LangChain loaders set ``source``,
#: LlamaIndex's ``SimpleDirectoryReader`` sets ``file_path``).
FILE_PATH_KEYS = ("file_path", "source")

PathFrom = str | Sequence[str] | Callable[[Mapping[str, Any]], Sequence[str] | None] | None


def path_for(
    metadata: Mapping[str, Any],
    *,
    path_key: PathFrom = None,
    root: str | os.PathLike[str] | None = None,
    max_depth: int | None = None,
) -> tuple[str, ...] | None:
    """A label path from a document's metadata.

    Args:
        metadata: The document's metadata.
        path_key: Where the path is: a metadata key holding a list or a ``" > "`` string (``"category"``); a list of
            per-level keys (``["department", "team"]``); or a callable ``metadata -> path``. ``None``: heal_rag's own
            ``heal_path`` keys, else the folders of the file path (with ``root``).
        root: With a file path in the metadata (``file_path`` or ``source``), the folder the label path starts
            below: ``root/manuals/pump/a.md`` gets ``("manuals", "pump")``.
        max_depth: Keep at most this many levels.

    Returns:
        The path, or ``None`` when the metadata has none.
    """
    if callable(path_key):
        found = path_key(metadata)
        path = tuple(str(part) for part in found) if found else None
    elif path_key is not None:
        path = path_from_metadata(metadata, path_key)
    else:
        path = path_from_metadata(metadata) or (_folders(metadata, root) if root is not None else None)
    if path is not None and any(PATH_SEPARATOR in part for part in path):
        path = tuple(part.replace(PATH_SEPARATOR, " / ") for part in path)
    return path[:max_depth] if path and max_depth else path


def _folders(metadata: Mapping[str, Any], root: str | os.PathLike[str]) -> tuple[str, ...] | None:
    for key in FILE_PATH_KEYS:
        value = metadata.get(key)
        if isinstance(value, str) and value:
            file = Path(value).expanduser().resolve()
            base = Path(root).expanduser().resolve()
            try:
                relative = file.relative_to(base)
            except ValueError:
                return None
            return tuple(relative.parts[:-1]) or (base.name,)
    return None


def _documents(
    items: Iterable[tuple[str | None, str, Mapping[str, Any]]],
    path_key: PathFrom,
    root: str | os.PathLike[str] | None,
    max_depth: int | None,
    require_paths: bool,
) -> list[SourceDocument]:
    items = list(items)
    identifiers = _document_ids(items)
    out: list[SourceDocument] = []
    missing: list[str] = []
    for index, ((doc_id, text, metadata), identifier) in enumerate(zip(items, identifiers, strict=True)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"Document {doc_id or index!r} has no text.")
        path = path_for(metadata, path_key=path_key, root=root, max_depth=max_depth)
        if path is None:
            missing.append(identifier)
        sections, heading_title = _sections(text, metadata)
        title = metadata.get("title")
        out.append(
            SourceDocument(
                id=identifier,
                text=text,
                path=path,
                metadata=dict(metadata),
                sections=sections,
                title=str(title) if isinstance(title, str) and title.strip() else heading_title,
            )
        )
    where = f"metadata key {path_key!r}" if isinstance(path_key, str) else "the metadata"
    if out and len(missing) == len(out) and path_key is not None:
        shown = metadata_keys(metadata for _, _, metadata in items)
        raise ValueError(
            f"None of the {len(out)} documents has a label path in {where} (their metadata keys: {shown}). Name the "
            "key that holds the path, or pass path_key=None to discover a hierarchy."
        )
    if missing and (require_paths or len(missing) < len(out)):
        raise ValueError(
            f"{len(missing)} of {len(out)} documents have no label path in {where} (first: {missing[0]!r}). Give "
            "every document one, pass path_key= (a key, a list of per-level keys or a callable), or pass "
            "path_key=None with no paths at all to discover a hierarchy."
        )
    return out


def _sections(text: str, metadata: Mapping[str, Any]) -> tuple[tuple[Section, ...], str | None]:
    """The Markdown sections and title of a framework document whose text has ``#`` headings.

    Only for documents of headed files (``source``/``file_path`` ending ``.md``, ``.rst``, ``.html``, ...); others,
    and texts without headings, get none (the text is one section).
    """
    source = next((str(metadata[key]) for key in FILE_PATH_KEYS if isinstance(metadata.get(key), str)), "")
    if not source.lower().endswith(HEADED_SUFFIXES) or not _MARKDOWN_HEADING.search(text):
        return (), None
    sections, title = parse_markdown(text)
    return tuple(sections), title


def _document_ids(items: Sequence[tuple[str | None, str, Mapping[str, Any]]]) -> list[str]:
    """Each document's id: its own, else its ``source``/``file_path`` metadata, else its position.

    Documents without an id that share a source (a splitter's pieces, a PDF loader's pages) get
    ``<source>_part_<k>``, ``k`` counting from 0 in input order, as LlamaIndex's ``filename_as_id`` names parts.

    Raises:
        ValueError: When two documents carry the same id of their own.
    """
    derived = [
        None if doc_id else str(metadata.get("source") or metadata.get("file_path") or index)
        for index, (doc_id, _, metadata) in enumerate(items)
    ]
    counts = Counter(name for name in derived if name is not None)
    shared = {name for name, count in counts.items() if count > 1}
    parts: dict[str, int] = {}
    identifiers = []
    for (doc_id, _, _), name in zip(items, derived, strict=True):
        if name is None:
            identifiers.append(str(doc_id))
        elif name in shared:
            identifiers.append(f"{name}_part_{parts.setdefault(name, 0)}")
            parts[name] += 1
        else:
            identifiers.append(name)
    seen: dict[str, int] = {}
    for position, identifier in enumerate(identifiers):
        if identifier in seen:
            raise ValueError(
                f"Documents {seen[identifier]} and {position} have the same id {identifier!r}. Give each document a "
                "unique id (LangChain Document.id, LlamaIndex id_), or none to have one made from its source."
            )
        seen[identifier] = position
    return identifiers


def from_langchain(
    documents: Iterable[Any],
    *,
    path_key: PathFrom = None,
    root: str | os.PathLike[str] | None = None,
    max_depth: int | None = None,
    require_paths: bool = False,
) -> list[SourceDocument]:
    """LangChain ``Document`` objects as :class:`SourceDocument` objects.

    A document without an id gets its ``source``/``file_path`` (``<source>_part_<k>`` when several share one: a
    splitter's pieces, a PDF loader's pages). A document of a ``.md``, ``.rst`` or ``.html`` file whose text has
    Markdown ``#`` headings is cut into its headed sections, so the headings become the chunks' training queries as
    they do for a folder.

    Args:
        documents: LangChain documents (``page_content``, ``metadata``, ``id``).
        path_key: Where the label path is (see :func:`path_for`).
        root: Folder the label path starts below, for paths from ``source``/``file_path`` metadata.
        max_depth: Keep at most this many levels.
        require_paths: Refuse documents without a path; by default, a set with no paths at all is accepted (a
            hierarchy is discovered for it) and a set with some missing is refused.

    Raises:
        ValueError: When some documents have a path and others do not (the first without one is named), none has
            the ``path_key`` named, or two share an id of their own.
    """
    items = ((doc.id, doc.page_content, doc.metadata or {}) for doc in documents)
    return _documents(items, path_key, root, max_depth, require_paths)


def from_llamaindex(
    nodes: Iterable[Any],
    *,
    path_key: PathFrom = None,
    root: str | os.PathLike[str] | None = None,
    max_depth: int | None = None,
    require_paths: bool = False,
) -> list[SourceDocument]:
    """LlamaIndex documents or nodes (``Document``, ``TextNode``, ``NodeWithScore``) as :class:`SourceDocument`.

    The text is the node's own text (``get_content()`` without metadata); arguments as in :func:`from_langchain`.
    """
    items = []
    for node in nodes:
        node = getattr(node, "node", node)  # NodeWithScore
        items.append((node.node_id, node.get_content(), node.metadata or {}))
    return _documents(items, path_key, root, max_depth, require_paths)
