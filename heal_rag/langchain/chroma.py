"""A LangChain ``Chroma`` store on a heal_rag collection: one shared client, the model checked, scores in [0, 1].

Needs ``langchain-chroma`` (``pip install langchain-chroma``) besides the ``langchain`` and ``chroma`` extras.
"""

from __future__ import annotations

import os
from typing import Any

from heal_rag.langchain.embeddings import HEALEmbeddings


def cosine_relevance_score(distance: float) -> float:
    """Chroma's cosine distance (``1 - cos``, in ``[0, 2]``) as a relevance score in ``[0, 1]``: ``(1 + cos) / 2``.

    LangChain's default for a cosine collection is ``1 - distance``, i.e. the cosine itself, which is negative for
    unrelated texts and makes ``similarity_search_with_relevance_scores`` warn. Pass this function as
    ``relevance_score_fn`` (as :func:`chroma_vectorstore` does) to get scores in ``[0, 1]``, higher is better.
    """
    return min(1.0, max(0.0, 1.0 - float(distance) / 2.0))


def chroma_vectorstore(
    db_path: str | os.PathLike[str] | None,
    collection_name: str,
    embeddings: HEALEmbeddings,
    *,
    client: Any = None,
    **kwargs: Any,
) -> Any:
    """Open (or start) a heal_rag collection as a ``langchain_chroma.Chroma`` vector store.

    The store shares the Chroma client that :mod:`heal_rag.chroma` uses for ``db_path`` (no "instance of Chroma
    already exists ... with different settings"), checks that ``embeddings`` is the model that built the collection
    (:class:`~heal_rag.chroma.StaleModelError` otherwise), and maps distances to relevance scores in ``[0, 1]``
    (:func:`cosine_relevance_score`). A new collection is created in cosine space and records the model, so later
    opens are checked too.

    Args:
        db_path: The Chroma database folder (``None`` with ``client``).
        collection_name: The collection (e.g. one built with ``heal-rag index``).
        embeddings: The :class:`~heal_rag.langchain.HEALEmbeddings` of the model that built it.
        client: A Chroma client instead of a folder, e.g. ``heal_rag.chroma.connect(host, port)`` for a server.
        **kwargs: Passed to ``langchain_chroma.Chroma`` (e.g. ``collection_configuration``).

    Example:
        ```python
        from heal_rag.langchain import HEALEmbeddings, chroma_vectorstore

        store = chroma_vectorstore("chroma_db", "papers", HEALEmbeddings(model="runs/demo/model"))
        store.similarity_search_with_relevance_scores("superconducting qubits", k=4)  # scores in [0, 1]
        ```

    Raises:
        ImportError: Without ``langchain-chroma``.
        heal_rag.chroma.StaleModelError: When another model built the collection.
    """
    try:
        from langchain_chroma import Chroma
    except ImportError as exc:
        raise ImportError("chroma_vectorstore needs langchain-chroma: pip install langchain-chroma") from exc
    from heal_rag.chroma import check_collection_name
    from heal_rag.chroma.index import _client, prepare_collection_for

    check_collection_name(collection_name)
    client = _client(db_path, client, create=True)
    prepare_collection_for(client, collection_name, embeddings.heal_encoder)
    kwargs.setdefault("relevance_score_fn", cosine_relevance_score)
    return Chroma(
        collection_name=collection_name,
        embedding_function=embeddings,
        client=client,
        create_collection_if_not_exists=False,
        **kwargs,
    )
