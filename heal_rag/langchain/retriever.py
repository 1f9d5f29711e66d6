"""``HEALRetriever``: a LangChain ``BaseRetriever`` over an in-memory, hierarchy-labelled collection."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr

from heal_rag._validation import check_unique_ids
from heal_rag.encoder import HEALEncoder
from heal_rag.evaluation.retrieval import top_k_indices
from heal_rag.metadata import path_from_metadata, path_metadata


class HEALRetriever(BaseRetriever):
    """Cosine-similarity retrieval with a HEAL encoder; every hit carries its score and label path.

    Each returned ``Document`` is a copy with ``metadata["score"]`` (cosine similarity in ``[-1, 1]``, higher is
    more similar; the key is ``score_key``) and the document's label path (``heal_path`` as ``"A > B"`` and
    ``heal_l0``, ...: flat values any vector store accepts):
    from the document's own metadata, or predicted by the model when the model has a label tree. ``invoke(q, k=3)``
    overrides ``k`` for one call.

    Example:
        ```python
        from heal_rag.langchain import HEALRetriever

        retriever = HEALRetriever.from_texts(texts, metadatas=metadatas, model="models/heal-minilm", k=4)
        retriever.invoke("superconducting qubits")   # [Document(..., metadata={"score": 0.71, "heal_path": "A > B"})]
        ```
    """

    encoder: Any
    """The :class:`~heal_rag.encoder.HEALEncoder` (shared with the other adapters)."""
    documents: list[Document] = Field(default_factory=list)
    """The collection to search."""
    k: int = Field(default=4, gt=0)
    """Number of documents to return."""
    score_key: str = "score"
    """Metadata key that receives the similarity score."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    _embeddings: np.ndarray = PrivateAttr()
    _documents: list[Document] = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        """Embed the collection once, and attach label paths."""
        if not isinstance(self.encoder, HEALEncoder):
            raise TypeError(f"encoder must be a HEALEncoder, got {type(self.encoder).__name__}.")
        texts = [doc.page_content for doc in self.documents]
        self._embeddings = self.encoder.embed_documents(texts)
        self._documents = self._with_paths(self.documents)

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        metadatas: Sequence[dict[str, Any]] | None = None,
        ids: Sequence[str] | None = None,
        *,
        model: str | None = None,
        encoder: HEALEncoder | None = None,
        **kwargs: Any,
    ) -> HEALRetriever:
        """Build a retriever over ``texts`` (with optional metadatas and ids) and a model directory or encoder."""
        texts = list(texts)
        metadatas = list(metadatas) if metadatas is not None else [{} for _ in texts]
        ids = list(ids) if ids is not None else [None] * len(texts)
        if not len(texts) == len(metadatas) == len(ids):
            raise ValueError(f"Got {len(texts)} texts, {len(metadatas)} metadatas and {len(ids)} ids.")
        check_unique_ids((i for i in ids if i is not None), "document ids")
        documents = [
            Document(page_content=t, metadata=dict(m), id=i) for t, m, i in zip(texts, metadatas, ids, strict=True)
        ]
        return cls.from_documents(documents, model=model, encoder=encoder, **kwargs)

    @classmethod
    def from_documents(
        cls,
        documents: Iterable[Document],
        *,
        model: str | None = None,
        encoder: HEALEncoder | None = None,
        backend: str = "torch",
        **kwargs: Any,
    ) -> HEALRetriever:
        """Build a retriever over LangChain documents (``backend``: see :mod:`heal_rag.backends`)."""
        documents = list(documents)
        check_unique_ids((doc.id for doc in documents if doc.id is not None), "document ids")
        encoder = encoder or HEALEncoder.load(model, backend=backend)
        return cls(encoder=encoder, documents=documents, **kwargs)

    def _with_paths(self, documents: list[Document]) -> list[Document]:
        missing = [i for i, doc in enumerate(documents) if path_from_metadata(doc.metadata) is None]
        predicted: dict[int, tuple[str, ...]] = {}
        tree = self.encoder.label_tree
        if missing and tree is not None:
            ids, _ = self.encoder.predict_level_ids(self._embeddings[missing])
            predicted = {index: tree.leaf_path(int(row[-1])) for index, row in zip(missing, ids, strict=True)}
        out = []
        for index, doc in enumerate(documents):
            path = path_from_metadata(doc.metadata) or predicted.get(index)
            metadata = {**doc.metadata, **(path_metadata(path) if path else {})}
            out.append(Document(page_content=doc.page_content, metadata=metadata, id=doc.id))
        return out

    def _search(self, query: str, k: int) -> list[Document]:
        if not self._documents:
            return []
        query_embedding = self.encoder.embed_query(query)
        scores = np.clip(self._embeddings @ query_embedding, -1.0, 1.0)
        top = top_k_indices(query_embedding[None, :], self._embeddings, k)[0]
        return [
            Document(
                page_content=self._documents[i].page_content,
                metadata={**self._documents[i].metadata, self.score_key: float(scores[i])},
                id=self._documents[i].id,
            )
            for i in top
        ]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k = int(kwargs.get("k", self.k))
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        return self._search(query, k)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return await asyncio.to_thread(
            self._get_relevant_documents, query, run_manager=run_manager.get_sync(), **kwargs
        )
