"""Sources: the user's documents (a folder tree, LangChain ``Document`` objects, LlamaIndex nodes) with label paths.

Example:
    ```python
    from heal_rag.sources import read_directory

    report = read_directory("manuals", max_depth=2)   # manuals/<product>/<topic>/*.md → path (product, topic)
    print(report.summary())                           # read 120 documents (85 .md, 35 .txt); skipped 12 files ...
    report.documents[0].path, report.documents[0].sections[0].headings
    ```
"""

from __future__ import annotations

from heal_rag.sources.directory import ReadReport, read_directory
from heal_rag.sources.document import Section, SourceDocument
from heal_rag.sources.formats import SUPPORTED_SUFFIXES, UnreadableFileError, parse_file
from heal_rag.sources.frameworks import from_langchain, from_llamaindex, path_for

__all__ = [
    "SUPPORTED_SUFFIXES",
    "ReadReport",
    "Section",
    "SourceDocument",
    "UnreadableFileError",
    "from_langchain",
    "from_llamaindex",
    "parse_file",
    "path_for",
    "read_directory",
]
