"""``HEALEmbedding``: a LlamaIndex ``BaseEmbedding`` backed by the shared :class:`~heal_rag.encoder.HEALEncoder`."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.callbacks import CallbackManager
from pydantic import Field, PrivateAttr

from heal_rag.encoder import HEALEncoder


class HEALEmbedding(BaseEmbedding):
    """HEAL-tuned (or any sentence-transformers) embeddings for LlamaIndex.

    Queries use the model's query prompt and texts its document prompt (the model's saved prompts are never
    overridden). Vectors are L2-normalised; similarity is cosine in ``[-1, 1]``. Batches of ``embed_batch_size``
    texts go through the model in one call.

    Args:
        model: Model directory (``None``: the embedded all-MiniLM-L6-v2).
        backend: ``"torch"`` or an exported backend (see :mod:`heal_rag.backends`).
        model_name: The same as ``model``, under LlamaIndex's field name, so ``HEALEmbedding.from_dict(e.to_dict())``
            (how storage contexts and pipelines serialise embeddings) rebuilds an equal embedding.
        embed_batch_size: Texts per batch.
        device: Torch device.
        encoder: An already loaded :class:`~heal_rag.encoder.HEALEncoder` to share with other adapters.
        callback_manager: LlamaIndex callback manager.

    Example:
        ```python
        from llama_index.core import Settings
        from heal_rag.llamaindex import HEALEmbedding

        Settings.embed_model = HEALEmbedding(model="models/heal-minilm", embed_batch_size=32)
        ```
    """

    device: str | None = Field(default=None, description="Torch device.")
    backend: str = Field(
        default="torch", description="'torch', 'onnx', 'onnx-int8', 'openvino', 'openvino-bf16' or 'openvino-int8'."
    )
    _encoder: HEALEncoder = PrivateAttr()

    def __init__(
        self,
        model: str | None = None,
        embed_batch_size: int = 32,
        device: str | None = None,
        encoder: HEALEncoder | None = None,
        callback_manager: CallbackManager | None = None,
        model_name: str | None = None,
        backend: str = "torch",
        **kwargs: Any,
    ) -> None:
        if encoder is not None and not isinstance(encoder, HEALEncoder):
            raise TypeError(f"encoder must be a HEALEncoder, got {type(encoder).__name__}.")
        if model is not None and model_name is not None and str(model) != str(model_name):
            raise ValueError(f"Give the model once: model={model!r} and model_name={model_name!r} differ.")
        model = model if model is not None else model_name
        encoder = encoder or HEALEncoder.load(model, device=device, batch_size=embed_batch_size, backend=backend)
        super().__init__(
            model_name=str(encoder.model_path or model or "all-MiniLM-L6-v2"),
            embed_batch_size=embed_batch_size,
            device=device,
            backend=encoder.backend,
            callback_manager=callback_manager,
            **kwargs,
        )
        self._encoder = encoder

    @classmethod
    def class_name(cls) -> str:
        """Serialisation key."""
        return "HEALEmbedding"

    @property
    def heal_encoder(self) -> HEALEncoder:
        """The shared encoder core."""
        return self._encoder

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._encoder.embed_query(query).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._encoder.embed_documents([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._encoder.embed_documents(texts).tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
