"""``HEALEmbeddings``: a LangChain ``Embeddings`` backed by the shared :class:`~heal_rag.encoder.HEALEncoder`."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from heal_rag.encoder import HEALEncoder
from heal_rag.stale import check_calling_collection


class HEALEmbeddings(BaseModel, Embeddings):
    """HEAL-tuned (or any sentence-transformers) embeddings for LangChain.

    Queries go through the model's query prompt and documents through its document prompt; vectors are
    L2-normalised, so cosine similarity is their dot product (in ``[-1, 1]``, higher is more similar).

    Example:
        ```python
        from heal_rag.langchain import HEALEmbeddings
        from langchain_core.vectorstores import InMemoryVectorStore

        embeddings = HEALEmbeddings(model="models/heal-minilm")
        store = InMemoryVectorStore.from_texts(["Cooper pairs ...", "Prime gaps ..."], embeddings)
        store.similarity_search("superconductivity", k=1)
        ```
    """

    model_path: str | None = Field(default=None, alias="model")
    """Model directory (``None``: the embedded all-MiniLM-L6-v2)."""
    batch_size: int = Field(default=32, gt=0)
    """Texts per encoding batch."""
    device: str | None = None
    """Torch device (default: CUDA when available, else CPU)."""
    backend: str = "torch"
    """``"torch"``, or an exported backend: ``"onnx"``, ``"onnx-int8"``, ``"openvino"``, ``"openvino-bf16"``,
    ``"openvino-int8"``."""
    encoder: Any = Field(default=None, exclude=True)
    """An already loaded :class:`~heal_rag.encoder.HEALEncoder` to share with other adapters (overrides the rest)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True)
    _encoder: HEALEncoder = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        # The model is loaded before pydantic validation, so loading errors (a missing model, pickled or damaged
        # weights) reach the caller as themselves, not wrapped in a pydantic ValidationError.
        if data.get("encoder") is None:
            data["encoder"] = HEALEncoder.load(
                data.get("model", data.get("model_path")),
                device=data.get("device"),
                batch_size=data.get("batch_size", 32),
                backend=data.get("backend", "torch"),
            )
        elif isinstance(data["encoder"], HEALEncoder):
            data["backend"] = data["encoder"].backend
        super().__init__(**data)

    def model_post_init(self, context: Any, /) -> None:
        """Adopt the loaded (or given) encoder."""
        if not isinstance(self.encoder, HEALEncoder):
            raise TypeError(f"encoder must be a HEALEncoder, got {type(self.encoder).__name__}.")
        self._encoder = self.encoder

    @property
    def heal_encoder(self) -> HEALEncoder:
        """The shared encoder core."""
        return self._encoder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (batched) as lists of Python floats.

        Raises:
            heal_rag.chroma.StaleModelError: When a Chroma store built by another model calls (best effort, see
                :mod:`heal_rag.stale`).
        """
        check_calling_collection(self._encoder.fingerprint, self._encoder.model_path)
        return self._encoder.embed_documents(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed one query as a list of Python floats (checked like :meth:`embed_documents`)."""
        check_calling_collection(self._encoder.fingerprint, self._encoder.model_path)
        return self._encoder.embed_query(text).tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents`, in a worker thread so the event loop is not blocked."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query`, in a worker thread."""
        return await asyncio.to_thread(self.embed_query, text)
