"""How the ``heal-rag`` process behaves around its commands: stopping on signals, warnings, other libraries' bars."""

from __future__ import annotations

import contextlib
import signal
import warnings
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler, a container stopping), stopped as cleanly as Ctrl-C."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` so that cleanup runs as on Ctrl-C.

    Python's default SIGTERM ends the process at once: staging folders stay behind and the encoder processes of
    ``--processes`` are orphaned, each holding a copy of the model in memory. Outside the main thread (the CLI called
    from a worker thread) signals are left alone.
    """

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        # None: the previous handler was not installed from Python, and cannot be put back from it
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def one_line_warnings(command: str) -> Iterator[None]:
    """Show heal_rag's own warnings (:class:`~heal_rag.HEALWarning`) as ``heal-rag <command>: warning: ...``.

    Python's form (file, line, category and source line) is for programmers; these are messages for the user. Any
    other warning (numpy, torch, transformers), even one raised from a line of heal_rag, keeps Python's form, which
    says what it is and where it comes from.
    """
    from heal_rag._warning import HEALWarning

    default = warnings.formatwarning

    def format_warning(
        message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
    ) -> str:
        if issubclass(category, HEALWarning):
            return f"heal-rag {command}: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = default


def quiet_resource_tracker() -> None:
    """Keep multiprocessing's resource tracker from ending ``--processes`` runs with "leaked semaphore objects".

    Each encoder process of sentence-transformers' pool creates tqdm's multiprocessing lock, registered with the
    tracker, and is stopped with SIGTERM before it can unregister it; the tracker then removes the lock and prints a
    two-line ``UserWarning`` that reads like a fault. Nothing is left behind, so the interpreters multiprocessing
    starts from now on (the tracker among them) get ``-W ignore::UserWarning:multiprocessing.resource_tracker``:
    multiprocessing passes ``sys.warnoptions`` on as ``-W`` options, which also win over a ``-W default`` given to
    this process. The environment is left alone; a tracker already running keeps its settings.
    """
    import sys

    ignore = "ignore::UserWarning:multiprocessing.resource_tracker"
    if ignore not in sys.warnoptions:
        sys.warnoptions.append(ignore)


def silence_progress_bars() -> None:
    """Turn off the progress bars of the libraries heal_rag calls (transformers, huggingface_hub, datasets)."""
    import datasets
    import huggingface_hub.utils
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    huggingface_hub.utils.disable_progress_bars()
    datasets.disable_progress_bars()
