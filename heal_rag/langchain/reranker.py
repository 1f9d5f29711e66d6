"""``HierarchyReranker``: a LangChain ``BaseDocumentCompressor`` that reranks by hierarchy agreement."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from copy import deepcopy
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field, PrivateAttr

from heal_rag.encoder import HEALEncoder
from heal_rag.metadata import LEVEL_MATCH_KEY, PATH_KEY, path_metadata, paths_from_metadata
from heal_rag.rerank import HierarchyScorer


class HierarchyReranker(BaseDocumentCompressor):
    """Rerank retrieved documents by similarity plus agreement with the query's place in the label hierarchy.

    Returns new documents (the inputs are never changed) with deep-copied metadata plus ``relevance_score`` (the
    cosine similarity plus a hierarchy term in ``[0, margin]`` that only breaks near-ties, and only where the query is
    sure of its branch; see :mod:`heal_rag.rerank`; higher is better), the
    number of levels, from the top, at which the document agrees with the query's most likely labels
    (``heal_level_match``) and the label path (``heal_path`` as ``"A > B"``, ``heal_l0``, ...: flat values any vector
    store accepts). A document's path comes from its metadata (``path_key``: our ``heal_path``, or your own key, e.g.
    ``"category"``, as a ``" > "`` string or a list; one key per level, ``["department", "team"]``; or ``heal_l0``,
    ...) or is predicted from its text, so documents
    from your own vector store work as they are; its similarity comes from ``metadata["score"]`` (as
    :class:`~heal_rag.langchain.HEALRetriever` sets it) or is computed.

    Example:
        ```python
        from heal_rag.langchain import HierarchyReranker

        reranker = HierarchyReranker.from_model("models/heal-minilm", top_n=4)
        docs = reranker.compress_documents(base_retriever.invoke(question), question)   # any LangChain retriever
        ```

        As a retriever, with ``ContextualCompressionRetriever`` from ``langchain-classic`` (not part of the
        ``langchain`` extra: ``pip install langchain-classic``):
        ``ContextualCompressionRetriever(base_compressor=reranker, base_retriever=base_retriever)``.
    """

    encoder: Any
    """The :class:`~heal_rag.encoder.HEALEncoder` of a HEAL model (shared with the other adapters)."""
    top_n: int = Field(default=4, gt=0)
    """Number of documents to return."""
    margin: float | None = Field(default=None, ge=0, le=1)
    """The most the hierarchy term adds to a similarity (``None``: the value chosen for the model at training)."""
    temperature: float | None = Field(default=None, gt=0)
    """Softmax temperature over label-centroid similarities (``None``: the model's chosen value)."""
    confidence_floor: float | None = Field(default=None, ge=0, lt=1)
    """Query certainties under this count as 0 (``None``: the model's chosen value)."""
    score_key: str = "score"
    """Metadata key holding the retrieval similarity, if any."""
    relevance_key: str = "relevance_score"
    """Metadata key that receives the rerank score."""
    path_key: str | list[str] = PATH_KEY
    """Metadata key holding a document's label path (``"A > B"`` or a list); missing paths are predicted."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")
    _scorer: HierarchyScorer = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        """Build the scoring core."""
        if not isinstance(self.encoder, HEALEncoder):
            raise TypeError(f"encoder must be a HEALEncoder, got {type(self.encoder).__name__}.")
        self._scorer = HierarchyScorer(
            self.encoder,
            margin=self.margin,
            temperature=self.temperature,
            confidence_floor=self.confidence_floor,
        )

    @classmethod
    def from_model(cls, model: str, backend: str = "torch", **kwargs: Any) -> HierarchyReranker:
        """Load a HEAL model directory (with ``backend``, see :mod:`heal_rag.backends`) and build the reranker."""
        return cls(encoder=HEALEncoder.load(model, backend=backend), **kwargs)

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Rerank ``documents`` for ``query`` and keep the best ``top_n``."""
        documents = list(documents)
        if not documents:
            return []
        similarities = [_as_float(doc.metadata.get(self.score_key)) for doc in documents]
        results = self._scorer.rerank(
            query,
            [doc.page_content for doc in documents],
            paths=paths_from_metadata([doc.metadata for doc in documents], self.path_key),
            similarities=similarities,
            top_n=self.top_n,
        )
        out = []
        for result in results:
            source = documents[result.index]
            metadata = deepcopy(source.metadata)
            metadata.update(path_metadata(result.path))
            metadata[self.relevance_key] = result.score
            metadata[LEVEL_MATCH_KEY] = result.matched_levels
            out.append(Document(page_content=source.page_content, metadata=metadata, id=source.id))
        return out

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`, in a worker thread."""
        return await asyncio.to_thread(self.compress_documents, documents, query, callbacks)


def _as_float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
