"""Who is this process in a multi-process run (``torchrun``, ``accelerate launch``), and waiting for the others.

heal_rag trains across processes through the standard launchers: ``SentenceTransformerTrainer`` (accelerate) sets
up the process group and wraps the model in ``DistributedDataParallel``; :class:`heal_rag.HierarchicalBatchSampler`
deals every rank the same number of batches; :func:`heal_rag.fine_tune` lets only the main process write. These
helpers answer "which rank am I" before the process group exists (from the launcher's environment variables) and
after (from ``torch.distributed``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank: 0 outside a multi-process run.

    Read from ``torch.distributed`` once the process group exists, else from the ``RANK`` variable that
    ``torchrun`` and ``accelerate launch`` set.
    """
    if _initialized():
        import torch.distributed as dist

        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def get_world_size() -> int:
    """The number of processes in the run: 1 outside a multi-process run (``WORLD_SIZE`` before the group exists)."""
    if _initialized():
        import torch.distributed as dist

        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on rank 0 (and in a single-process run): the one process that writes files and prints results."""
    return get_rank() == 0


def barrier() -> None:
    """Wait until every rank reaches this point; nothing to wait for outside an initialised process group."""
    if _initialized():
        import torch.distributed as dist

        dist.barrier()


def broadcast_from_main_process(compute: Callable[[], T]) -> T:
    """``compute()`` run on rank 0 alone, its result handed to every rank; just ``compute()`` in one process.

    For work before training that every rank needs the same answer to and that is too costly to repeat on each
    (HNMFk label discovery on an unlabelled corpus). The launcher's process group is started here when the trainer
    has not started it yet (accelerate then uses it): gloo on a CPU-only machine; with GPUs, torch's default pair
    (gloo for CPU tensors, NCCL for CUDA ones). The result travels with ``torch.distributed.broadcast_object_list``,
    pickled between the run's own processes (never read from a file).

    Raises:
        Whatever ``compute`` raises on rank 0; the other ranks then fail at the broadcast (the launcher stops them).
    """
    if get_world_size() == 1:
        return compute()
    import torch
    import torch.distributed as dist

    if not _initialized():
        dist.init_process_group(backend=None if torch.cuda.is_available() else "gloo")
    payload = [compute() if is_main_process() else None]
    dist.broadcast_object_list(payload, src=0)
    return payload[0]  # type: ignore[return-value]
