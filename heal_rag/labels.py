"""Hierarchical label paths: the labels HEAL trains on.

A document's label is a *path* through a hierarchy, most general first, e.g.
``("Physics", "Condensed Matter", "Superconductivity")``. The label of a document at level ``l`` is the path
prefix up to ``l``, so labels are nested by construction: two leaves with the same name under different parents
are different labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

RaggedMode = Literal["pad", "mask"]

#: Id used for "no label at this level" (only with ``ragged="mask"``).
MASKED = -1

#: Separator used when a path prefix is shown as one string.
PATH_SEPARATOR = " > "


class LabelPathError(ValueError):
    """Raised when label paths (or their weights) are malformed."""


@dataclass(frozen=True)
class LabelPaths:
    """Label paths of a collection of texts, with optional per-level membership weights.

    Paths may have different depths. With ``ragged="pad"`` (default) a shorter path repeats its leaf at deeper
    levels; with ``ragged="mask"`` the text has no label at those levels and is neither an anchor nor a positive
    there.

    Args:
        paths: One path per text, each a non-empty sequence of non-empty strings, most general first.
        weights: Optional soft membership weight in ``[0, 1]`` per text and level (e.g. from HNMFk). Each row has
            the length of its path; padded levels reuse the leaf's weight. Defaults to 1 everywhere.
        ragged: How paths shorter than the deepest one are treated: ``"pad"`` or ``"mask"``.

    Example:
        ```python
        from heal_rag import LabelPaths

        labels = LabelPaths([["Physics", "Optics"], ["Physics", "Plasma"], ["Maths"]])
        labels.depth                 # 2
        labels.level_ids()           # [[1, 1], [1, 2], [0, 0]]; ids are nested: level 1 id names the prefix
        labels.level_names(1)        # ['Maths > Maths', 'Physics > Optics', 'Physics > Plasma']
        ```
    """

    paths: tuple[tuple[str, ...], ...]
    weights: tuple[tuple[float, ...], ...] | None = None
    ragged: RaggedMode = "pad"
    _vocab: tuple[dict[tuple[str, ...], int], ...] = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        paths: Iterable[Sequence[str]],
        weights: Iterable[Sequence[float]] | None = None,
        ragged: RaggedMode = "pad",
    ) -> None:
        if ragged not in ("pad", "mask"):
            raise LabelPathError(f"ragged must be 'pad' or 'mask', got {ragged!r}.")
        if isinstance(paths, (str, bytes)):
            raise LabelPathError("paths must be a list of paths (lists of strings), not a single string.")
        normalised = tuple(validate_path(i, path) for i, path in enumerate(paths))
        if not normalised:
            raise LabelPathError("paths is empty: give one label path per text.")
        normalised_weights = None
        if weights is not None:
            normalised_weights = _validate_weights(normalised, weights)
        object.__setattr__(self, "paths", normalised)
        object.__setattr__(self, "weights", normalised_weights)
        object.__setattr__(self, "ragged", ragged)
        object.__setattr__(self, "_vocab", _build_vocab(self._padded_prefixes()))

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def coerce(cls, labels: LabelPaths | Iterable[Sequence[str]], ragged: RaggedMode = "pad") -> LabelPaths:
        """Return ``labels`` unchanged if it is a :class:`LabelPaths`, else build one from raw paths."""
        return labels if isinstance(labels, LabelPaths) else cls(labels, ragged=ragged)

    def subset(self, indices: Sequence[int]) -> LabelPaths:
        """Paths (and weights) of the texts at ``indices``, as a new object with its own vocabulary."""
        weights = None if self.weights is None else [self.weights[i] for i in indices]
        return LabelPaths([self.paths[i] for i in indices], weights=weights, ragged=self.ragged)

    def with_finest_level(self, labels: Sequence[str]) -> LabelPaths:
        """These paths with one more, finest level appended below the deepest one (e.g. the source document).

        Shorter paths are first extended to the full depth (their leaf repeated, or masked with ``ragged="mask"``
        the level stays masked), so the new level is the finest one for every text. Its weight is 1.

        Example:
            ```python
            LabelPaths([["Physics", "Optics"], ["Maths"]]).with_finest_level(["doc-1", "doc-2"]).paths
            # (("Physics", "Optics", "doc-1"), ("Maths", "Maths", "doc-2"))
            ```
        """
        if len(labels) != len(self):
            raise LabelPathError(f"Got {len(labels)} finest labels for {len(self)} label paths.")
        if self.ragged == "mask" and self.is_ragged:
            raise LabelPathError("with_finest_level needs every path at full depth; use ragged='pad'.")
        depth = self.depth
        paths = [
            path + (path[-1],) * (depth - len(path)) + (str(label),)
            for path, label in zip(self.paths, labels, strict=True)
        ]
        weights = None
        if self.weights is not None:
            weights = [row + (row[-1],) * (depth - len(row)) + (1.0,) for row in self.weights]
        return LabelPaths(paths, weights=weights, ragged=self.ragged)

    def check_length(self, n_texts: int, what: str = "texts") -> None:
        """Raise :class:`LabelPathError` unless there is exactly one path per text."""
        if len(self) != n_texts:
            raise LabelPathError(
                f"Got {n_texts} {what} but {len(self)} label paths: give exactly one label path per text."
            )

    # ------------------------------------------------------------------ basic properties
    def __len__(self) -> int:
        return len(self.paths)

    @property
    def depth(self) -> int:
        """Number of levels (the depth of the deepest path)."""
        return max(len(p) for p in self.paths)

    @property
    def is_ragged(self) -> bool:
        """Whether the paths have different depths."""
        return any(len(p) != self.depth for p in self.paths)

    def _padded_prefixes(self) -> list[list[tuple[str, ...] | None]]:
        depth = max(len(p) for p in self.paths)
        rows: list[list[tuple[str, ...] | None]] = []
        for path in self.paths:
            row: list[tuple[str, ...] | None] = []
            for level in range(depth):
                if level < len(path):
                    row.append(path[: level + 1])
                elif self.ragged == "pad":
                    row.append(path + (path[-1],) * (level + 1 - len(path)))
                else:
                    row.append(None)
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ ids and names
    def level_ids(self) -> np.ndarray:
        """Integer label of every text at every level, shape ``(n_texts, depth)``.

        The id at level ``l`` indexes :meth:`level_names` ``(l)``; it identifies the whole prefix, so equal ids
        mean equal ancestry. Masked levels hold :data:`MASKED` (-1).
        """
        ids = np.full((len(self), self.depth), MASKED, dtype=np.int64)
        for row_index, row in enumerate(self._padded_prefixes()):
            for level, prefix in enumerate(row):
                if prefix is not None:
                    ids[row_index, level] = self._vocab[level][prefix]
        return ids

    def level_weights(self) -> np.ndarray:
        """Membership weight of every text at every level, shape ``(n_texts, depth)``; 0 where masked."""
        out = np.zeros((len(self), self.depth), dtype=np.float64)
        for row_index, path in enumerate(self.paths):
            for level in range(self.depth):
                if level >= len(path) and self.ragged == "mask":
                    continue
                if self.weights is None:
                    out[row_index, level] = 1.0
                else:
                    out[row_index, level] = self.weights[row_index][min(level, len(path) - 1)]
        return out

    def level_prefixes(self, level: int) -> list[tuple[str, ...]]:
        """The distinct label prefixes at ``level``, ordered by id."""
        self._check_level(level)
        vocab = self._vocab[level]
        return sorted(vocab, key=vocab.__getitem__)

    def level_names(self, level: int) -> list[str]:
        """Readable names of the labels at ``level`` (prefixes joined with ``' > '``), ordered by id."""
        return [PATH_SEPARATOR.join(prefix) for prefix in self.level_prefixes(level)]

    def n_labels(self, level: int) -> int:
        """Number of distinct labels at ``level``."""
        self._check_level(level)
        return len(self._vocab[level])

    def parent_ids(self, level: int) -> np.ndarray:
        """For every label at ``level`` (>0), the id of its parent at ``level - 1``."""
        self._check_level(level)
        if level == 0:
            raise LabelPathError("Level 0 labels have no parent.")
        parents = self._vocab[level - 1]
        return np.array([parents[prefix[:-1]] for prefix in self.level_prefixes(level)], dtype=np.int64)

    def tree(self) -> dict[str, Any]:
        """The label tree as nested dicts ``{name: {"count": n, "children": {...}}}`` (padding not shown)."""
        root: dict[str, Any] = {}
        for path in self.paths:
            node = root
            for part in path:
                entry = node.setdefault(part, {"count": 0, "children": {}})
                entry["count"] += 1
                node = entry["children"]
        return root

    def to_label_rows(self, extra_ids: Sequence[int] | None = None) -> list[list[int]] | list[list[float]]:
        """Rows for the ``label`` column of a training dataset, as :class:`~heal_rag.losses.HEALLoss` reads them.

        Without weights each row is the list of level ids (an integer tensor after collation). With weights, each
        row is ``ids + weights`` as floats (a float tensor of width ``2 * n_levels``). ``extra_ids`` appends one
        finer level per row, e.g. the source-document key that pairs queries with their documents (weight 1).
        """
        ids = self.level_ids()
        if extra_ids is not None:
            if len(extra_ids) != len(self):
                raise LabelPathError(f"extra_ids has {len(extra_ids)} entries for {len(self)} label paths.")
            ids = np.concatenate([ids, np.asarray(extra_ids, dtype=np.int64)[:, None]], axis=1)
        if self.weights is None:
            return ids.tolist()
        weights = self.level_weights()
        if extra_ids is not None:
            weights = np.concatenate([weights, np.ones((len(self), 1))], axis=1)
        return np.concatenate([ids.astype(np.float64), weights.astype(np.float64)], axis=1).tolist()

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.depth:
            raise LabelPathError(f"level must be in [0, {self.depth - 1}], got {level}.")


def validate_path(index: int, path: Any) -> tuple[str, ...]:
    """One label path as a tuple of non-empty strings without the level separator.

    Raises:
        LabelPathError: Naming path ``index`` and what is wrong with it.
    """
    if isinstance(path, str):
        raise LabelPathError(
            f"Label path {index} is the string {path!r}; a path is a list of strings, e.g. [{path!r}]."
        )
    try:
        parts = tuple(path)
    except TypeError:
        raise LabelPathError(f"Label path {index} is {type(path).__name__}, not a list of strings.") from None
    if not parts:
        raise LabelPathError(f"Label path {index} is empty: every text needs at least a top-level label.")
    for level, part in enumerate(parts):
        if not isinstance(part, str):
            raise LabelPathError(
                f"Label path {index} has a non-string part at level {level}: {part!r} "
                f"({type(part).__name__}). Convert labels to strings, e.g. [str(x) for x in path]."
            )
        if not part.strip():
            raise LabelPathError(f"Label path {index} has an empty label at level {level}.")
        if PATH_SEPARATOR in part:
            raise LabelPathError(
                f"Label path {index} has {part!r} at level {level}, which contains {PATH_SEPARATOR!r}: that string "
                "separates levels when a path is stored as text. Split it into levels or use another character."
            )
    return parts


def _validate_weights(
    paths: tuple[tuple[str, ...], ...], weights: Iterable[Sequence[float]]
) -> tuple[tuple[float, ...], ...]:
    rows = tuple(tuple(float(w) for w in row) for row in weights)
    if len(rows) != len(paths):
        raise LabelPathError(f"Got {len(rows)} weight rows for {len(paths)} label paths: give one row per path.")
    for index, (row, path) in enumerate(zip(rows, paths, strict=True)):
        if len(row) != len(path):
            raise LabelPathError(
                f"Weight row {index} has {len(row)} values but its path has {len(path)} levels: give one weight "
                "per level of the path."
            )
        if any(not (0.0 <= w <= 1.0) or w != w for w in row):
            raise LabelPathError(f"Weight row {index} has values outside [0, 1]: {list(row)}.")
    return rows


def _build_vocab(rows: list[list[tuple[str, ...] | None]]) -> tuple[dict[tuple[str, ...], int], ...]:
    depth = len(rows[0])
    vocab = []
    for level in range(depth):
        prefixes = sorted({row[level] for row in rows if row[level] is not None})
        vocab.append({prefix: i for i, prefix in enumerate(prefixes)})
    return tuple(vocab)
