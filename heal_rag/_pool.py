"""The encoder processes of ``HEALEncoder.multi_process``: sentence-transformers' pool, started and stopped safely.

sentence-transformers' multi-process pool does the encoding; this module keeps its processes from outliving or
confusing the command that started them:

- a terminal's Ctrl-C reaches the command alone, which stops them (no traceback from each process);
- a watchdog process stops them when the command is killed without cleanup (``kill -9``, the out-of-memory killer);
- a process that died is reported as :class:`EncoderProcessError`, with what to do, before the pool can wait for
  it for ever.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from heal_rag._warning import HEALWarning

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

#: sentence-transformers' pool: ``{"input": Queue, "output": Queue, "processes": [Process, ...]}``.
Pool = dict[str, Any]


class EncoderProcessError(ChildProcessError):
    """A worker process of :meth:`heal_rag.encoder.HEALEncoder.multi_process` died (killed, or out of memory)."""


@contextlib.contextmanager
def encoder_pool(model: SentenceTransformer, devices: list[str]) -> Iterator[Pool]:
    """sentence-transformers' multi-process pool on ``devices`` (one process each), stopped when the block ends.

    Args:
        model: The model each process gets a copy of.
        devices: Torch devices, one per process (``["cpu", "cpu"]``, ``["cuda:0", "cuda:1"]``).

    Yields:
        The pool, for ``model.encode(..., pool=pool)``.

    Raises:
        EncoderProcessError: When a worker died during the block and the pool reported it (sentence-transformers'
            ``RuntimeError``, or a reset pipe). A worker that died after its last task gives a
            :class:`~heal_rag.HEALWarning`.
    """
    pool: Pool | None = None
    watchdog = None
    try:
        with _sigint_held():  # a Ctrl-C meanwhile is raised at the end of this block, inside the try
            pool = model.start_multi_process_pool(target_devices=devices)
            watchdog = _start_watchdog(pool)
        yield pool
    except (RuntimeError, OSError, EOFError) as exc:
        # sentence-transformers' "worker(s) died unexpectedly", or its queue's pipe reset by a worker killed mid-task
        if dead_workers(pool):
            raise encoder_process_error(pool) from exc
        raise
    else:
        dead = dead_workers(pool)
        if dead:  # after its last task: every call was answered
            # stacklevel: this generator, contextlib, HEALEncoder.multi_process, contextlib, the caller's ``with``
            warnings.warn(f"{dead}; every text was embedded.", HEALWarning, stacklevel=5)
    finally:
        try:
            if pool is not None:
                model.stop_multi_process_pool(pool)
        finally:  # also when the stop is interrupted (a second Ctrl-C)
            if watchdog is not None:
                watchdog.terminate()
                watchdog.join()


def dead_workers(pool: Pool | None) -> str:
    """``"1 of 2 encoder processes died (exit code -9)"`` for ``pool``'s dead workers; ``""`` when none died."""
    if pool is None:
        return ""
    dead = [process for process in pool["processes"] if not process.is_alive()]
    if not dead:
        return ""
    codes = ", ".join(f"exit code {process.exitcode}" for process in dead)
    return f"{len(dead)} of {len(pool['processes'])} encoder processes died ({codes})"


def encoder_process_error(pool: Pool | None) -> EncoderProcessError:
    """The error for ``pool``'s dead workers, with what to do."""
    return EncoderProcessError(
        f"{dead_workers(pool)}: killed, or out of memory. Run the same command again to continue (an index keeps "
        "what it stored), with fewer processes if memory is short."
    )


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold back SIGINT while processes are started: they inherit the blocked signal, this process gets it after.

    A terminal's Ctrl-C goes to the whole process group. The encoder processes (and their watchdog) then never see
    it, so they do not each print a traceback; this process is interrupted alone and stops them. A Ctrl-C during the
    start is raised when the block ends, not half-way through starting the processes. POSIX and the main thread
    only; elsewhere nothing changes.
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    from multiprocessing import resource_tracker

    # Started first: starting it later (the pool's first queue does) unblocks SIGINT in this process (CPython 3.11).
    resource_tracker.ensure_running()
    held: list[int] = []
    # The mask holds the signal back from this thread only; another thread (Chroma's, torch's) may still take it, so
    # the handler notes it instead of raising KeyboardInterrupt in the middle of the start.
    previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)  # one pending here goes to the noting handler
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous_handler is None else previous_handler)
        if held:
            signal.raise_signal(signal.SIGINT)  # to the handler that was in place: KeyboardInterrupt by default


def _start_watchdog(pool: Pool) -> Any:
    """A process that stops ``pool``'s workers if this process dies without stopping them (POSIX; else ``None``)."""
    if os.name != "posix":
        return None
    import multiprocessing

    workers = [process.pid for process in pool["processes"]]
    watchdog = multiprocessing.get_context("spawn").Process(
        target=stop_with_parent, args=(os.getpid(), workers), daemon=True
    )
    watchdog.start()
    return watchdog


def stop_with_parent(parent: int, children: list[int], interval: float = 0.5) -> None:
    """Run in a process of its own: once ``parent`` has died, send SIGTERM to ``children`` and return.

    sentence-transformers' pool workers wait on their task queue for ever, so a parent killed without cleanup
    (``kill -9``, the kernel's out-of-memory killer) used to leave them running, each holding a copy of the model.
    A dead parent is seen as this process being re-parented (POSIX).
    """
    import time

    while os.getppid() == parent:
        time.sleep(interval)
    for pid in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
