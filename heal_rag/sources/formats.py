"""Text and headings from the file formats heal_rag reads, each with a well-kept parser.

- Markdown (``.md``, ``.markdown``): LangChain's ``MarkdownHeaderTextSplitter`` (``langchain-text-splitters``).
- HTML (``.html``, ``.htm``): Beautiful Soup's HTML parser; scripts, styles and navigation are dropped.
- reStructuredText (``.rst``): docutils' own parser.
- PDF (``.pdf``): pypdf, one section per page (extra ``pdf``).
- Plain text (``.txt``): the file as it is.

Each parser returns :class:`~heal_rag.sources.document.Section` objects (text under a heading trail) and a title.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from heal_rag.sources.document import Section

#: File suffixes read by default, by parser.
TEXT_SUFFIXES = (".txt",)
MARKDOWN_SUFFIXES = (".md", ".markdown")
HTML_SUFFIXES = (".html", ".htm")
RST_SUFFIXES = (".rst",)
PDF_SUFFIXES = (".pdf",)
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + MARKDOWN_SUFFIXES + HTML_SUFFIXES + RST_SUFFIXES + PDF_SUFFIXES

_HTML_DROPPED = {"script", "style", "noscript", "nav", "header", "footer", "template", "svg", "head"}
_HTML_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_HTML_BLOCKS = {
    "p", "div", "li", "pre", "blockquote", "td", "th", "dd", "dt", "section", "article", "tr", "table", "br",
    "figcaption", "caption", "summary", "details", "ul", "ol", "dl", "main", "aside",
}  # fmt: skip


class UnreadableFileError(ValueError):
    """A file that cannot be read as text (binary, not UTF-8, damaged); the message says why."""


def read_text_file(path: Path) -> str:
    """A file's text as UTF-8 (a byte-order mark is dropped).

    Raises:
        UnreadableFileError: For binary content (NUL bytes) or text that is not UTF-8.
    """
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise UnreadableFileError("binary content (NUL bytes), not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableFileError(
            f"not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}); convert it, e.g. with iconv"
        ) from None


def parse_text(text: str) -> tuple[list[Section], str | None]:
    """Plain text: one section, no title."""
    return [Section(text.strip())], None


def parse_markdown(text: str) -> tuple[list[Section], str | None]:
    """Markdown sections under their ``#`` heading trails; the title is the first top-level heading."""
    try:
        from langchain_text_splitters import MarkdownHeaderTextSplitter
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "Reading Markdown needs langchain-text-splitters: pip install 'heal_rag[documents]'"
        ) from exc
    levels = [("#" * level, f"h{level}") for level in range(1, 7)]
    splitter = MarkdownHeaderTextSplitter(headers_to_split_on=levels, strip_headers=True)
    sections = []
    for piece in splitter.split_text(text):
        trail = tuple(piece.metadata[f"h{level}"] for level in range(1, 7) if f"h{level}" in piece.metadata)
        if piece.page_content.strip():
            sections.append(Section(piece.page_content.strip(), trail))
    title = next((s.headings[0] for s in sections if s.headings), None)
    return sections, title


def parse_html(text: str) -> tuple[list[Section], str | None]:
    """HTML text under its ``<h1>``–``<h6>`` trails (scripts, styles, navigation dropped); title from ``<title>``."""
    from bs4 import BeautifulSoup, NavigableString
    from bs4.element import Comment

    soup = BeautifulSoup(text, "html.parser")
    title_tag = soup.find("title")
    title = title_tag.get_text(" ", strip=True) if title_tag else None
    trail: list[tuple[int, str]] = []
    sections: list[Section] = []
    parts: list[str] = []
    last_block = None

    def flush() -> None:
        body = re.sub(r"[ \t]+", " ", "".join(parts))
        body = re.sub(r"\s*\n\s*", "\n", body).strip()
        if body:
            sections.append(Section(body, tuple(name for _, name in trail)))
        parts.clear()

    for string in soup.find_all(string=True):
        if isinstance(string, Comment) or not isinstance(string, NavigableString):
            continue
        ancestors = [parent.name for parent in string.parents if parent.name]
        if any(name in _HTML_DROPPED for name in ancestors):
            continue
        heading = next((name for name in ancestors if name in _HTML_HEADINGS), None)
        if heading is not None:
            words = string.strip()
            if not words:
                continue
            level = _HTML_HEADINGS[heading]
            if trail and trail[-1][0] == level and last_block == ("heading", id(string.find_parent(heading))):
                trail[-1] = (level, f"{trail[-1][1]} {words}")  # a heading split by inline tags
                continue
            flush()
            trail[:] = [entry for entry in trail if entry[0] < level] + [(level, words)]
            last_block = ("heading", id(string.find_parent(heading)))
            continue
        block = next((parent for parent in string.parents if parent.name in _HTML_BLOCKS), None)
        if block is not None and ("block", id(block)) != last_block:
            parts.append("\n")
            last_block = ("block", id(block))
        parts.append(str(string))
    flush()
    if title is None:
        title = next((s.headings[0] for s in sections if s.headings), None)
    return sections, title


def parse_rst(text: str) -> tuple[list[Section], str | None]:
    """Sections of a reStructuredText file under their titles, parsed by docutils (markup problems are not fatal)."""
    try:
        import docutils.core
        import docutils.nodes
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("Reading reStructuredText needs docutils: pip install 'heal_rag[documents]'") from exc
    tree = docutils.core.publish_doctree(
        text, settings_overrides={"report_level": 5, "halt_level": 5, "file_insertion_enabled": False,
                                  "raw_enabled": False, "input_encoding": "unicode"}
    )  # fmt: skip
    title = tree.get("title") or None
    sections: list[Section] = []

    def walk(node: docutils.nodes.Node, trail: tuple[str, ...]) -> None:
        pending: list[str] = []
        for child in node.children:
            if isinstance(child, docutils.nodes.section):
                if pending:
                    sections.append(Section("\n\n".join(pending), trail))
                    pending = []
                heading = child.next_node(docutils.nodes.title)
                walk(child, trail + ((heading.astext(),) if heading is not None else ()))
            elif isinstance(child, (docutils.nodes.title, docutils.nodes.system_message, docutils.nodes.comment)):
                continue
            elif child.astext().strip():
                pending.append(child.astext().strip())
        if pending:
            sections.append(Section("\n\n".join(pending), trail))

    walk(tree, (title,) if title else ())
    return sections, title


def parse_pdf(path: Path) -> tuple[list[Section], str | None]:
    """One section per page with text, via pypdf; the title from the PDF's metadata.

    Raises:
        ImportError: Without the ``pdf`` extra.
        UnreadableFileError: For an encrypted or damaged PDF.
    """
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError as exc:
        raise ImportError("Reading PDF files needs pypdf: pip install 'heal_rag[pdf]'") from exc
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            raise UnreadableFileError("encrypted PDF")
        pages = [(number, page.extract_text() or "") for number, page in enumerate(reader.pages, start=1)]
        title = (reader.metadata.title if reader.metadata else None) or None
    except PdfReadError as exc:
        raise UnreadableFileError(f"damaged PDF ({exc})") from None
    return [Section(text.strip(), (), number) for number, text in pages if text.strip()], title


#: The text parser for each suffix.
PARSERS: dict[str, Callable[[str], tuple[list[Section], str | None]]] = {
    **dict.fromkeys(TEXT_SUFFIXES, parse_text),
    **dict.fromkeys(MARKDOWN_SUFFIXES, parse_markdown),
    **dict.fromkeys(HTML_SUFFIXES, parse_html),
    **dict.fromkeys(RST_SUFFIXES, parse_rst),
}


def parse_file(path: Path) -> tuple[list[Section], str | None]:
    """Sections and title of one file, by its suffix.

    Raises:
        UnreadableFileError: When the file is binary, not UTF-8, or a damaged PDF.
        ImportError: When the format's optional parser is not installed.
    """
    suffix = path.suffix.lower()
    if suffix in PDF_SUFFIXES:
        return parse_pdf(path)
    return PARSERS[suffix](read_text_file(path))
