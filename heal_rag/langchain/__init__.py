"""LangChain adapters: ``HEALEmbeddings``, ``HEALRetriever`` and ``HierarchyReranker`` (extra ``langchain``).

Library code imports only ``langchain_core``. Install with ``pip install "heal_rag[langchain]"``.

Example:
    ```python
    from heal_rag.langchain import HEALEmbeddings, HEALRetriever, HierarchyReranker

    retriever = HEALRetriever.from_texts(texts, model="models/heal-minilm", k=10)
    reranker = HierarchyReranker.from_model("models/heal-minilm", top_n=4)
    docs = reranker.compress_documents(retriever.invoke("superconducting qubits"), "superconducting qubits")
    ```
"""

from __future__ import annotations

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("heal_rag.langchain needs langchain-core: pip install 'heal_rag[langchain]'") from exc

from heal_rag.langchain.chroma import chroma_vectorstore, cosine_relevance_score
from heal_rag.langchain.documents import load_folder, to_documents
from heal_rag.langchain.embeddings import HEALEmbeddings
from heal_rag.langchain.reranker import HierarchyReranker
from heal_rag.langchain.retriever import HEALRetriever

__all__ = [
    "HEALEmbeddings",
    "HEALRetriever",
    "HierarchyReranker",
    "chroma_vectorstore",
    "cosine_relevance_score",
    "load_folder",
    "to_documents",
]
