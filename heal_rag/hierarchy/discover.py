"""Glue between HNMFk and the rest of heal_rag: discovered labels for training, and label files on disk."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from heal_rag.artifacts import write_json_atomic, write_text_atomic
from heal_rag.hierarchy.hnmfk import HNMFk
from heal_rag.labels import LabelPaths


def discover_labels(
    texts: Sequence[str], *, max_depth: int = 2, random_state: int = 0, show_progress: bool = True, **params: Any
) -> tuple[HNMFk, LabelPaths]:
    """Fit :class:`HNMFk` on ``texts`` and return it with the discovered label paths (node ids, soft weights).

    Args:
        texts: The corpus.
        max_depth: Levels to discover.
        random_state: Seed.
        show_progress: Progress bar over nodes.
        **params: Any other :class:`HNMFk` argument (``k_range``, ``n_perturbations``, ``n_jobs``, ...).
    """
    params.setdefault("n_jobs", -1)
    model = HNMFk(max_depth=max_depth, random_state=random_state, show_progress=show_progress, **params)
    return model, model.fit_transform(texts)


def discover_training_labels(
    texts: Sequence[str], *, max_depth: int = 2, random_state: int = 0, show_progress: bool = True
) -> tuple[LabelPaths, dict[str, str], str]:
    """Labels to train on, discovered once per run (one HNMFk, not one per ``torchrun`` rank).

    Under ``torchrun`` rank 0 fits HNMFk and every rank gets its labels
    (:func:`heal_rag.distributed.broadcast_from_main_process`).

    Returns:
        The label paths (see :func:`discover_labels`), readable node names, and the tree as text for printing.
    """
    from heal_rag.distributed import broadcast_from_main_process

    def discover() -> tuple[LabelPaths, dict[str, str], str]:
        hnmfk, labels = discover_labels(
            texts, max_depth=max_depth, random_state=random_state, show_progress=show_progress
        )
        return labels, hnmfk.node_names(), hnmfk.format_tree(max_children=8)

    return broadcast_from_main_process(discover)


def write_labels_jsonl(
    path: str | os.PathLike[str],
    ids: Sequence[str],
    labels: LabelPaths,
    node_names: dict[str, str],
    memberships: list[list[list[tuple[str, float]]]] | None = None,
) -> None:
    """Write ``{"id", "labels", "label_names", "weights"[, "memberships"]}`` per document, atomically."""
    labels.check_length(len(ids), "ids")
    lines = []
    for index, (doc_id, path_ids) in enumerate(zip(ids, labels.paths, strict=True)):
        record: dict[str, Any] = {
            "id": doc_id,
            "labels": list(path_ids),
            "label_names": [node_names.get(node_id, node_id) for node_id in path_ids],
            "weights": [round(w, 4) for w in (labels.weights[index] if labels.weights else [1.0] * len(path_ids))],
        }
        if memberships is not None:
            record["memberships"] = [
                [[node, round(share, 4)] for node, share in level] for level in memberships[index]
            ]
        lines.append(json.dumps(record, ensure_ascii=False))
    write_text_atomic(path, "\n".join(lines) + "\n")


def is_labels_file(path: Path) -> bool:
    """Whether ``path`` is a labels file :func:`write_labels_jsonl` wrote (judged by its first record)."""
    try:
        with path.open(encoding="utf-8") as handle:
            first = json.loads(handle.readline())
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and {"id", "labels", "label_names", "weights"} <= set(first)


def is_tree_file(path: Path) -> bool:
    """Whether ``path`` is a hierarchy :func:`write_tree` wrote: its JSON, or the text view beside that JSON."""
    if path.suffix == ".txt":
        return path.read_text(encoding="utf-8", errors="replace").startswith("root  (") and is_tree_file(
            path.with_suffix(".json")
        )
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(payload, dict) and {"params", "n_terms", "tree"} <= set(payload)


def write_tree(model: HNMFk, json_path: str | os.PathLike[str]) -> None:
    """Write the fitted hierarchy as JSON and, beside it (``.txt``), as a readable text tree."""
    write_json_atomic(json_path, model.to_dict())
    write_text_atomic(os.path.splitext(json_path)[0] + ".txt", model.format_tree() + "\n")
