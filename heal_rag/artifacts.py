"""What a HEAL model directory holds beside the sentence-transformers files: ``heal_rag.json``.

``heal_rag.json`` records the label tree, per-level label centroids in the tuned space, the training settings and a
content fingerprint of the model files, so adapters can predict label paths and vector stores can detect a stale
model. Every file here is written atomically (temporary path, then rename; see :mod:`heal_rag.outputs`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from heal_rag.labels import LabelPaths
from heal_rag.outputs import atomic_directory, unrecorded_files

__all__ = [
    "METADATA_FILE",
    "atomic_directory",
    "build_metadata",
    "label_centroids",
    "model_fingerprint",
    "read_metadata",
    "write_json_atomic",
    "write_text_atomic",
]

METADATA_FILE = "heal_rag.json"
FORMAT_VERSION = 1
# Files that change without the weights changing (model card, our own metadata) stay out of the fingerprint.
_FINGERPRINT_EXCLUDE = {METADATA_FILE, "README.md"}


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and an atomic rename.

    Missing parent folders are created (a checked output path such as ``labels/run1/l.jsonl`` may not exist yet).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp_name, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    """Write JSON to ``path`` atomically (see :func:`write_text_atomic`).

    Raises:
        ValueError: When ``payload`` holds NaN or infinity, which JSON cannot represent (nothing is written).
    """
    write_text_atomic(path, json.dumps(payload, ensure_ascii=False, allow_nan=False))


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def model_fingerprint(model_dir: str | os.PathLike[str]) -> str:
    """SHA-256 over the relative paths and bytes of a model directory's files (model card excluded).

    Two directories with the same weights, tokenizer and configuration have the same fingerprint; any fine-tune
    changes it, even one that keeps the embedding width. Files a user added to a directory heal_rag wrote (notes, a
    label file; see :func:`heal_rag.outputs.unrecorded_files`) do not count: they change no weights.
    """
    root = Path(model_dir)
    added = set(unrecorded_files(root))
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = file.relative_to(root).as_posix()
        parts = file.relative_to(root).parts
        if relative in _FINGERPRINT_EXCLUDE or parts[0] == "exports" or any(p.startswith(".") for p in parts):
            continue
        if relative in added:
            continue
        digest.update(relative.encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def label_centroids(embeddings: np.ndarray, labels: LabelPaths) -> list[np.ndarray]:
    """Per level, the L2-normalised mean embedding of each label (rows ordered by label id).

    Masked texts do not count towards a level; soft weights weight the mean.
    """
    if len(embeddings) != len(labels):
        raise ValueError(f"Got {len(embeddings)} embeddings for {len(labels)} label paths.")
    ids = labels.level_ids()
    weights = labels.level_weights()
    centroids = []
    for level in range(labels.depth):
        n_labels = labels.n_labels(level)
        sums = np.zeros((n_labels, embeddings.shape[1]), dtype=np.float64)
        valid = ids[:, level] >= 0
        np.add.at(sums, ids[valid, level], embeddings[valid] * weights[valid, level, None])
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids.append((sums / np.maximum(norms, 1e-12)).astype(np.float32))
    return centroids


def label_tree_payload(labels: LabelPaths, label_names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The label tree in ``heal_rag.json``: per level the label paths, names, parents and counts.

    ``label_names`` maps a label part to a readable name (e.g. HNMFk node ids to their top terms); it fills each
    level's ``display_names`` (the label itself where no name is given).
    """
    ids = labels.level_ids()
    levels = []
    for level in range(labels.depth):
        counts = np.bincount(ids[ids[:, level] >= 0, level], minlength=labels.n_labels(level))
        prefixes = labels.level_prefixes(level)
        levels.append(
            {
                "paths": [list(prefix) for prefix in prefixes],
                "names": labels.level_names(level),
                "display_names": [(label_names or {}).get(prefix[-1], prefix[-1]) for prefix in prefixes],
                "parents": None if level == 0 else labels.parent_ids(level).tolist(),
                "counts": counts.tolist(),
            }
        )
    return {"depth": labels.depth, "ragged": labels.ragged, "levels": levels, "tree": labels.tree()}


def build_metadata(
    *,
    labels: LabelPaths,
    centroids: list[np.ndarray],
    fingerprint: str,
    base_model: str,
    embedding_dimension: int,
    similarity_fn_name: str,
    training: dict[str, Any],
    label_names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Assemble the ``heal_rag.json`` payload."""
    from heal_rag._version import __version__

    return {
        "format_version": FORMAT_VERSION,
        "heal_rag_version": __version__,
        "base_model": base_model,
        "embedding_dimension": embedding_dimension,
        "similarity_fn_name": similarity_fn_name,
        "fingerprint": fingerprint,
        "label_tree": label_tree_payload(labels, label_names),
        "centroids": {f"level_{level}": np.round(c, 6).tolist() for level, c in enumerate(centroids)},
        "training": training,
    }


class MetadataError(ValueError):
    """A model directory's ``heal_rag.json`` is damaged, not heal_rag's, or no longer matches the model's files."""


def read_metadata(model_dir: str | os.PathLike[str], verify_files: bool = False) -> dict[str, Any]:
    """Read and check ``heal_rag.json`` from a HEAL model directory.

    Args:
        model_dir: The model directory.
        verify_files: Also recompute the fingerprint of the model's files and compare it with the recorded one.

    Raises:
        FileNotFoundError: When there is no ``heal_rag.json``.
        MetadataError: When it is not valid JSON, lacks what a heal_rag model description holds, was written by a
            newer heal_rag, or (``verify_files``) the weights or tokenizer changed after it was written.
    """
    path = Path(model_dir) / METADATA_FILE
    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"Model directory {str(model_dir)!r} does not exist.")
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(model_dir)!r} has no {METADATA_FILE}: it is not a heal_rag model directory "
            "(train one with heal_rag.fine_tune or `heal-rag train`)."
        )
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetadataError(f"{path} is not valid JSON ({exc}); restore it or re-train the model.") from None
    problem = _metadata_problem(payload)
    if problem:
        raise MetadataError(f"{path} is not a heal_rag model description ({problem}); restore it or re-train.")
    if payload["format_version"] > FORMAT_VERSION:
        raise MetadataError(f"{path} was written by a newer heal_rag (format {payload['format_version']}); upgrade.")
    if verify_files and model_fingerprint(model_dir) != payload["fingerprint"]:
        raise MetadataError(
            f"The files of {str(model_dir)!r} changed after its {METADATA_FILE} was written: its label tree, "
            "centroids and fingerprint describe other weights, and a vector store could not tell the two apart. "
            "Re-train into a new directory, or restore the original files."
        )
    return payload


def _metadata_problem(payload: Any) -> str:
    """What a ``heal_rag.json`` payload lacks, or ``""``."""
    if not isinstance(payload, dict):
        return f"a JSON {type(payload).__name__}, not an object"
    needed = {"format_version": int, "fingerprint": str, "label_tree": dict, "centroids": dict}
    for key, kind in needed.items():
        if not isinstance(payload.get(key), kind):
            return f"{key!r} missing or not a {kind.__name__}"
    tree = payload["label_tree"]
    depth = tree.get("depth")
    if (
        not isinstance(depth, int)
        or depth < 1
        or not isinstance(tree.get("levels"), list)
        or len(tree["levels"]) != depth
    ):
        return "the label tree's depth and levels disagree"
    missing = [
        f"level_{level}" for level in range(depth) if not isinstance(payload["centroids"].get(f"level_{level}"), list)
    ]
    return f"centroids for {missing[0]} missing" if missing else ""


def centroids_from_metadata(metadata: dict[str, Any]) -> list[np.ndarray]:
    """Per-level centroid matrices from a ``heal_rag.json`` payload."""
    depth = metadata["label_tree"]["depth"]
    return [np.asarray(metadata["centroids"][f"level_{level}"], dtype=np.float32) for level in range(depth)]
