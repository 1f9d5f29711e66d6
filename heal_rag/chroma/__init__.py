"""ChromaDB integration (extra ``chroma``): a registered embedding function and a fingerprint-checked index builder.

Importing this module registers :class:`HEALEmbeddingFunction` with Chroma, so a persisted collection can be
reopened in a new process without passing the function again (``import heal_rag.chroma`` first).

The model that built a collection is recorded in it (a content fingerprint). Reopening with another model, even a
same-width fine-tune or the same path retrained, raises :class:`StaleModelError`: through :func:`open_collection`,
through Chroma's ``get_collection(name)`` (our function is rebuilt from the stored configuration and checks the
model), and through Chroma's ``get_collection(name, embedding_function=HEALEmbeddingFunction(...))`` at the first
query or add (Chroma itself compares only function names; our function finds the collection that calls it). For a
LangChain or LlamaIndex Chroma store, :func:`check_collection` does the same check, and the helpers
``heal_rag.langchain.chroma_vectorstore`` and ``heal_rag.llamaindex.chroma_vector_store`` call it for you.

Example:
    ```python
    import chromadb
    from heal_rag.chroma import HEALEmbeddingFunction, build_index

    collection = build_index("models/heal-minilm", corpus, db_path="chroma_db", collection_name="papers")
    collection.query(query_texts=["superconducting qubits"], n_results=5)
    ```
"""

from __future__ import annotations

try:
    import chromadb  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("heal_rag.chroma needs chromadb: pip install 'heal_rag[chroma]'") from exc

from heal_rag.chroma.embedding_function import FINGERPRINT_KEY, HEALEmbeddingFunction, StaleModelError
from heal_rag.chroma.index import (
    build_index,
    check_collection,
    check_collection_name,
    connect,
    open_client,
    open_collection,
)

__all__ = [
    "FINGERPRINT_KEY",
    "HEALEmbeddingFunction",
    "StaleModelError",
    "build_index",
    "check_collection",
    "check_collection_name",
    "connect",
    "open_client",
    "open_collection",
]
