"""Who is this process in a multi-process run (``torchrun``, ``accelerate launch``), and waiting for the others.

heal_rag trains across processes through the standard launchers: ``SentenceTransformerTrainer`` (accelerate) sets
up the process group and wraps the model in ``DistributedDataParallel``; :class:`heal_rag.HierarchicalBatchSampler`
deals every rank the same number of batches; :func:`heal_rag.fine_tune` lets only the main process write. These
helpers answer "which rank am I" before the process group exists (from the launcher's environment variables) and
after (from ``torch.distributed``).
"""

from __future__ import annotations

import os


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
