"""Where the benchmarks find the team's shared data: ``../shared/data`` beside the repository, never copied into it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

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


def output_file(value: str) -> Path:
    """``--output``'s argparse type: the path, with its folder created now, so a long run never fails at its last
    write because the folder was missing."""
    path = Path(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (``--heal``) as :class:`heal_rag.HEALTrainingConfig` overrides; values parsed as JSON when
    they are JSON (``learning_rate=2e-5`` is a float), else kept as strings. Exits naming an unknown key."""
    from heal_rag import HEALTrainingConfig

    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        if key not in HEALTrainingConfig.__dataclass_fields__:
            raise SystemExit(f"--heal {pair!r}: {key!r} is not a HEALTrainingConfig field.")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return overrides
