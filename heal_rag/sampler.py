"""A batch sampler that builds batches out of sibling leaves, so every HEAL level gets positives and hard negatives."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from sentence_transformers.base.sampler import DefaultBatchSampler
from transformers import TrainerCallback

from heal_rag.distributed import get_world_size


class HierarchicalBatchSampler(DefaultBatchSampler):
    """Batches made of groups of ``samples_per_leaf`` texts from the same leaf, with sibling leaves together.

    Each batch is filled group by group: pick a parent (the label one level above the leaf) at random, weighted
    by how many groups it still has, then take up to ``leaves_per_parent`` groups from *different* leaves under
    that parent (siblings: hard negatives at the leaf level, positives at the parent level), then move on to the
    next parent. Groups are never split, so a batch can be a few rows short of ``batch_size``; every row is used
    once per epoch (``drop_last`` drops only a final batch under half full). Shuffling is deterministic for a
    given ``seed`` and epoch.

    In a multi-process run (``torchrun``, ``accelerate launch``) every rank plans the same epoch and accelerate
    deals whole batches round-robin (batch ``i`` to rank ``i mod world_size``). So that every rank gets the same
    number of batches (a rank with one batch more would wait forever on the others' gradients) and every row is
    still used once per epoch, the sampler then splits its largest batches between two groups until the count is a
    multiple of the world size; only when fewer groups than ranks are left does it repeat batches from the start of
    the epoch. The sampler then reports ``batch_size=None`` (batches of varying length), which tells accelerate not
    to wait for full-size batches.

    The sampler reads the ``label`` column (rows from :meth:`heal_rag.LabelPaths.to_label_rows`).

    Args:
        dataset: The training dataset (a ``datasets.Dataset`` with a label column).
        batch_size: Number of rows per batch.
        drop_last: Drop the last, smaller batch.
        valid_label_columns: Names to look for the label column under (the trainer passes these).
        generator: Unused; the sampler seeds its own ``random.Random(seed + epoch)``.
        seed: Base seed.
        leaf_level: Column of the label rows holding the leaf id (default ``-1``: the last hierarchy column).
        n_levels: Number of hierarchy id columns in a row, when rows also hold a document key or weights
            (default: every column is a hierarchy level).
        samples_per_leaf: Texts drawn from each leaf in a row (at least 2, so the leaf level has positives; 2, the
            default, gave the best hierarchy metrics in ``benchmarks/quality.py``).
        leaves_per_parent: Sibling leaves taken under one parent before moving on.
        keep_together_level: Column of a finer grouping inside each leaf (e.g. the source document of chunks, see
            ``fine_tune(source_ids=...)``): rows sharing it are placed next to each other before a leaf is cut into
            groups, so a group holds chunks of one document where it has several (positives at that level).
            ``None``: no grouping.
        world_size: Number of processes the batches are dealt to (``None``: the running process group's size, 1
            outside a multi-process run).

    Example:
        ```python
        from functools import partial
        from sentence_transformers import SentenceTransformerTrainingArguments
        from heal_rag import HierarchicalBatchSampler

        args = SentenceTransformerTrainingArguments(
            output_dir="out",
            batch_sampler=partial(HierarchicalBatchSampler, samples_per_leaf=2, leaves_per_parent=4),
        )
        ```
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool = False,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        *,
        leaf_level: int = -1,
        n_levels: int | None = None,
        samples_per_leaf: int = 2,
        leaves_per_parent: int = 4,
        keep_together_level: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        if samples_per_leaf < 2:
            raise ValueError(f"samples_per_leaf must be >= 2 so the leaf level has positives, got {samples_per_leaf}.")
        if batch_size < samples_per_leaf:
            raise ValueError(f"batch_size ({batch_size}) must be >= samples_per_leaf ({samples_per_leaf}).")
        if leaves_per_parent < 1:
            raise ValueError(f"leaves_per_parent must be >= 1, got {leaves_per_parent}.")
        self.samples_per_leaf = samples_per_leaf
        self.leaves_per_parent = leaves_per_parent
        rows = _label_rows(dataset, valid_label_columns or ["label", "labels"])
        self.leaf_groups, self.parent_of_leaf = group_rows_by_leaf(rows, leaf_level=leaf_level, n_levels=n_levels)
        self.together_of_row: dict[int, int] | None = None
        if keep_together_level is not None:
            column = keep_together_level % (n_levels if n_levels is not None else len(rows[0]))
            self.together_of_row = {index: int(round(row[column])) for index, row in enumerate(rows)}
        self.n_samples = sum(len(v) for v in self.leaf_groups.values())
        self.max_batch_size = batch_size
        self.world_size = get_world_size() if world_size is None else int(world_size)
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}.")
        if self.world_size > 1:
            # accelerate's BatchSamplerShard treats a batch shorter than batch_size as the end of the epoch unless
            # the sampler declares batches of varying length (batch_size None); ours are, since groups are whole.
            self.batch_size = None  # type: ignore[assignment]

    @classmethod
    def from_label_rows(
        cls, rows: Sequence[Sequence[float]], batch_size: int, **kwargs: Any
    ) -> HierarchicalBatchSampler:
        """Build a sampler straight from label rows (handy outside the trainer and in tests)."""
        return cls({"label": [list(r) for r in rows]}, batch_size=batch_size, valid_label_columns=["label"], **kwargs)

    def __len__(self) -> int:
        return len(self._plan_batches(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._plan_batches(self.epoch)

    def _plan_batches(self, epoch: int) -> list[list[int]]:
        """The batches of one epoch; a pure function of ``seed`` and ``epoch``."""
        rng = random.Random(self.seed + epoch)
        # Shuffle inside each leaf and cut into groups of samples_per_leaf; a short tail joins the last group so
        # no group is a singleton (it would have no leaf-level positive).
        groups_by_parent: dict[int, dict[int, list[list[int]]]] = defaultdict(dict)
        for leaf in sorted(self.leaf_groups):
            members = list(self.leaf_groups[leaf])
            rng.shuffle(members)
            if self.together_of_row is not None:  # rows of one group side by side, groups in shuffled order
                together = self.together_of_row
                order = list(dict.fromkeys(together[m] for m in members))
                rank = {group: position for position, group in enumerate(order)}
                members.sort(key=lambda m: rank[together[m]])
            chunks = [members[i : i + self.samples_per_leaf] for i in range(0, len(members), self.samples_per_leaf)]
            if len(chunks) > 1 and len(chunks[-1]) < 2:
                chunks[-2].extend(chunks.pop())
            groups_by_parent[self.parent_of_leaf[leaf]][leaf] = chunks

        # Order groups so that sibling leaves follow each other, then pack whole groups into batches: a group is
        # never split across two batches, so a batch may be a few rows short of batch_size.
        ordered_groups: list[list[int]] = []
        parents = sorted(groups_by_parent)
        while parents:
            remaining = [sum(len(c) for c in groups_by_parent[p].values()) for p in parents]
            parent = rng.choices(parents, weights=remaining, k=1)[0]
            leaves = [leaf for leaf, chunks in groups_by_parent[parent].items() if chunks]
            rng.shuffle(leaves)
            for leaf in leaves[: self.leaves_per_parent]:
                ordered_groups.append(groups_by_parent[parent][leaf].pop())
            if not any(groups_by_parent[parent].values()):
                parents.remove(parent)

        batches: list[list[list[int]]] = []  # each batch as its groups, so it can be split between two
        batch: list[list[int]] = []
        for group in ordered_groups:
            if batch and sum(map(len, batch)) + len(group) > self.max_batch_size:
                batches.append(batch)
                batch = []
            batch.append(group[: self.max_batch_size])
        if batch and not (self.drop_last and sum(map(len, batch)) < self.max_batch_size // 2):
            batches.append(batch)
        batches = deal_evenly(batches, self.world_size)
        return [[row for group in groups for row in group] for groups in batches]


def deal_evenly(batches: list[list[list[int]]], world_size: int) -> list[list[list[int]]]:
    """Make the number of batches a multiple of ``world_size``, keeping every row exactly once where possible.

    The batch with the most groups is split between two groups (halves of a batch keep sibling leaves together)
    until the count divides evenly; when no batch has two groups left (fewer groups than ranks), batches from the
    start are repeated instead, as ``torch.utils.data.DistributedSampler`` pads.

    Args:
        batches: Batches, each a list of groups (lists of row indices).
        world_size: Number of ranks the batches will be dealt to round-robin.

    Returns:
        The batches, as many as a multiple of ``world_size`` (unchanged when it already is).
    """
    batches = list(batches)
    original = len(batches)
    repeated = 0
    while batches and len(batches) % world_size:
        largest = max(range(len(batches)), key=lambda i: (len(batches[i]), -i))
        groups = batches[largest]
        if len(groups) > 1:
            half = len(groups) // 2
            batches[largest : largest + 1] = [groups[:half], groups[half:]]
        else:
            batches.append(batches[repeated % original])
            repeated += 1
    return batches


def group_rows_by_leaf(
    rows: Sequence[Sequence[float]], leaf_level: int = -1, n_levels: int | None = None
) -> tuple[dict[int, list[int]], dict[int, int]]:
    """Group row indices by leaf id and map each leaf to its parent id (itself for one-level hierarchies)."""
    if not rows:
        raise ValueError("The dataset has no rows to sample from.")
    width = len(rows[0])
    n_levels = width if n_levels is None else n_levels
    if not 1 <= n_levels <= width:
        raise ValueError(f"n_levels must be in [1, {width}] for label rows of width {width}, got {n_levels}.")
    leaf_col = leaf_level % n_levels
    parent_col = leaf_col - 1
    leaf_groups: dict[int, list[int]] = defaultdict(list)
    parent_of_leaf: dict[int, int] = {}
    for index, row in enumerate(rows):
        leaf = int(round(row[leaf_col]))
        if leaf < 0:  # masked at the leaf level: fall back to the deepest labelled level
            labelled = [int(round(v)) for v in row[:leaf_col] if int(round(v)) >= 0]
            leaf = -(labelled[-1] + 1) if labelled else -(10**9)
        parent = int(round(row[parent_col])) if parent_col >= 0 else 0
        leaf_groups[leaf].append(index)
        parent_of_leaf.setdefault(leaf, parent)
    return dict(leaf_groups), parent_of_leaf


def _label_rows(dataset: Any, columns: Sequence[str]) -> list[list[float]]:
    names = dataset.column_names if hasattr(dataset, "column_names") else list(dataset)
    for name in columns:
        if name in names:
            rows = dataset[name]
            if rows and not isinstance(rows[0], (list, tuple)):
                rows = [[r] for r in rows]
            return [list(r) for r in rows]
    raise ValueError(f"HierarchicalBatchSampler needs a label column (one of {list(columns)}); found {names}.")


def find_hierarchical_sampler(dataloader: Any) -> HierarchicalBatchSampler | None:
    """The :class:`HierarchicalBatchSampler` under a dataloader's batch-sampler wrappers, or ``None``.

    accelerate wraps the sampler once per role: ``BatchSamplerShard`` in a multi-process run, and
    ``SkipBatchSampler`` around that when training resumes mid-epoch; each keeps the one it wraps as
    ``batch_sampler``.
    """
    node = getattr(dataloader, "batch_sampler", None)
    for _ in range(8):  # a few wrappers at most; never loop on a cycle
        if isinstance(node, HierarchicalBatchSampler):
            return node
        node = getattr(node, "batch_sampler", None)
    return None


class SamplerEpochCallback(TrainerCallback):
    """Tell the :class:`HierarchicalBatchSampler` which epoch begins, however deep accelerate wrapped it.

    The trainer calls ``set_epoch`` on the loader it iterates and on that loader's batch sampler's ``batch_sampler``.
    A run resumed mid-epoch under ``torchrun`` iterates ``SkipBatchSampler`` → ``BatchSamplerShard`` → sampler, one
    level too deep, so the sampler would replay epoch 0's batch plan in the resumed epoch. The callback gets the
    prepared loader (``BatchSamplerShard`` → sampler, the same objects the skipping loader wraps) and sets the epoch
    there. Elsewhere the trainer sets the same epoch again right after, so nothing changes.
    """

    def on_epoch_begin(self, args: Any, state: Any, control: Any, train_dataloader: Any = None, **kwargs: Any) -> None:
        """Set the sampler's epoch to the one the trainer enters (``state.epoch`` holds e.g. 1.5 when resuming).

        ``state.epoch`` is ``epoch + steps / steps_in_epoch``: exactly the next integer at an epoch's end, so its
        floor is the epoch being entered, fresh or resumed.
        """
        sampler = find_hierarchical_sampler(train_dataloader)
        if sampler is not None:
            sampler.set_epoch(math.floor(state.epoch))
