"""A LlamaIndex ``ChromaVectorStore`` on a heal_rag collection: one shared client, the model checked.

Needs ``llama-index-vector-stores-chroma`` besides the ``llamaindex`` and ``chroma`` extras.
"""

from __future__ import annotations

import os
from typing import Any

from heal_rag.llamaindex.embedding import HEALEmbedding


def chroma_vector_store(
    db_path: str | os.PathLike[str] | None, collection_name: str, embed_model: HEALEmbedding, *, client: Any = None
) -> Any:
    """Open (or start) a heal_rag collection as a LlamaIndex ``ChromaVectorStore``.

    The store shares the Chroma client :mod:`heal_rag.chroma` uses for ``db_path``, and ``embed_model`` must be the
    model that built the collection (:class:`~heal_rag.chroma.StaleModelError` otherwise). A new collection is
    created in cosine space and records the model. Note that ``ChromaVectorStore`` reports ``exp(-distance)`` as a
    node's score, not the cosine similarity.

    Args:
        db_path: The Chroma database folder (``None`` with ``client``).
        collection_name: The collection (e.g. one built with ``heal-rag index``).
        embed_model: The :class:`~heal_rag.llamaindex.HEALEmbedding` of the model that built it.
        client: A Chroma client instead of a folder, e.g. ``heal_rag.chroma.connect(host, port)`` for a server.

    Example:
        ```python
        from llama_index.core import VectorStoreIndex
        from heal_rag.llamaindex import HEALEmbedding, chroma_vector_store

        embed_model = HEALEmbedding(model="runs/demo/model")
        store = chroma_vector_store("chroma_db", "papers", embed_model)
        index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)
        ```

    Raises:
        ImportError: Without ``llama-index-vector-stores-chroma``.
        heal_rag.chroma.StaleModelError: When another model built the collection.
    """
    try:
        from llama_index.vector_stores.chroma import ChromaVectorStore
    except ImportError as exc:
        raise ImportError(
            "chroma_vector_store needs llama-index-vector-stores-chroma: pip install llama-index-vector-stores-chroma"
        ) from exc
    from heal_rag.chroma import check_collection_name
    from heal_rag.chroma.index import _client, prepare_collection_for

    check_collection_name(collection_name)
    collection = prepare_collection_for(
        _client(db_path, client, create=True), collection_name, embed_model.heal_encoder
    )
    return ChromaVectorStore(chroma_collection=collection)
