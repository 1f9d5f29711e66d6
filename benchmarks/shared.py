"""Where the benchmarks find the team's shared data: ``../shared/data`` beside the repository, never copied into it."""

from __future__ import annotations

import sys
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: 2,145 arXiv abstracts, 6 → 14 → 143 classes (the corpus the earlier demo bundled).
ARXIV_MINI = SHARED_DATA / "arxiv_oai" / "arxiv_oai_hier_mini.jsonl"
#: All 21,450 arXiv abstracts.
ARXIV_FULL = SHARED_DATA / "arxiv_oai" / "arxiv_oai_hier.jsonl"


def require(path: Path) -> Path:
    """``path`` if it exists; else say what is missing and exit cleanly (status 0: nothing to measure here)."""
    if not path.is_file():
        print(f"skipped: {path} is absent (the shared data lives in ../shared/data beside the repository)")
        sys.exit(0)
    return path
