"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: ``heal-rag train`` on a corpus without
labels, recording on each rank how many times HNMFk and the mining of hard negatives ran there and the label paths
that rank trained on.

Usage: torchrun --nproc_per_node 2 tests/scripts/distributed_discover.py RECORD_DIR TRAIN_ARGS...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import heal_rag.hierarchy.discover as discover
import heal_rag.negatives as negatives
import heal_rag.training as training
from heal_rag.cli import main
from heal_rag.distributed import get_rank

record_dir, train_args = sys.argv[1], sys.argv[2:]
calls: list[int] = []
minings: list[int] = []
negatives_got: list[str] = []
trained_on: list[list[str]] = []
_discover, _fine_tune, _mine = discover.discover_labels, training.fine_tune, negatives.mine_other_leaf_negatives
_with_hard_negatives = training._with_hard_negatives


def _counting_discover(*args, **kwargs):  # the real HNMFk, counted
    calls.append(get_rank())
    return _discover(*args, **kwargs)


def _counting_mine(*args, **kwargs):  # the real mining, counted
    minings.append(get_rank())
    return _mine(*args, **kwargs)


def _recording_with_hard_negatives(*args, **kwargs):  # the real rows with negatives, as this rank got them
    rows = _with_hard_negatives(*args, **kwargs)
    negatives_got.extend(rows.columns["negative_1"])
    return rows


def _recording_fine_tune(documents, labels, *args, **kwargs):  # the real fine_tune, with the labels it was given
    trained_on.extend(list(path) for path in labels.paths)
    return _fine_tune(documents, labels, *args, **kwargs)


discover.discover_labels = _counting_discover
training.fine_tune = _recording_fine_tune
negatives.mine_other_leaf_negatives = _counting_mine
training._with_hard_negatives = _recording_with_hard_negatives
code = main(["train", *train_args])
record = {
    "rank": get_rank(),
    "code": code,
    "hnmfk_runs": len(calls),
    "minings": len(minings),
    "negatives": negatives_got,
    "labels": trained_on,
}
Path(record_dir, f"rank{get_rank()}.json").write_text(json.dumps(record))
