"""``HEALRetriever``: a LlamaIndex ``BaseRetriever`` over in-memory, hierarchy-labelled nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode

from heal_rag._validation import check_unique_ids
from heal_rag.encoder import HEALEncoder
from heal_rag.evaluation.retrieval import top_k_indices
from heal_rag.metadata import LEVEL_KEY_PREFIX, LEVEL_MATCH_KEY, PATH_KEY, path_from_metadata, path_metadata

#: Metadata keys heal_rag writes; they are excluded from the text that is embedded or shown to the LLM.
HEAL_METADATA_KEYS = [PATH_KEY, LEVEL_MATCH_KEY, "retrieval_score"] + [f"{LEVEL_KEY_PREFIX}{i}" for i in range(8)]


def exclude_hierarchy_metadata(node: BaseNode) -> BaseNode:
    """Keep heal_rag's metadata keys out of the node's embedded and LLM text (LlamaIndex embeds metadata)."""
    for attribute in ("excluded_embed_metadata_keys", "excluded_llm_metadata_keys"):
        keys = getattr(node, attribute)
        keys.extend(key for key in HEAL_METADATA_KEYS if key not in keys)
    return node


class HEALRetriever(BaseRetriever):
    """Cosine-similarity retrieval over nodes with a HEAL encoder.

    ``NodeWithScore.score`` is the cosine similarity in ``[-1, 1]`` (higher is more similar), and each node's
    metadata gets its label path (``heal_path``, ``heal_l0``, ...: its own, or predicted by the model). A query
    bundle that already carries an embedding is not embedded again.

    Args:
        nodes: Nodes to search (copies are stored; the originals are not changed).
        encoder: A :class:`~heal_rag.encoder.HEALEncoder`.
        similarity_top_k: Number of nodes to return.
        callback_manager: LlamaIndex callback manager.
        verbose: LlamaIndex verbosity.

    Example:
        ```python
        retriever = HEALRetriever(nodes, HEALEncoder.load("models/heal-minilm"), similarity_top_k=4)
        retriever.retrieve("superconducting qubits")
        ```
    """

    def __init__(
        self,
        nodes: Sequence[BaseNode],
        encoder: HEALEncoder,
        similarity_top_k: int = 4,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if similarity_top_k < 1:
            raise ValueError(f"similarity_top_k must be >= 1, got {similarity_top_k}.")
        check_unique_ids((node.node_id for node in nodes), "node ids")
        self.encoder = encoder
        self.similarity_top_k = similarity_top_k
        self._nodes = [exclude_hierarchy_metadata(node.model_copy(deep=True)) for node in nodes]
        texts = [node.get_content(metadata_mode=MetadataMode.EMBED) for node in self._nodes]
        self._embeddings = encoder.embed_documents(texts)
        self._attach_paths()
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @classmethod
    def from_texts(
        cls, texts: Sequence[str], encoder: HEALEncoder, metadatas: Sequence[dict] | None = None, **kwargs
    ) -> HEALRetriever:
        """Build a retriever from plain texts (and optional metadata per text)."""
        metadatas = list(metadatas) if metadatas is not None else [{} for _ in texts]
        nodes = [TextNode(text=t, metadata=dict(m)) for t, m in zip(texts, metadatas, strict=True)]
        return cls(nodes, encoder, **kwargs)

    def _attach_paths(self) -> None:
        """Give every stored node its label path as flat metadata: its own (normalised), else predicted."""
        tree = self.encoder.label_tree
        missing = [i for i, node in enumerate(self._nodes) if path_from_metadata(node.metadata) is None]
        predicted: dict[int, tuple[str, ...]] = {}
        if missing and tree is not None:
            ids, _ = self.encoder.predict_level_ids(self._embeddings[missing])
            predicted = {i: tree.leaf_path(int(row[-1])) for i, row in zip(missing, ids, strict=True)}
        for index, node in enumerate(self._nodes):
            path = path_from_metadata(node.metadata) or predicted.get(index)
            if path:
                node.metadata.update(path_metadata(path))

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if not self._nodes:
            return []
        if query_bundle.embedding is not None:
            query = np.asarray(query_bundle.embedding, dtype=np.float32)
        else:
            query = self.encoder.embed_query(" ".join(query_bundle.embedding_strs))
        scores = np.clip(self._embeddings @ query, -1.0, 1.0)
        top = top_k_indices(query[None, :], self._embeddings, self.similarity_top_k)[0]
        return [NodeWithScore(node=self._nodes[i], score=float(scores[i])) for i in top]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)
