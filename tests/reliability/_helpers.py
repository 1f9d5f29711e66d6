"""Shared pieces of the reliability tests: tiny corpora on disk and the CLI's training flags for a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import build_tiny_model, make_corpus, write_corpus_jsonl


def corpus_file(directory: Path, name: str = "corpus.jsonl") -> Path:
    texts, paths, titles = make_corpus()
    directory.mkdir(parents=True, exist_ok=True)
    return write_corpus_jsonl(directory / name, texts, paths, titles)


def tiny_training_flags(steps: int = 2) -> list[str]:
    """CLI flags that train the tiny model for a few steps (seconds)."""
    return [
        "--base-model",
        str(build_tiny_model()),
        "--max-steps",
        str(steps),
        "--batch-size",
        "8",
        "--samples-per-leaf",
        "2",
        "--lr",
        "0.01",
    ]


def tree_snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes, to show that nothing was touched."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
