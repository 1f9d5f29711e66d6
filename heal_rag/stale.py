"""Refusing a vector store built by another model: the error, and a best-effort check from inside the embedders.

A collection records the fingerprint of the model that built it. Where heal_rag opens the store itself
(:func:`heal_rag.chroma.open_collection`, the framework helpers) the check is explicit. Where a framework calls our
embeddings directly (Chroma's ``get_collection(name, embedding_function=...)``, a ``langchain_chroma.Chroma`` built by
hand), the embedder looks a few frames up the call stack for the Chroma collection that called it and compares
fingerprints. When a framework calls from elsewhere (LlamaIndex embeds queries in its retriever, away from the
store), nothing is found and nothing is checked: open such stores with the heal_rag helpers.
"""

from __future__ import annotations

import inspect
from typing import Any

#: Collection metadata key holding the fingerprint of the model that built the collection.
FINGERPRINT_KEY = "heal_fingerprint"
#: Stack frames searched for a calling collection.
_MAX_FRAMES = 8
#: Modules whose objects hold a Chroma collection in ``_collection``.
_STORE_MODULES = ("langchain_chroma", "llama_index.vector_stores.chroma")


class StaleModelError(ValueError):
    """The model differs from the one a collection was built with (a same-width fine-tune would pass silently)."""


def short_fingerprint(fingerprint: object) -> str:
    """A fingerprint for messages: its first 12 hex digits, and the backend when it has its own (int8).

    Args:
        fingerprint: A model fingerprint (``sha256:<hex>``, or ``sha256:<hex>|<backend>|sha256:<hex>`` for an int8
            export; see :attr:`heal_rag.encoder.HEALEncoder.fingerprint`).
    """
    model, _, rest = str(fingerprint).partition("|")
    backend = rest.split("|", 1)[0]
    return f"{model[:19]}…" + (f" with backend {backend!r}" if backend else "")


def stale_model_error(built_by: str, expected: object, actual: str, fix: str) -> StaleModelError:
    """The error for a collection's vectors used with a model other than the one that embedded them.

    Args:
        built_by: What was built and by what, e.g. ``"Collection 'docs' was built by another model or backend"``.
        expected: The fingerprint the collection records.
        actual: The model in use and its fingerprint, e.g. ``"this encoder is sha256:…"``.
        fix: What to do instead, as a sentence.
    """
    return StaleModelError(
        f"{built_by} (fingerprint {short_fingerprint(expected)}); {actual}. Vectors of different models or backends "
        f"are not comparable, even at the same width: {fix}"
    )


def calling_collection() -> Any:
    """The Chroma collection on the call stack (a collection, or a LangChain/LlamaIndex store holding one), if any."""
    try:
        from chromadb.api.models.CollectionCommon import CollectionCommon
    except ImportError:  # pragma: no cover - without chromadb there is no collection to find
        return None
    frame = inspect.currentframe()
    try:
        caller = frame.f_back if frame is not None else None
        for _ in range(_MAX_FRAMES):
            if caller is None:
                return None
            candidate = caller.f_locals.get("self")
            if isinstance(candidate, CollectionCommon):
                return candidate
            if type(candidate).__module__.startswith(_STORE_MODULES):
                held = candidate.__dict__.get("_chroma_collection") or candidate.__dict__.get("_collection")
                if isinstance(held, CollectionCommon):
                    return held
            caller = caller.f_back
        return None
    finally:
        del frame


def check_calling_collection(fingerprint: str, model_path: Any) -> None:
    """Raise :class:`StaleModelError` when a collection built by another model called the embedder.

    Args:
        fingerprint: The embedder's model fingerprint.
        model_path: The embedder's model path, for the message.
    """
    collection = calling_collection()
    expected = (collection.metadata or {}).get(FINGERPRINT_KEY) if collection is not None else None
    if expected is not None and expected != fingerprint:
        raise stale_model_error(
            f"Collection {collection.name!r} was built by another model or backend",
            expected,
            f"{str(model_path)!r} is {short_fingerprint(fingerprint)}",
            "reopen it with heal_rag.chroma.open_collection, or the heal_rag.langchain / heal_rag.llamaindex Chroma "
            "helpers, with the model that built it.",
        )
