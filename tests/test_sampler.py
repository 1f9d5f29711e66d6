from __future__ import annotations

from collections import Counter

import pytest

from heal_rag.labels import LabelPaths
from heal_rag.sampler import HierarchicalBatchSampler


def label_rows(n_parents=4, leaves_per_parent=5, per_leaf=9):
    paths = [
        [f"p{p}", f"l{leaf}"] for p in range(n_parents) for leaf in range(leaves_per_parent) for _ in range(per_leaf)
    ]
    labels = LabelPaths(paths)
    return labels.to_label_rows(extra_ids=list(range(len(paths)))), labels.level_ids()


def make_sampler(rows, seed=0, **kwargs):
    kwargs.setdefault("samples_per_leaf", 4)
    kwargs.setdefault("leaves_per_parent", 4)
    return HierarchicalBatchSampler.from_label_rows(rows, batch_size=32, seed=seed, n_levels=2, **kwargs)


def test_every_batch_has_leaf_positives_and_sibling_leaves():
    rows, ids = label_rows()
    batches = list(make_sampler(rows))
    for batch in batches[:-1]:  # the last batch may be a remainder
        leaf_counts = Counter(ids[i, 1] for i in batch)
        assert min(leaf_counts.values()) >= 2, "every leaf in a batch needs a positive"
        parent_of = {ids[i, 1]: ids[i, 0] for i in batch}
        parents_with_siblings = [p for p, n in Counter(parent_of.values()).items() if n >= 2]
        assert parents_with_siblings, "batches should hold sibling leaves (hard negatives)"


def test_each_row_used_exactly_once_per_epoch_and_len_matches():
    rows, _ = label_rows()
    sampler = make_sampler(rows)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(rows)))
    assert len(batches) == len(sampler)
    assert all(28 <= len(b) <= 32 for b in batches[:-1])


def test_deterministic_under_seed_and_reshuffled_per_epoch():
    rows, _ = label_rows()
    assert list(make_sampler(rows, seed=3)) == list(make_sampler(rows, seed=3))
    assert list(make_sampler(rows, seed=3)) != list(make_sampler(rows, seed=4))
    sampler = make_sampler(rows, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_drop_last_drops_only_a_small_final_batch():
    rows, _ = label_rows(n_parents=1, leaves_per_parent=9, per_leaf=4)  # 36 rows: 32 + a final batch of 4
    kept = list(make_sampler(rows, drop_last=False))
    dropped = list(make_sampler(rows, drop_last=True))
    assert [len(b) for b in kept] == [32, 4]
    assert [len(b) for b in dropped] == [32] and len(make_sampler(rows, drop_last=True)) == 1


def test_no_singleton_leaf_groups():
    rows, ids = label_rows(per_leaf=5)  # 5 = 4 + 1: the tail joins the previous group
    batches = list(make_sampler(rows, drop_last=False))
    assert sorted(i for b in batches for i in b) == list(range(len(rows)))
    for batch in batches:
        counts = Counter(ids[i, 1] for i in batch)
        assert 1 not in counts.values()


def test_invalid_arguments():
    rows, _ = label_rows()
    with pytest.raises(ValueError, match="samples_per_leaf must be >= 2"):
        make_sampler(rows, samples_per_leaf=1)
    with pytest.raises(ValueError, match="n_levels must be in"):
        HierarchicalBatchSampler.from_label_rows(rows, batch_size=32, n_levels=5)
    with pytest.raises(ValueError, match="label column"):
        HierarchicalBatchSampler({"text": ["a"]}, batch_size=4, valid_label_columns=["label"])


def test_sampler_default_matches_the_recommended_recipe():
    from heal_rag.training import HEALTrainingConfig

    rows, _ = label_rows()
    sampler = HierarchicalBatchSampler.from_label_rows(rows, batch_size=32, n_levels=2)
    assert sampler.samples_per_leaf == HEALTrainingConfig().samples_per_leaf
    assert sampler.leaves_per_parent == HEALTrainingConfig().leaves_per_parent
