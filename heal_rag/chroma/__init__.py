"""ChromaDB integration (extra ``chroma``): a registered embedding function and a fingerprint-checked index builder.

Importing this module registers :class:`HEALEmbeddingFunction` with Chroma, so a persisted collection can be
reopened in a new process without passing the function again (``import heal_rag.chroma`` first).

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

from heal_rag.chroma.embedding_function import HEALEmbeddingFunction, StaleModelError
from heal_rag.chroma.index import build_index, open_client, open_collection

__all__ = ["HEALEmbeddingFunction", "StaleModelError", "build_index", "open_client", "open_collection"]
