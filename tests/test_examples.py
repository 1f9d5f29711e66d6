"""Every example runs (the chatbot through its one-shot mode), on the tiny HEAL model and a small corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")
pytest.importorskip("chromadb")

from conftest import build_tiny_heal_model, build_tiny_model, make_corpus, write_corpus_jsonl  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    texts, paths, titles = make_corpus()
    return write_corpus_jsonl(tmp_path_factory.mktemp("data") / "corpus.jsonl", texts, paths, titles)


def run_example(name: str, *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=300, cwd=EXAMPLES
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_langchain_rag_example_on_a_langchain_chroma_store(corpus_file, tmp_path):
    args = ["--model", str(build_tiny_heal_model()), "--data", str(corpus_file), "--db", str(tmp_path / "db")]
    out = run_example("langchain_rag.py", *args, "--question", "laser light lens beam")
    assert "A: " in out and "[1]" in out
    sources = out.split("Sources:")[1].strip().splitlines()
    assert len(sources) == 3 and all(" > " in line for line in sources)
    assert run_example("langchain_rag.py", *args, "--question", "laser light lens beam") == out  # reopens the store


def test_llamaindex_example(corpus_file, tmp_path):
    out = run_example(
        "llamaindex_query_engine.py",
        "--model",
        str(build_tiny_heal_model()),
        "--data",
        str(corpus_file),
        "--db",
        str(tmp_path / "db"),
        "--question",
        "plasma ion fusion",
    )
    sources = out.split("Sources:")[1].strip().splitlines()
    assert len(sources) == 3 and all(" > " in line for line in sources)


def test_chatbot_one_shot_extractive(corpus_file, tmp_path):
    args = [
        "--model",
        str(build_tiny_heal_model()),
        "--data",
        str(corpus_file),
        "--db",
        str(tmp_path / "db"),
        "--collection",
        "chatbot-test",
        "--llm",
        "extractive",
        "--question",
        "gene dna mutation genome",
    ]
    first = run_example("chatbot.py", *args)  # builds the index
    assert first.startswith("bot> ") and "[1] " in first
    assert "Biology > Genetics" in first.split("\n\n", 1)[1].splitlines()[0]
    second = run_example("chatbot.py", *args)  # reopens it
    assert second == first


def test_fine_tune_folder_example(tmp_path):
    texts, paths, titles = make_corpus()
    for i, (text, path, title) in enumerate(zip(texts, paths, titles, strict=True)):
        folder = tmp_path / "kb" / path[0] / path[1]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"doc{i}.md").write_text(f"# {title}\n\n{text}\n")
    out = run_example(
        "fine_tune_folder.py",
        "--data",
        str(tmp_path / "kb"),
        "--base-model",
        str(build_tiny_model()),
        "--max-steps",
        "2",
        "--out",
        str(tmp_path / "m"),
        "--query",
        "laser light",
    )
    assert "query: laser light" in out and len(out.split("query: laser light")[1].strip().splitlines()) == 3
    training = json.loads((tmp_path / "m" / "heal_rag.json").read_text())["training"]
    assert training["documents"] == 24 and training["source_level"] is True
