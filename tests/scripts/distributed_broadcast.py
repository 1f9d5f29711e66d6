"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: ``broadcast_from_main_process`` with a
computation that succeeds, then one that fails on rank 0; records what each rank got or raised.

Usage: torchrun --nproc_per_node 2 tests/scripts/distributed_broadcast.py RECORD_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from heal_rag.distributed import broadcast_from_main_process, get_rank

computed_on: list[int] = []


def compute() -> dict[str, int]:
    computed_on.append(get_rank())
    return {"from_rank": get_rank()}


def fail() -> None:
    raise ValueError("no labels could be discovered")


record: dict[str, object] = {"rank": get_rank(), "value": broadcast_from_main_process(compute)}
record["computed_here"] = len(computed_on)
try:
    broadcast_from_main_process(fail)
    record["error"] = None
except Exception as exc:  # every rank must raise, none may wait
    record["error"] = f"{type(exc).__name__}: {exc}"
Path(sys.argv[1], f"rank{get_rank()}.json").write_text(json.dumps(record))
dist.barrier()  # a standalone script (no trainer after it): leave the group together, as torch asks
dist.destroy_process_group()
