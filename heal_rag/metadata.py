"""Metadata heal_rag writes on documents and nodes: flat values every common vector store accepts.

Chroma, LlamaIndex's vector stores and most LangChain stores accept only flat metadata values (strings, numbers,
booleans). So a document's label path travels as one ``" > "``-joined string under :data:`PATH_KEY` plus one
flat key per level (``heal_l0``, ``heal_l1``, ...), and any user metadata that is not flat is flattened by
:func:`flatten_metadata` (lists joined, mappings as JSON) instead of being dropped.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from heal_rag._warning import HEALWarning
from heal_rag.labels import PATH_SEPARATOR

#: Metadata key of a document's label path: ``"Physics > Optics"`` (most general first).
PATH_KEY = "heal_path"
#: Prefix of the flat per-level metadata keys (``heal_l0``, ``heal_l1``, ...), portable to any vector store filter.
LEVEL_KEY_PREFIX = "heal_l"
#: Metadata key of the number of levels, from the top, at which a document's label is the query's most likely one.
LEVEL_MATCH_KEY = "heal_level_match"

_FLAT_TYPES = (str, int, float, bool)


def path_from_metadata(
    metadata: Mapping[str, Any] | None, key: str | Sequence[str] = PATH_KEY
) -> tuple[str, ...] | None:
    """A document's label path from its metadata, or ``None`` when it has none.

    Accepted forms: ``metadata[key]`` as a ``" > "``-joined string or a list of strings, the flat ``heal_l0``,
    ``heal_l1``, ... keys, or, when ``key`` is a list, one key per level (``["department", "team"]``; empty values
    end the path).

    Args:
        metadata: The document's metadata.
        key: The key holding the path (default :data:`PATH_KEY`; the user's own key, e.g. ``"category"``), or one
            key per level.
    """
    if not metadata:
        return None
    if not isinstance(key, str):
        values = [metadata.get(level_key) for level_key in key]
        return tuple(str(v) for v in values if v not in (None, "")) or None
    value = metadata.get(key)
    if isinstance(value, str) and value.strip():
        return tuple(part.strip() for part in value.split(PATH_SEPARATOR) if part.strip())
    if isinstance(value, (list, tuple)) and value:
        return tuple(str(part) for part in value)
    levels = []
    while f"{LEVEL_KEY_PREFIX}{len(levels)}" in metadata:
        levels.append(str(metadata[f"{LEVEL_KEY_PREFIX}{len(levels)}"]))
    return tuple(levels) or None


def paths_from_metadata(
    metadatas: Sequence[Mapping[str, Any] | None], key: str | Sequence[str] = PATH_KEY
) -> list[tuple[str, ...] | None]:
    """:func:`path_from_metadata` for each of a batch of documents (a reranker's candidates).

    Warns (:class:`~heal_rag.HEALWarning`) when ``key`` is the user's own and none of the documents has it, which is
    almost always a misspelt key: every path would then be predicted without a word.
    """
    paths = [path_from_metadata(metadata, key) for metadata in metadatas]
    wanted = [key] if isinstance(key, str) else list(key)
    if key != PATH_KEY and metadatas and not any(k in (metadata or {}) for metadata in metadatas for k in wanted):
        warnings.warn(
            f"None of the {len(metadatas)} documents has metadata key {key!r} (their keys: "
            f"{metadata_keys(metadatas)}), so every label "
            "path is predicted by the model. Check path_key.",
            HEALWarning,
            stacklevel=3,
        )
    return paths


def metadata_keys(metadatas: Iterable[Mapping[str, Any] | None], limit: int = 8) -> str:
    """The keys found in a set of metadata, sorted and shortened for an error message (``"none"`` if none)."""
    keys = sorted({str(key) for metadata in metadatas for key in (metadata or {})})
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "") or "none"


def path_metadata(path: Sequence[str]) -> dict[str, str]:
    """Flat metadata entries for a label path: ``heal_path`` (``"A > B"``) and ``heal_l0``, ``heal_l1``, ...

    Example:
        ```python
        path_metadata(["Physics", "Optics"])
        # {"heal_path": "Physics > Optics", "heal_l0": "Physics", "heal_l1": "Optics"}
        ```
    """
    out = {PATH_KEY: PATH_SEPARATOR.join(path)}
    out.update({f"{LEVEL_KEY_PREFIX}{level}": str(part) for level, part in enumerate(path)})
    return out


def flatten_metadata(metadata: Mapping[str, Any] | None) -> dict[str, str | int | float | bool]:
    """Metadata every common vector store accepts: flat values kept, the rest flattened, nothing silently lost.

    Strings, integers, finite floats and booleans are kept; lists and tuples of flat values become one
    ``", "``-joined string; mappings and other lists become JSON; ``None`` and non-finite floats are left out (no
    store accepts them). Keys become strings.

    Example:
        ```python
        flatten_metadata({"source": "a.md", "page": 3, "tags": ["x", "y"], "extra": {"k": 1}, "empty": None})
        # {"source": "a.md", "page": 3, "tags": "x, y", "extra": '{"k": 1}'}
        ```
    """
    flat: dict[str, str | int | float | bool] = {}
    for key, value in (metadata or {}).items():
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        if isinstance(value, _FLAT_TYPES):
            flat[str(key)] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, _FLAT_TYPES) for v in value):
            flat[str(key)] = ", ".join(str(v) for v in value)
        else:
            flat[str(key)] = json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)
    return flat


def record_metadata(
    metadata: Mapping[str, Any] | None, path: Sequence[str] | None = None, title: str | None = None
) -> dict[str, str | int | float | bool]:
    """A record's metadata as heal_rag stores it: the user's own fields (flattened), the title, the label path.

    The user's fields go through :func:`flatten_metadata`, except :data:`PATH_KEY`, which the record's own
    ``path`` replaces (:func:`path_metadata`), and a list that is the record's path (the user's ``path_key``), which
    is kept as a ``" > "`` path so a reranker reading that key gets the path back; ``title`` is added unless the
    user's fields already hold one. Used by the Chroma index and by both frameworks' folder loaders and chunk
    converters, so a record carries the same metadata whichever way it was stored.

    Example:
        ```python
        record_metadata({"source": "a.md", "tags": ["x", "y"]}, path=["Physics", "Optics"], title="Lenses")
        # {"source": "a.md", "tags": "x, y", "title": "Lenses", "heal_path": "Physics > Optics",
        #  "heal_l0": "Physics", "heal_l1": "Optics"}
        ```
    """
    own = tuple(str(part) for part in path) if path else None
    flat = flatten_metadata(
        {
            key: PATH_SEPARATOR.join(own) if own and isinstance(value, (list, tuple)) and tuple(map(str, value)) == own
            else value
            for key, value in (metadata or {}).items()
            if key != PATH_KEY
        }
    )  # fmt: skip
    if title:
        flat.setdefault("title", title)
    if path:
        flat.update(path_metadata(path))
    return flat


def level_match(query_labels: Sequence[int], document_labels: Sequence[int]) -> int:
    """Number of levels, from the top, at which the document's label is the query's most likely one."""
    matched = 0
    for query_label, document_label in zip(query_labels, document_labels, strict=False):
        if query_label != document_label:
            break
        matched += 1
    return matched
