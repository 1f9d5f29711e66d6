"""``HEALEmbeddingFunction``: a Chroma embedding function that persists and refuses a changed model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from heal_rag.artifacts import METADATA_FILE, read_metadata
from heal_rag.encoder import HEALEncoder
from heal_rag.stale import (
    FINGERPRINT_KEY,
    StaleModelError,
    check_calling_collection,
    short_fingerprint,
    stale_model_error,
)

__all__ = ["FINGERPRINT_KEY", "HEALEmbeddingFunction", "StaleModelError"]

_SPACES = {"cosine": "cosine", "dot": "ip", "euclidean": "l2"}
_ENCODERS: dict[tuple[str, int, tuple[int, int] | None, str], HEALEncoder] = {}


def _shared_encoder(model_path: str | None, batch_size: int, backend: str = "torch") -> HEALEncoder:
    """One encoder per model directory and batch size, reloaded when the model's heal_rag.json changes."""
    metadata_file = Path(model_path) / METADATA_FILE if model_path else None
    state = None
    if metadata_file is not None and metadata_file.is_file():
        stat = metadata_file.stat()
        state = (stat.st_mtime_ns, stat.st_size)
    key = (str(model_path), batch_size, state, backend)
    if key not in _ENCODERS:
        _ENCODERS[key] = HEALEncoder.load(model_path, batch_size=batch_size, backend=backend)
    return _ENCODERS[key]


def _recorded_fingerprint(model_path: str | None) -> str | None:
    """The fingerprint a model directory's ``heal_rag.json`` records (``None`` without a readable one)."""
    if not model_path:
        return None
    try:
        return str(read_metadata(model_path)["fingerprint"])
    except (OSError, ValueError):  # missing or damaged: the full load reports it
        return None


def _changed_model(model_path: str, expected: str, actual: str) -> StaleModelError:
    return stale_model_error(
        f"The model at {model_path!r} has changed since this collection was built, which expects",
        expected,
        f"the model is now {short_fingerprint(actual)}",
        "re-index the collection with this model.",
    )


@register_embedding_function
class HEALEmbeddingFunction(EmbeddingFunction[Documents]):
    """Chroma embedding function for a HEAL model directory.

    Documents go through the model's document prompt, queries (``query_texts``) through ``embed_query`` and the
    query prompt. The stored configuration holds only primitives: the model path, its content fingerprint, the
    batch size. When Chroma rebuilds the function from a persisted collection, the model at that path must still
    have the recorded fingerprint, else :class:`StaleModelError` is raised.

    Args:
        model_path: HEAL (or any sentence-transformers) model directory; ``None``: the embedded default.
        batch_size: Encoding batch size.
        fingerprint: Expected model fingerprint (set when rebuilt from a stored config).
        encoder: An already loaded encoder to share (its path and fingerprint are used).
        backend: ``"torch"`` or an exported backend (see :mod:`heal_rag.backends`); stored in the collection's
            configuration, so a reopened collection uses it again.
    """

    def __init__(
        self,
        model_path: str | None = None,
        batch_size: int = 32,
        fingerprint: str | None = None,
        encoder: HEALEncoder | None = None,
        backend: str = "torch",
    ) -> None:
        if encoder is None:
            model_path = str(Path(model_path).resolve()) if model_path else None
            recorded = _recorded_fingerprint(model_path) if not backend.endswith("int8") else None  # int8: its own
            if fingerprint is not None and recorded is not None and recorded != fingerprint:
                # before loading: a retrained model's exports are gone, and that is not the problem to report
                raise _changed_model(str(model_path), fingerprint, recorded)
            encoder = _shared_encoder(model_path, batch_size, backend)
        self.encoder = encoder
        self.model_path = encoder.model_path
        self.batch_size = batch_size
        if fingerprint is not None and fingerprint != encoder.fingerprint:
            raise _changed_model(str(self.model_path), fingerprint, encoder.fingerprint)

    def __call__(self, input: Documents) -> Embeddings:  # noqa: A002 - Chroma requires the name `input`
        """Embed documents.

        Raises:
            StaleModelError: When called by a collection that another model built.
        """
        self._check_calling_collection()
        return list(self.encoder.embed_documents(list(input)))

    def embed_query(self, input: Documents) -> Embeddings:  # noqa: A002
        """Embed queries with the model's query prompt.

        Raises:
            StaleModelError: When called by a collection that another model built.
        """
        self._check_calling_collection()
        return list(self.encoder.embed_queries(list(input)))

    def _check_calling_collection(self) -> None:
        check_calling_collection(self.encoder.fingerprint, self.model_path)

    @staticmethod
    def name() -> str:
        """Registry name."""
        return "heal_rag"

    def default_space(self) -> Space:
        """Chroma space matching the model's similarity (cosine for HEAL models)."""
        return _SPACES.get(self.encoder.similarity_fn_name, "cosine")  # type: ignore[return-value]

    def supported_spaces(self) -> list[Space]:
        """Spaces the vectors make sense in."""
        return ["cosine", "ip", "l2"]

    def get_config(self) -> dict[str, Any]:
        """Primitive-only configuration stored with the collection."""
        return {
            "model_path": self.model_path,
            "fingerprint": self.encoder.fingerprint,
            "batch_size": self.batch_size,
            "dimension": self.encoder.dimension,
            "backend": self.encoder.backend,
        }

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> HEALEmbeddingFunction:
        """Rebuild from a stored configuration, refusing a model whose fingerprint changed."""
        HEALEmbeddingFunction.validate_config(config)
        return HEALEmbeddingFunction(
            model_path=config["model_path"],
            batch_size=int(config["batch_size"]),
            fingerprint=config["fingerprint"],
            backend=str(config.get("backend", "torch")),
        )

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        """Check that a stored configuration has what :meth:`build_from_config` needs."""
        missing = {"model_path", "fingerprint", "batch_size"} - set(config)
        if missing:
            raise ValueError(f"heal_rag embedding-function config is missing {sorted(missing)}.")

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        """Refuse switching a collection to a different model."""
        if new_config.get("fingerprint") not in (None, old_config.get("fingerprint")):
            raise StaleModelError("A collection cannot switch to a different model; build a new collection.")

    @property
    def fingerprint(self) -> str:
        """The model's content fingerprint."""
        return self.encoder.fingerprint

    def embed_as_array(self, texts: list[str]) -> np.ndarray:
        """Document embeddings as one ``(n, dimension)`` array (what :func:`build_index` upserts)."""
        return self.encoder.embed_documents(texts)
