"""``HierarchyNodePostprocessor``: a LlamaIndex ``BaseNodePostprocessor`` that reranks by hierarchy agreement."""

from __future__ import annotations

from typing import Any

from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
from pydantic import Field, PrivateAttr

from heal_rag.encoder import HEALEncoder
from heal_rag.llamaindex.retriever import exclude_hierarchy_metadata
from heal_rag.metadata import LEVEL_MATCH_KEY, PATH_KEY, path_metadata, paths_from_metadata
from heal_rag.rerank import HierarchyScorer


class HierarchyNodePostprocessor(BaseNodePostprocessor):
    """Rerank nodes by similarity plus agreement with the query's place in the label hierarchy.

    The node's retrieval score (cosine similarity) is used as the similarity when present, and then kept in
    ``metadata["retrieval_score"]`` (``keep_retrieval_score``); ``NodeWithScore.score`` becomes the rerank score:
    the cosine similarity plus a hierarchy term in ``[0, margin]`` (see :mod:`heal_rag.rerank`; higher is better).
    Each node also gets ``heal_level_match`` (levels, from the top, that agree with the query's most likely labels)
    and its label path in flat metadata (kept out of embedded and LLM text). A node's path is read from ``path_key``
    (ours, or your own key such as ``"category"``) or predicted, so nodes from your own vector store work as they are.

    Example:
        ```python
        from llama_index.core import VectorStoreIndex
        from heal_rag.llamaindex import HEALEmbedding

        index = VectorStoreIndex(nodes, embed_model=HEALEmbedding(model="models/heal-minilm"))
        postprocessor = HierarchyNodePostprocessor.from_model("models/heal-minilm", top_n=4)
        retriever = index.as_retriever(similarity_top_k=10)   # or index.as_query_engine(node_postprocessors=[...])
        nodes = postprocessor.postprocess_nodes(retriever.retrieve(question), query_str=question)
        ```
    """

    top_n: int = Field(default=4, gt=0, description="Number of nodes to return.")
    margin: float | None = Field(
        default=None, ge=0, le=1, description="Most the hierarchy term adds (None: the model's chosen value)."
    )
    temperature: float | None = Field(
        default=None, gt=0, description="Softmax temperature over label centroids (None: the model's chosen value)."
    )
    confidence_floor: float | None = Field(
        default=None, ge=0, lt=1, description="Query certainties under this count as 0 (None: the model's value)."
    )
    keep_retrieval_score: bool = Field(default=True, description="Keep the retrieval score in metadata.")
    path_key: str | list[str] = Field(
        default=PATH_KEY,
        description="Metadata key of a node's label path ('A > B' or a list), or one key per level; else predicted.",
    )
    _scorer: HierarchyScorer = PrivateAttr()

    def __init__(self, encoder: HEALEncoder, **kwargs: Any) -> None:
        if not isinstance(encoder, HEALEncoder):
            raise TypeError(f"encoder must be a HEALEncoder, got {type(encoder).__name__}.")
        super().__init__(**kwargs)
        self._scorer = HierarchyScorer(
            encoder,
            margin=self.margin,
            temperature=self.temperature,
            confidence_floor=self.confidence_floor,
        )

    @classmethod
    def from_model(cls, model: str, backend: str = "torch", **kwargs: Any) -> HierarchyNodePostprocessor:
        """Load a HEAL model directory (with ``backend``, see :mod:`heal_rag.backends`) and build the postprocessor."""
        return cls(HEALEncoder.load(model, backend=backend), **kwargs)

    @classmethod
    def class_name(cls) -> str:
        """Serialisation key."""
        return "HierarchyNodePostprocessor"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("HierarchyNodePostprocessor needs the query: pass query_bundle or query_str.")
        if not nodes:
            return []
        results = self._scorer.rerank(
            query_bundle.query_str,
            [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes],
            paths=paths_from_metadata([n.node.metadata for n in nodes], self.path_key),
            similarities=[n.score for n in nodes],
            top_n=self.top_n,
        )
        out = []
        for result in results:
            source = nodes[result.index]
            node = exclude_hierarchy_metadata(source.node.model_copy(deep=True))
            node.metadata.update(path_metadata(result.path))
            node.metadata[LEVEL_MATCH_KEY] = result.matched_levels
            if self.keep_retrieval_score and source.score is not None:  # None is not a value vector stores take
                node.metadata["retrieval_score"] = source.score
            out.append(NodeWithScore(node=node, score=result.score))
        return out
