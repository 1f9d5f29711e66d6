"""Who is this process in a multi-process run (``torchrun``, ``accelerate launch``), and waiting for the others.

heal_rag trains across processes through the standard launchers: ``SentenceTransformerTrainer`` (accelerate) sets
up the process group (unless :func:`broadcast_from_main_process` needed it earlier) and wraps the model in
``DistributedDataParallel``; :class:`heal_rag.HierarchicalBatchSampler`
deals every rank the same number of batches; :func:`heal_rag.fine_tune` lets only the main process write. These
helpers answer "which rank am I" before the process group exists (from the launcher's environment variables) and
after (from ``torch.distributed``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

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

    For work before training that every rank needs the same answer to and that is too costly to repeat on each, or
    that must not differ between ranks (HNMFk label discovery on an unlabelled corpus; mining hard negatives). The
    launcher's process group is started here when the trainer has not started it yet, and accelerate then trains on
    it: gloo on a CPU-only machine; with GPUs, gloo for CPU tensors and NCCL for CUDA ones (``"cpu:gloo,cuda:nccl"``,
    each rank on the GPU ``LOCAL_RANK`` names), so both CPU and GPU training work on it. The result travels with
    ``torch.distributed.broadcast_object_list``, pickled between the run's own processes (never read from a file):
    as CPU tensors, or as CUDA ones on a group without gloo (one accelerate started with NCCL alone, e.g. for an
    earlier ``fine_tune`` in the same process).

    Raises:
        Whatever ``compute`` raised on rank 0, on every rank (``RuntimeError`` naming it on the others), so no rank
        is left waiting at the broadcast.
    """
    if get_world_size() == 1:
        return compute()
    import torch
    import torch.distributed as dist

    if not _initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend="cpu:gloo,cuda:nccl")
        else:
            dist.init_process_group(backend="gloo")
    payload: list[Any] = [None]
    if is_main_process():
        try:
            payload = [(True, compute())]
        except Exception as exc:
            payload = [(False, exc)]
    cpu = "cpu:" in dist.get_backend_config()  # e.g. "cpu:gloo,cuda:nccl"; "cuda:nccl" for NCCL alone
    dist.broadcast_object_list(payload, src=0, device=torch.device("cpu") if cpu else torch.device("cuda"))
    succeeded, value = payload[0]
    if succeeded:
        return value  # type: ignore[no-any-return]
    if is_main_process():
        raise value
    raise RuntimeError(f"rank 0 failed before training: {type(value).__name__}: {value}") from value
