"""LlamaIndex adapters: ``HEALEmbedding``, ``HEALRetriever`` and ``HierarchyNodePostprocessor`` (extra ``llamaindex``).

Install with ``pip install "heal_rag[llamaindex]"``.

Example:
    ```python
    from llama_index.core import Settings, VectorStoreIndex
    from llama_index.core.llms import MockLLM   # stands in for your LLM
    from heal_rag.llamaindex import HEALEmbedding, HierarchyNodePostprocessor

    Settings.embed_model = HEALEmbedding(model="models/heal-minilm")
    index = VectorStoreIndex(nodes)
    postprocessor = HierarchyNodePostprocessor.from_model("models/heal-minilm")
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=10, node_postprocessors=[postprocessor])
    ```
"""

from __future__ import annotations

try:
    import llama_index.core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("heal_rag.llamaindex needs llama-index-core: pip install 'heal_rag[llamaindex]'") from exc

from heal_rag.llamaindex.chroma import chroma_vector_store
from heal_rag.llamaindex.documents import load_folder, to_nodes
from heal_rag.llamaindex.embedding import HEALEmbedding
from heal_rag.llamaindex.postprocessor import HierarchyNodePostprocessor
from heal_rag.llamaindex.retriever import HEAL_METADATA_KEYS, HEALRetriever, exclude_hierarchy_metadata

__all__ = [
    "HEAL_METADATA_KEYS",
    "HEALEmbedding",
    "HEALRetriever",
    "HierarchyNodePostprocessor",
    "chroma_vector_store",
    "exclude_hierarchy_metadata",
    "load_folder",
    "to_nodes",
]
