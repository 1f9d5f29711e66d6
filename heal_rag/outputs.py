"""Where heal_rag writes: checked before any work starts, and nothing heal_rag did not write is ever replaced.

Rules, shared by every command that writes (``train``, ``demo``, ``cluster``, ``index``, ``eval``) and by
``fine_tune(output_dir=...)``:

- An output directory must be new, empty, or a directory heal_rag wrote (judged by content: heal_rag's own
  :data:`OUTPUT_MARKER` record, or a valid ``heal_rag.json`` model description). A non-empty directory heal_rag did
  not write is refused, whatever the flags; one it wrote is replaced only with ``overwrite=True`` (``--overwrite``)
  and only by an output of the same kind (a report never replaces a model).
- A directory heal_rag wrote whole lists its files in :data:`OUTPUT_MARKER`; one that has gained files since (a
  user's notes, a copied corpus) is not replaced even with ``overwrite=True``, since that would delete them. Folders
  heal_rag fills later (a model's ``exports/``) are named in the marker and count as heal_rag's.
- An output never contains, or lies inside, one of the run's inputs (``--out data`` with ``--data data/corpus.jsonl``
  is refused instead of deleting the corpus).
- The location must be writable, checked by creating (and removing) a probe directory before any training.
- Directories are written in a hidden staging sibling (``.<name>.tmp-<pid>-<id>``) and renamed into place at the
  end; staging directories left by killed runs (their process is gone) are removed by the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

#: Hidden file heal_rag writes into every output directory it creates (model directories also hold heal_rag.json).
OUTPUT_MARKER = ".heal_rag-output"
#: Files whose presence marks a directory as written by heal_rag.
OWNERSHIP_FILES = ("heal_rag.json", OUTPUT_MARKER)
#: Staging directories without a process id (written by heal_rag < 0.2) are removed once older than this.
_LEGACY_STAGING_AGE_S = 3600


class OutputPathError(ValueError):
    """An output location heal_rag refuses to write: the message names the path and the way out."""


def _json_object(path: Path) -> dict | None:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def output_kind(path: str | os.PathLike[str]) -> str | None:
    """What heal_rag wrote at ``path`` (``"model"``, ``"report"``, ``"demo"``, ...), or ``None`` if it did not.

    Judged by content, not by file names: :data:`OUTPUT_MARKER` must be heal_rag's own record, and a model
    directory's ``heal_rag.json`` must be a heal_rag model description (format version, fingerprint, label tree).
    """
    directory = Path(path)
    marker = _json_object(directory / OUTPUT_MARKER)
    if marker is not None and marker.get("written_by") == "heal_rag" and isinstance(marker.get("kind"), str):
        return str(marker["kind"])
    metadata = _json_object(directory / "heal_rag.json")
    if metadata is not None and {"format_version", "fingerprint", "label_tree"} <= set(metadata):
        return "model"
    return None


def is_heal_rag_output(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory heal_rag wrote (see :func:`output_kind`)."""
    return Path(path).is_dir() and output_kind(path) is not None


def check_not_inputs(path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None]) -> None:
    """Refuse an output location that is, contains, or lies inside a folder of one of ``inputs``.

    Raises:
        OutputPathError: Naming the output and the input.
    """
    _check_inputs(Path(path).expanduser().resolve(), str(path), inputs)


def _check_inputs(target: Path, shown: str, inputs: Iterable[str | os.PathLike[str] | None]) -> None:
    for item in inputs:
        if item is None:
            continue
        source = Path(item).expanduser().resolve()
        if source == target or target in source.parents:
            raise OutputPathError(
                f"The output {shown!r} contains the input {str(item)!r}: writing there would replace it. Choose an "
                "output path outside your input files."
            )
        if source.is_dir() and source in target.parents:
            raise OutputPathError(
                f"The output {shown!r} lies inside the input folder {str(item)!r}: its files would be read as "
                "documents next time. Choose an output path outside the input folder."
            )


def check_writable(path: str | os.PathLike[str]) -> None:
    """Check that ``path`` (or, if it does not exist yet, its nearest existing ancestor) accepts new entries.

    A probe directory is created and removed again, so read-only file systems and permissions are caught whoever
    runs the check.

    Raises:
        OutputPathError: Naming the location and the operating system's reason.
    """
    ancestor = Path(path).expanduser().resolve()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"Cannot write under {str(path)!r}: {str(ancestor)!r} is a file, not a directory.")
    try:
        probe = tempfile.mkdtemp(prefix=".heal_rag-probe-", dir=ancestor)
    except OSError as exc:
        raise OutputPathError(
            f"Cannot write to {str(ancestor)!r} ({exc.strerror or exc}); choose a writable output location."
        ) from None
    os.rmdir(probe)


def _first_names(names: list[str]) -> str:
    """The first three names, for an error message."""
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def prepare_output_dir(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    what: str = "Output directory",
    kind: str | None = None,
) -> Path:
    """Check an output directory before any work, following the rules in the module docstring.

    Args:
        path: The directory the output goes to (it need not exist).
        overwrite: Replace a directory heal_rag wrote earlier (never one it did not write).
        inputs: The run's input files and folders (a base model, a corpus, ...); the output may neither contain them
            nor lie inside a folder.
        what: How the error messages name the location.
        kind: What is about to be written (``"model"``, ``"report"``, ...): an earlier output of another kind is
            never replaced (a report does not replace a model).

    Returns:
        The resolved path.

    Raises:
        OutputPathError: With the path and the way out (a new path, or ``overwrite=True`` / ``--overwrite``).
    """
    target = Path(path).expanduser().resolve()
    shown = str(path)
    if target.exists() and not target.is_dir():
        raise OutputPathError(f"{what} {shown!r} is an existing file; give a directory path.")
    _check_inputs(target, shown, inputs)
    if target.is_dir() and any(target.iterdir()):
        found = output_kind(target)
        if found is None:
            names = sorted(entry.name for entry in target.iterdir())
            listed = _first_names(names)
            raise OutputPathError(
                f"{what} {shown!r} already exists and holds files heal_rag did not write ({listed}). heal_rag never "
                "replaces them: choose a new or empty directory (--overwrite only ever replaces a directory heal_rag "
                "wrote, one holding heal_rag.json)."
            )
        if kind is not None and found != kind:
            raise OutputPathError(
                f"{what} {shown!r} holds a heal_rag {found}, not a {kind}; heal_rag never replaces one kind of output "
                "with another. Choose another path."
            )
        if not overwrite:
            raise OutputPathError(
                f"{what} {shown!r} already holds an earlier heal_rag output. Choose a new path, or pass --overwrite "
                "(overwrite=True) to replace it."
            )
        added = unrecorded_files(target)
        if added:
            listed = _first_names(added)
            raise OutputPathError(
                f"{what} {shown!r} holds an earlier heal_rag {found} and files heal_rag did not write there "
                f"({listed}); replacing the directory would delete them. Move them out, or choose a new path."
            )
    check_writable(target)
    remove_stale_staging(target)
    return target


def prepare_output_file(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    ours: Callable[[Path], bool] | None = None,
) -> Path:
    """Check an output file before any work: not an input, not an existing file unless ``overwrite``, writable.

    Args:
        path: The file.
        overwrite: Replace an existing file (with ``ours``: only one it tells apart as an earlier heal_rag output).
        inputs: The run's input files and folders; the output may not be one of them.
        ours: Tells whether an existing file is what heal_rag writes there; a file it does not recognise is never
            replaced.

    Raises:
        OutputPathError: With the path and the way out.
    """
    target = Path(path).expanduser().resolve()
    shown = str(path)
    if target.is_dir():
        raise OutputPathError(f"Output file {shown!r} is an existing directory; give a file path.")
    _check_inputs(target, shown, inputs)
    if target.exists() and not overwrite:
        raise OutputPathError(
            f"Output file {shown!r} already exists. Choose a new path, or pass --overwrite (overwrite=True) to "
            "replace it."
        )
    if target.exists() and ours is not None and not ours(target):
        raise OutputPathError(
            f"Output file {shown!r} exists and is not an earlier heal_rag output of this kind; --overwrite only ever "
            "replaces those. Choose a new path."
        )
    check_writable(target.parent)
    return target


def write_marker(
    directory: str | os.PathLike[str],
    kind: str,
    files: Iterable[str] | None = None,
    managed: Iterable[str] = (),
) -> None:
    """Mark ``directory`` as written by heal_rag (see :data:`OUTPUT_MARKER`).

    Args:
        directory: The output directory.
        kind: What it holds (``"model"``, ``"report"``, ...).
        files: Its files, as POSIX paths relative to it, when heal_rag wrote it whole (see :func:`unrecorded_files`).
        managed: Sub-folders heal_rag fills later (e.g. ``"exports"``), whose files count as heal_rag's too.
    """
    from heal_rag._version import __version__

    record: dict[str, object] = {"written_by": "heal_rag", "version": __version__, "kind": kind}
    if files is not None:
        record.update(files=sorted(files), managed=sorted(managed))
    (Path(directory) / OUTPUT_MARKER).write_text(json.dumps(record), encoding="utf-8")


def _relative_files(directory: Path) -> list[str]:
    """Every file (or link) under ``directory``, as POSIX paths relative to it, the marker left out."""
    found = []
    for path in directory.rglob("*"):
        if path.is_file() or path.is_symlink():
            relative = path.relative_to(directory).as_posix()
            if relative != OUTPUT_MARKER:
                found.append(relative)
    return found


def unrecorded_files(path: str | os.PathLike[str]) -> list[str]:
    """Files in a heal_rag output directory that heal_rag did not write there (sorted, relative POSIX paths).

    Judged against the file list the marker records: empty for an output written before heal_rag kept one.
    """
    directory = Path(path)
    marker = _json_object(directory / OUTPUT_MARKER)
    recorded = marker.get("files") if marker is not None else None
    if not isinstance(recorded, list):
        return []
    managed = tuple(f"{folder}/" for folder in marker.get("managed") or ())
    known = set(recorded)
    return sorted(name for name in _relative_files(directory) if name not in known and not name.startswith(managed))


def _staging_name(final: Path, role: str) -> str:
    return f".{final.name}.{role}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_staging(final_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove staging directories of ``final_dir`` left behind by runs that were killed.

    A staging directory ``.<name>.tmp-<pid>-<id>`` (or ``.old-``) is stale when its process no longer exists; one
    without a process id (older heal_rag) when it is more than an hour old.

    Returns:
        The directories removed.
    """
    final = Path(final_dir).expanduser().resolve()
    if not final.parent.is_dir():
        return []
    removed = []
    for role in ("tmp", "old"):
        for candidate in final.parent.glob(f".{final.name}.{role}-*"):
            if not candidate.is_dir():
                continue
            parts = candidate.name.rsplit("-", 2)
            if len(parts) == 3 and parts[1].isdigit():
                stale = int(parts[1]) != os.getpid() and not _process_alive(int(parts[1]))
            else:
                stale = time.time() - candidate.stat().st_mtime > _LEGACY_STAGING_AGE_S
            if stale:
                shutil.rmtree(candidate, ignore_errors=True)
                removed.append(candidate)
    return removed


@contextmanager
def atomic_directory(
    final_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    kind: str = "output",
    managed: Iterable[str] = (),
) -> Iterator[Path]:
    """Yield a staging directory that becomes ``final_dir`` only if the block succeeds.

    The location is checked with :func:`prepare_output_dir` (again at write time: it may have changed during a long
    run). On error the staging directory is removed and ``final_dir`` is untouched; on success an earlier heal_rag
    output there is replaced as a whole (``overwrite=True`` only), and the marker records the files written and the
    ``managed`` sub-folders heal_rag fills later (see :func:`write_marker`).

    Raises:
        OutputPathError: See :func:`prepare_output_dir`.
    """
    final = prepare_output_dir(final_dir, overwrite=overwrite, inputs=inputs, kind=kind)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / _staging_name(final, "tmp")
    staging.mkdir()
    try:
        write_marker(staging, kind)
        yield staging
        write_marker(staging, kind, files=_relative_files(staging), managed=managed)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = None
    if final.exists():
        previous = final.parent / _staging_name(final, "old")
        os.replace(final, previous)
    os.replace(staging, final)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
