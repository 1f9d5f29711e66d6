"""``HEALEncoder``: the one encoder core every adapter (LangChain, LlamaIndex, Chroma) shares.

It embeds queries and documents with the model's own query/document prompts (``encode_query`` /
``encode_document``), returns L2-normalised vectors, knows the label tree and per-level centroids saved in
``heal_rag.json``, predicts label paths, and carries the model fingerprint that vector stores check.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heal_rag._pool import EncoderProcessError as EncoderProcessError  # where users of HEALEncoder look
from heal_rag._pool import dead_workers, encoder_pool, encoder_process_error
from heal_rag._validation import check_choice, check_int, check_real
from heal_rag._warning import HEALWarning
from heal_rag.artifacts import METADATA_FILE, centroids_from_metadata, model_fingerprint, read_metadata

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

#: How many recent query embeddings an encoder keeps.
QUERY_CACHE_SIZE = 256
#: The most texts one multi-process worker task holds (large calls are still spread over the workers).
POOL_CHUNK_SIZE = 1024


class TruncationWarning(HEALWarning):
    """Texts longer than the model's ``max_seq_length`` were cut: their ending did not reach the embedding."""


@dataclass(frozen=True)
class PathPrediction:
    """A predicted label path with its probability at every level.

    Attributes:
        path: Label parts, most general first (e.g. ``("Physics", "Optics")``).
        level_ids: Label id at each level (indexes the level's entries in ``heal_rag.json``).
        probabilities: Probability of the chosen label at each level.
    """

    path: tuple[str, ...]
    level_ids: tuple[int, ...]
    probabilities: tuple[float, ...]


class LabelTree:
    """The label tree of a HEAL model (from ``heal_rag.json``): label paths, parents and centroids per level."""

    def __init__(self, payload: dict[str, Any], centroids: list[np.ndarray]) -> None:
        self.levels = payload["levels"]
        self.depth = int(payload["depth"])
        self.centroids = centroids
        self._id_of = [{tuple(path): index for index, path in enumerate(level["paths"])} for level in self.levels]

    def n_labels(self, level: int) -> int:
        """Number of labels at ``level``."""
        return len(self.levels[level]["paths"])

    def path_of(self, level: int, label_id: int) -> tuple[str, ...]:
        """The label path (prefix) of label ``label_id`` at ``level``."""
        return tuple(self.levels[level]["paths"][label_id])

    def leaf_path(self, label_id: int) -> tuple[str, ...]:
        """The path of leaf ``label_id`` as people wrote it, without the padding of shorter paths.

        A path shorter than the tree is padded with its leaf (``("sklearn", "tree", "tree")``); this gives it back as
        written (``("sklearn", "tree")``).
        """
        path = self.path_of(self.depth - 1, label_id)
        while len(path) > 1 and path[-1] == path[-2]:
            path = path[:-1]
        return path

    def display_name(self, level: int, label_id: int) -> str:
        """Readable name of a label (HNMFk names for discovered hierarchies, else the label itself)."""
        names = self.levels[level].get("display_names")
        return names[label_id] if names else self.path_of(level, label_id)[-1]

    def parents(self, level: int) -> np.ndarray | None:
        """Parent id of every label at ``level`` (``None`` at level 0)."""
        parents = self.levels[level]["parents"]
        return None if parents is None else np.asarray(parents)

    def ids_for_path(self, path: Sequence[str]) -> list[int]:
        """Label id at each level for a path (padded with its leaf when shorter); -1 where the prefix is unknown."""
        path = tuple(str(p) for p in path)
        if not path:
            return [-1] * self.depth
        padded = path + (path[-1],) * max(0, self.depth - len(path))
        return [self._id_of[level].get(padded[: level + 1], -1) for level in range(self.depth)]


class HEALEncoder:
    """Embeddings, label paths and fingerprint of a (HEAL-tuned) sentence-transformers model.

    Args:
        model: A loaded ``SentenceTransformer``.
        metadata: The model's ``heal_rag.json`` payload, or ``None`` for a plain model (no label tree).
        model_path: Where the model was loaded from (kept for configs and error messages).
        batch_size: Encoding batch size.
        normalize_embeddings: Return unit-length vectors (cosine similarity = dot product).
        runtime: An exported backend to encode with (see :mod:`heal_rag.backends`); ``None``: PyTorch.

    Example:
        ```python
        from heal_rag.encoder import HEALEncoder

        encoder = HEALEncoder.load("models/heal-minilm")
        vectors = encoder.embed_documents(["Cooper pairs condense ...", "Prime gaps ..."])
        query = encoder.embed_query("superconductivity")
        encoder.predict_path(["superconductivity in cuprates"])[0].path
        ```
    """

    def __init__(
        self,
        model: SentenceTransformer,
        metadata: dict[str, Any] | None = None,
        model_path: str | None = None,
        batch_size: int = 32,
        normalize_embeddings: bool = True,
        runtime: Any = None,
    ) -> None:
        check_int("batch_size", batch_size, minimum=1)
        self.runtime = runtime
        self.backend = "torch" if runtime is None else runtime.backend
        self.model = model
        self.metadata = metadata
        self.model_path = model_path
        self.batch_size = batch_size
        self.normalize_embeddings = normalize_embeddings
        # Chains embed the same query more than once (vector store, then reranker): keep the last few.
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        #: Texts embedded so far that were longer than ``max_seq_length`` (cut to their beginning).
        self.truncated_texts = 0
        self._pool: dict[str, Any] | None = None

    @contextlib.contextmanager
    def multi_process(self, processes: int) -> Iterator[HEALEncoder]:
        """Embed documents with ``processes`` worker processes inside the ``with`` block.

        Uses sentence-transformers' multi-process pool (one worker per GPU when there are enough GPUs, else per
        CPU process); the pool is stopped when the block ends, also on error. ``processes=1`` changes nothing. For
        large index builds (``build_index(processes=...)``, ``heal-rag index --processes``); whether it pays on a
        given machine is measured by ``benchmarks/index_build.py``. A terminal's Ctrl-C interrupts this process
        alone, which stops the workers; a watchdog stops them if this process is killed without cleanup.

        Raises:
            ValueError: For ``processes < 1``, or with an exported backend (ONNX Runtime and OpenVINO already use
                every core in one process).
            EncoderProcessError: From the block's calls, when a worker process has died (killed, or out of memory).
                One that died after its last task gives a :class:`~heal_rag.HEALWarning` when the block ends.
        """
        check_int("processes", processes, minimum=1)
        if processes > 1 and self.runtime is not None:
            raise ValueError(
                f"processes={processes} applies to the torch backend; the {self.backend} backend already uses every "
                "core in one process (use processes=1)."
            )
        if processes == 1 or self._pool is not None:
            yield self
            return
        import torch

        gpus = torch.cuda.device_count()
        devices = [f"cuda:{i}" for i in range(processes)] if gpus >= processes else ["cpu"] * processes
        with encoder_pool(self.model, devices) as pool:
            self._pool = pool
            try:
                yield self
            finally:
                self._pool = None

    def _pool_chunk_size(self, texts: int) -> int | None:
        """Texts per task sent to a worker: an equal share of a call, at most ``POOL_CHUNK_SIZE``.

        sentence-transformers' default cuts a call into ten tasks per worker: for an index build's batch of 256
        that is tasks of 13 texts, padded and sent one at a time, and two CPU workers embedded 14.8 documents/s
        against one process's 21.6 (``benchmarks/index_build.py``). One share per worker removes that overhead.
        """
        if self._pool is None:
            return None
        return max(1, min(math.ceil(texts / len(self._pool["processes"])), POOL_CHUNK_SIZE))

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str | None = None,
        batch_size: int = 32,
        normalize_embeddings: bool = True,
        backend: str = "torch",
    ) -> HEALEncoder:
        """Load a model directory written by :func:`heal_rag.fine_tune` (or any sentence-transformers model).

        Args:
            model: Model directory, or ``None`` for the embedded all-MiniLM-L6-v2 (then without label tree).
            device: Torch device.
            batch_size: Encoding batch size.
            normalize_embeddings: Return unit-length vectors.
            backend: ``"torch"`` (default), or an exported backend (``"onnx"``, ``"onnx-int8"``, ``"openvino"``,
                ``"openvino-bf16"``, ``"openvino-int8"``; see :mod:`heal_rag.backends` and ``heal-rag export``).

        Raises:
            heal_rag.models.ModelNotFoundError: When the model is not found locally.
            heal_rag.models.UnsafeModelError: When its weights are pickles.
            heal_rag.models.CorruptModelError: When a file of it is damaged.
            heal_rag.artifacts.MetadataError: When ``heal_rag.json`` is damaged or its files changed after it was
                written (a retrained or swapped model in the same directory).
            heal_rag.backends.ExportError: When the backend was not exported, or its file changed since.
        """
        from heal_rag.backends import BACKENDS, RuntimeEncoder, checked_export
        from heal_rag.models import check_model_files, load_sentence_transformer, resolve_model_path

        check_choice("backend", backend, BACKENDS)
        path = resolve_model_path(model)
        check_model_files(path)  # pickles and damaged files are named before heal_rag.json is compared with them
        metadata = read_metadata(path, verify_files=True) if (Path(path) / METADATA_FILE).is_file() else None
        loaded = load_sentence_transformer(path, device=device)
        runtime = None
        if backend != "torch":
            record = checked_export(path, metadata, backend)
            runtime = RuntimeEncoder(loaded, path, backend, expected_sha256=record["sha256"])
        return cls(
            loaded,
            metadata=metadata,
            model_path=path,
            batch_size=batch_size,
            normalize_embeddings=normalize_embeddings,
            runtime=runtime,
        )

    def _prompt(self, prompt_name: str) -> str:
        prompts = getattr(self.model, "prompts", None) or {}
        names = ("query",) if prompt_name == "query" else ("document", "passage", "corpus")
        return next((prompts[n] for n in names if prompts.get(n)), "")

    # ------------------------------------------------------------------ embeddings
    def embed_documents(self, texts: Sequence[str], show_progress_bar: bool = False) -> np.ndarray:
        """Embed documents (``encode_document``: the model's document prompt), shape ``(n, dimension)``."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        self._note_truncation(texts, "document")
        if self.runtime is not None:
            return self.runtime.encode(texts, self._prompt("document"), self.batch_size)
        # the other workers might still answer, or one wait for ever on a queue lock the dead one held
        if dead_workers(self._pool):
            raise encoder_process_error(self._pool)
        return np.asarray(
            self.model.encode_document(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=self.normalize_embeddings,
                show_progress_bar=show_progress_bar,
                convert_to_numpy=True,
                pool=self._pool,
                chunk_size=self._pool_chunk_size(len(texts)),
            ),
            dtype=np.float32,
        )

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed queries (``encode_query``: the model's query prompt), shape ``(n, dimension)``."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if len(texts) == 1 and texts[0] in self._query_cache:
            return self.embed_query(texts[0])[None, :]
        self._note_truncation(texts, "query")
        if self.runtime is not None:
            return self.runtime.encode(texts, self._prompt("query"), self.batch_size)
        return np.asarray(
            self.model.encode_query(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=self.normalize_embeddings,
                convert_to_numpy=True,
            ),
            dtype=np.float32,
        )

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one query, shape ``(dimension,)``; the last :data:`QUERY_CACHE_SIZE` queries are cached."""
        if not isinstance(text, str):
            raise TypeError(f"embed_query takes a string, got {type(text).__name__}.")
        cached = self._query_cache.get(text)
        if cached is None:
            cached = self.embed_queries([text])[0]
            self._query_cache[text] = cached
            if len(self._query_cache) > QUERY_CACHE_SIZE:
                self._query_cache.popitem(last=False)
        else:
            self._query_cache.move_to_end(text)
        return cached.copy()

    @property
    def max_seq_length(self) -> int | None:
        """Tokens the model reads per text (longer texts are cut); ``None`` for models without a limit."""
        limit = getattr(self.model, "max_seq_length", None)
        return int(limit) if isinstance(limit, (int, float)) and math.isfinite(limit) else None

    def count_truncated(self, texts: Sequence[str], prompt_name: str = "document") -> int:
        """How many of ``texts`` (with the model's prompt) exceed :attr:`max_seq_length` tokens."""
        return count_truncated(self.model, texts, prompt_name)

    def _note_truncation(self, texts: Sequence[str], prompt_name: str) -> None:
        """Count texts cut at ``max_seq_length``; warn the first time, with the count."""
        truncated = self.count_truncated(texts, prompt_name)
        if not truncated:
            return
        first = self.truncated_texts == 0
        self.truncated_texts += truncated
        if first:
            warnings.warn(
                f"{truncated} of {len(texts)} texts are longer than the model's max_seq_length "
                f"({self.max_seq_length} tokens) and are embedded from their beginning only; what comes after is "
                "ignored. Split long documents into chunks (heal_rag.documents.chunk_documents, or heal-rag "
                "train/index --data DIR, which chunk for you). This warning is shown once per encoder; "
                "HEALEncoder.truncated_texts keeps the count.",
                TruncationWarning,
                stacklevel=3,
            )

    @cached_property
    def dimension(self) -> int:
        """Embedding width."""
        return int(self.model.get_embedding_dimension())

    @property
    def similarity_fn_name(self) -> str:
        """The model's similarity (``"cosine"``, ``"dot"``, ...)."""
        return str(self.model.similarity_fn_name or "cosine")

    @cached_property
    def fingerprint(self) -> str:
        """Content fingerprint of what gives the vectors: the model files, and an int8 backend's file.

        The model files' fingerprint comes from ``heal_rag.json`` (computed for a plain model directory). fp32 and
        bf16 backends give PyTorch's vectors to within :data:`heal_rag.backends.FP32_TOLERANCE`, so they share the
        model's fingerprint; int8 vectors differ more, so a collection built with one accepts only it.
        """
        if self.metadata is not None:
            base = str(self.metadata["fingerprint"])
            if self.backend.endswith("int8"):
                return f"{base}|{self.backend}|{self.metadata['exports'][self.backend]['sha256']}"
            return base
        if self.model_path and Path(self.model_path).is_dir():
            return model_fingerprint(self.model_path)
        return f"name:{self.model_path}"

    # ------------------------------------------------------------------ hierarchy
    @cached_property
    def label_tree(self) -> LabelTree | None:
        """The label tree and centroids, or ``None`` for a model without ``heal_rag.json``."""
        if self.metadata is None:
            return None
        return LabelTree(self.metadata["label_tree"], centroids_from_metadata(self.metadata))

    def _require_tree(self) -> LabelTree:
        if self.label_tree is None:
            raise ValueError(
                f"Model {self.model_path!r} has no heal_rag.json, so it has no label tree: label paths need a model "
                "trained with heal_rag.fine_tune (or pass label paths in the documents' metadata)."
            )
        return self.label_tree

    def level_probabilities(self, embeddings: np.ndarray, temperature: float = 0.05) -> list[np.ndarray]:
        """Per level, ``softmax(similarity to each label centroid / temperature)``, shape ``(n, n_labels)``.

        Raises:
            ValueError: When ``temperature`` is not a finite number > 0.
        """
        check_real("temperature", temperature, minimum=0, min_open=True)
        tree = self._require_tree()
        out = []
        for centroids in tree.centroids:
            logits = np.asarray(embeddings, dtype=np.float64) @ centroids.T.astype(np.float64) / temperature
            logits -= logits.max(axis=1, keepdims=True)
            probabilities = np.exp(logits)
            out.append(probabilities / probabilities.sum(axis=1, keepdims=True))
        return out

    def predict_level_ids(
        self, embeddings: np.ndarray, temperature: float = 0.05, consistent: bool = True
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Label id per level for each embedding, with the per-level probabilities.

        Args:
            embeddings: ``(n, dimension)`` vectors.
            temperature: Softmax temperature over centroid similarities.
            consistent: Choose top-down, each level among the children of the label chosen above (default); else
                the most likely label at every level independently.

        Returns:
            ``(ids, probabilities)``: ids of shape ``(n, depth)`` and :meth:`level_probabilities`.
        """
        tree = self._require_tree()
        probabilities = self.level_probabilities(embeddings, temperature)
        ids = np.zeros((len(embeddings), tree.depth), dtype=np.int64)
        for level in range(tree.depth):
            scores = probabilities[level].copy()
            parents = tree.parents(level)
            if consistent and parents is not None:
                scores[parents[None, :] != ids[:, level - 1 : level]] = -1.0
            ids[:, level] = scores.argmax(axis=1)
        return ids, probabilities

    def predict_path(
        self, texts: Sequence[str], temperature: float = 0.05, consistent: bool = True, as_query: bool = True
    ) -> list[PathPrediction]:
        """Predict a label path per text from its similarity to the label centroids.

        Args:
            texts: Texts to classify.
            temperature: Softmax temperature over centroid similarities.
            consistent: Top-down choice within the chosen parent (default), or independent per level.
            as_query: Embed as queries (default) or as documents.
        """
        tree = self._require_tree()
        embeddings = self.embed_queries(texts) if as_query else self.embed_documents(texts)
        ids, probabilities = self.predict_level_ids(embeddings, temperature, consistent)
        return [
            PathPrediction(
                path=tree.leaf_path(int(row[-1])),
                level_ids=tuple(int(i) for i in row),
                probabilities=tuple(float(probabilities[level][n, row[level]]) for level in range(tree.depth)),
            )
            for n, row in enumerate(ids)
        ]


def count_truncated(model: Any, texts: Sequence[str], prompt_name: str = "document") -> int:
    """How many of ``texts`` a SentenceTransformer cuts at its ``max_seq_length`` (with its query/document prompt).

    Returns 0 for models without a token limit or a Hugging Face tokenizer (e.g. ``StaticEmbedding``).
    """
    limit = getattr(model, "max_seq_length", None)
    tokenizer = getattr(model, "tokenizer", None)
    if not isinstance(limit, int) or limit <= 0 or not callable(tokenizer):
        return 0
    prompts = getattr(model, "prompts", None) or {}
    names = ("query",) if prompt_name == "query" else ("document", "passage", "corpus")
    prompt = next((prompts[n] for n in names if n in prompts), "")
    # Only texts long enough in bytes can be too long in tokens: every token but the few special ones covers at
    # least one byte of UTF-8 (WordPiece and byte-level BPE alike), so short texts skip the tokenizer.
    candidates = [prompt + text for text in texts if len((prompt + text).encode("utf-8")) > limit - 8]
    if not candidates:
        return 0
    lengths = tokenizer(candidates, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    return sum(len(ids) > limit for ids in lengths)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("Expected a list of strings, got a single string; wrap it in a list.")
    texts = list(texts)
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"Every text must be a string, got {type(text).__name__}.")
    return texts
