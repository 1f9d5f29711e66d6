"""Reading a folder tree: one document per supported file, labelled by the folders above it."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from heal_rag._validation import check_int
from heal_rag.labels import PATH_SEPARATOR
from heal_rag.sources.document import SourceDocument
from heal_rag.sources.formats import PDF_SUFFIXES, SUPPORTED_SUFFIXES, UnreadableFileError, parse_file


@dataclass
class ReadReport:
    """What a folder read found.

    Attributes:
        documents: The documents read, in sorted path order.
        skipped: Files left out because their type is not read, counted by suffix (``{".png": 12}``).
        unreadable: ``(path, reason)`` for files of a read type that could not be read; the read goes on.
    """

    documents: list[SourceDocument] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One paragraph for people: counts by type, what was skipped, what could not be read and why."""
        kinds = Counter(Path(d.metadata["source"]).suffix.lower() for d in self.documents)
        by_kind = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        lines = [f"read {len(self.documents)} documents" + (f" ({by_kind})" if by_kind else "")]
        if self.skipped:
            listed = ", ".join(f"{suffix or '(no suffix)'}: {n}" for suffix, n in self.skipped.most_common())
            lines.append(f"skipped {sum(self.skipped.values())} files of other types ({listed})")
        for path, reason in self.unreadable:
            lines.append(f"could not read {path}: {reason}")
        return "\n".join(lines)


def read_directory(
    root: str | os.PathLike[str],
    *,
    max_depth: int | None = None,
    suffixes: tuple[str, ...] = SUPPORTED_SUFFIXES,
    show_progress: bool = True,
) -> ReadReport:
    """Read every supported file under ``root``; the folders between ``root`` and a file are its label path.

    ``manuals/pump/setup/install.md`` read from ``manuals`` gets the path ``("pump", "setup")`` and the id
    ``"pump/setup/install.md"``. A file directly in ``root`` gets the path ``(<root's name>,)``. When no file sits in
    a subfolder (a flat folder), every path is ``None``: the caller discovers a hierarchy instead. Hidden files and
    folders (``.git``) are left out. Files of other types are counted in :attr:`ReadReport.skipped`; files that
    cannot be read (binary, not UTF-8, damaged, a PDF without the ``pdf`` extra) are listed with the reason in
    :attr:`ReadReport.unreadable`, and the read goes on.

    Args:
        root: The folder.
        max_depth: Keep at most this many folder levels in the label path (``1``: the top folders only).
        suffixes: File types to read (default: ``.txt``, ``.md``, ``.markdown``, ``.rst``, ``.html``, ``.htm``,
            ``.pdf``).
        show_progress: Progress bar over files.

    Returns:
        A :class:`ReadReport`.

    Raises:
        FileNotFoundError: When ``root`` is not a folder.
        ValueError: When no file could be read (the message says what was found instead).
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise FileNotFoundError(f"{str(root)!r} is not a folder.")
    check_int("max_depth", max_depth, minimum=1, allow_none=True)
    wanted = {suffix.lower() for suffix in suffixes}
    report = ReadReport()
    entries = sorted(p for p in root_path.rglob("*") if not _hidden(p, root_path))
    for link in (p for p in entries if p.is_symlink() and not p.exists()):
        report.unreadable.append((str(link.relative_to(root_path)), "a link to a file that does not exist"))
    files = [p for p in entries if p.is_file()]
    for file in tqdm(files, desc="reading", unit="file", disable=not show_progress):
        suffix = file.suffix.lower()
        relative = file.relative_to(root_path)
        if suffix not in wanted:
            report.skipped[suffix] += 1
            continue
        try:
            sections, title = parse_file(file)
        except UnreadableFileError as exc:
            report.unreadable.append((str(relative), str(exc)))
            continue
        except ImportError as exc:
            if suffix not in PDF_SUFFIXES:
                raise
            report.unreadable.append((str(relative), str(exc)))
            continue
        except (OSError, ValueError) as exc:
            report.unreadable.append((str(relative), f"{type(exc).__name__}: {exc}"))
            continue
        text = "\n\n".join(section.text for section in sections)
        if not text.strip():
            report.unreadable.append((str(relative), "no text"))
            continue
        folders = tuple(part.replace(PATH_SEPARATOR, " / ") for part in relative.parts[:-1])
        metadata = {"source": relative.as_posix(), "file_name": file.name}
        if any(section.page is not None for section in sections):
            metadata["pages"] = max(section.page or 0 for section in sections)
        report.documents.append(
            SourceDocument(
                id=relative.as_posix(),
                text=text,
                path=folders[:max_depth] if max_depth else folders,
                metadata=metadata,
                sections=tuple(sections),
                title=title,
            )
        )
    if not report.documents:
        raise ValueError(
            f"No readable documents under {str(root)!r}: heal_rag reads {', '.join(sorted(wanted))} files (the pdf "
            f"extra for .pdf).\n{report.summary()}"
        )
    _label_root_files(report.documents, root_path.resolve().name or "root")
    return report


def _label_root_files(documents: list[SourceDocument], root_name: str) -> None:
    """Files directly in the root get the root's name as their path; a flat folder gets no paths at all."""
    if not any(document.path for document in documents):
        for index, document in enumerate(documents):
            documents[index] = _with_path(document, None)
        return
    for index, document in enumerate(documents):
        if not document.path:
            documents[index] = _with_path(document, (root_name,))


def _with_path(document: SourceDocument, path: tuple[str, ...] | None) -> SourceDocument:
    return replace(document, path=path)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)
