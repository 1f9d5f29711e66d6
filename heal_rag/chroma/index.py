"""Building a Chroma collection from a corpus with a HEAL model: batched, idempotent upserts, stale-model refusal."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import chromadb
from chromadb.config import Settings
from tqdm.auto import tqdm

from heal_rag.chroma.embedding_function import HEALEmbeddingFunction, StaleModelError
from heal_rag.data import Corpus
from heal_rag.encoder import HEALEncoder
from heal_rag.rerank import PATH_KEY, path_metadata

FINGERPRINT_KEY = "heal_fingerprint"


def open_client(db_path: str | os.PathLike[str]) -> Any:
    """A persistent Chroma client at ``db_path`` (telemetry off: nothing leaves the machine)."""
    return chromadb.PersistentClient(path=str(db_path), settings=Settings(anonymized_telemetry=False))


def open_collection(db_path: str | os.PathLike[str], collection_name: str) -> Any:
    """Reopen a collection built by :func:`build_index`; its embedding function is rebuilt from the stored config."""
    return open_client(db_path).get_collection(collection_name)


def _chroma_metadata(path: Sequence[str] | None, extra: dict[str, Any]) -> dict[str, Any]:
    metadata = {k: v for k, v in extra.items() if isinstance(v, (str, int, float, bool)) and k != PATH_KEY}
    if path:
        entries = path_metadata(path)
        entries[PATH_KEY] = " > ".join(path)  # a string: portable across Chroma, LangChain and LlamaIndex filters
        metadata.update(entries)
    return metadata


def build_index(
    model: str | os.PathLike[str] | HEALEncoder | None,
    corpus: Corpus,
    db_path: str | os.PathLike[str],
    collection_name: str = "heal_rag",
    batch_size: int = 256,
    rebuild: bool = False,
    show_progress: bool = True,
) -> Any:
    """Embed ``corpus`` with a HEAL model and upsert it into a persistent Chroma collection.

    Upserts go by document id in batches, so re-running is idempotent. Each record's metadata holds the label
    path (``heal_path`` as ``"A > B"`` and flat ``heal_l0``, ``heal_l1``, ...; predicted by the model when the corpus
    has no labels) and the title. The collection records the model fingerprint; a collection built by a different
    model is refused with :class:`~heal_rag.chroma.StaleModelError` unless ``rebuild=True`` (which drops it first).

    Args:
        model: Model directory or loaded encoder.
        corpus: Documents to index.
        db_path: Chroma persistence directory.
        collection_name: 3–512 characters of ``[a-zA-Z0-9._-]``.
        batch_size: Documents per upsert.
        rebuild: Drop an existing collection of that name first.
        show_progress: Progress bar.

    Returns:
        The Chroma collection.
    """
    encoder = model if isinstance(model, HEALEncoder) else HEALEncoder.load(model)
    function = HEALEmbeddingFunction(encoder=encoder)
    client = open_client(db_path)
    existing = {c.name for c in client.list_collections()}
    if collection_name in existing and rebuild:
        client.delete_collection(collection_name)
    elif collection_name in existing:
        stored = client.get_collection(collection_name, embedding_function=function).metadata or {}
        if stored.get(FINGERPRINT_KEY) != function.fingerprint:
            raise StaleModelError(
                f"Collection {collection_name!r} in {str(db_path)!r} was built by a different model (fingerprint "
                f"{str(stored.get(FINGERPRINT_KEY))[:19]}…); {encoder.model_path!r} is {function.fingerprint[:19]}…. "
                "Vectors of different models are not comparable, even at the same width: index into a new "
                "collection, or rebuild this one (--rebuild / rebuild=True)."
            )
    collection = client.get_or_create_collection(
        collection_name,
        embedding_function=function,
        metadata={FINGERPRINT_KEY: function.fingerprint, "heal_model_path": str(encoder.model_path)},
    )

    paths: list[Sequence[str] | None] = [None] * len(corpus)
    if corpus.labels is not None:
        paths = list(corpus.labels.paths)

    progress = tqdm(total=len(corpus), desc="indexing", unit="doc", disable=not show_progress)
    for start in range(0, len(corpus), batch_size):
        stop = min(start + batch_size, len(corpus))
        texts = corpus.texts[start:stop]
        embeddings = function.embed_as_array(texts)
        batch_paths = paths[start:stop]
        if encoder.label_tree is not None and any(p is None for p in batch_paths):
            ids, _ = encoder.predict_level_ids(embeddings)
            tree = encoder.label_tree
            batch_paths = [
                p if p is not None else tree.path_of(tree.depth - 1, int(row[-1]))
                for p, row in zip(batch_paths, ids, strict=True)
            ]
        metadatas = [
            _chroma_metadata(path, {"title": title} if title else {})
            for path, title in zip(batch_paths, corpus.titles[start:stop], strict=True)
        ]
        collection.upsert(
            ids=corpus.ids[start:stop],
            documents=texts,
            embeddings=embeddings,
            metadatas=[m or None for m in metadatas],
        )
        progress.update(stop - start)
    progress.close()
    return collection
