"""``SourceDocument``: one of the user's documents, with its label path, metadata and headed sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Section:
    """A stretch of a document under one heading trail.

    Attributes:
        text: The section's text (headings themselves left out).
        headings: The headings above it, outermost first (``("Install", "Linux")``); empty when there are none.
        page: 1-based page number for paged formats (PDF), else ``None``.
    """

    text: str
    headings: tuple[str, ...] = ()
    page: int | None = None


@dataclass(frozen=True)
class SourceDocument:
    """A document as read from a folder, a LangChain ``Document`` or a LlamaIndex node.

    Attributes:
        id: Unique id (for a folder: the path relative to the root, e.g. ``"manuals/pump/setup.md"``).
        text: The whole text.
        path: Label path, most general first (e.g. the folders above the file), or ``None`` when unknown.
        metadata: The document's metadata (source, file name, page count, the framework's own metadata, ...).
        sections: Headed sections in reading order (one section without headings when the format has none).
        title: The document's title (first top heading, or a ``title`` metadata value), if any.
    """

    id: str
    text: str
    path: tuple[str, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    sections: tuple[Section, ...] = ()
    title: str | None = None

    def __post_init__(self) -> None:
        if not self.sections:
            object.__setattr__(self, "sections", (Section(self.text),))

    def headed_text(self) -> str:
        """The text with its headings back in, as Markdown ``#`` lines (``text`` when it has no headings).

        What the folder helpers put into LangChain and LlamaIndex documents, so that the headings, the chunks' training
        queries, survive the trip (:func:`heal_rag.sources.from_langchain` reads them back).
        """
        if not any(section.headings for section in self.sections):
            return self.text
        parts: list[str] = []
        trail: tuple[str, ...] = ()
        for section in self.sections:
            shared = 0
            while shared < min(len(trail), len(section.headings)) and trail[shared] == section.headings[shared]:
                shared += 1
            if len(section.headings) == shared and len(trail) > shared:  # back under a shorter trail: repeat its end
                shared -= 1
            parts.extend(
                f"{'#' * (level + 1)} {section.headings[level]}" for level in range(shared, len(section.headings))
            )
            parts.append(section.text)
            trail = section.headings
        return "\n\n".join(parts)
