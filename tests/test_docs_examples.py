"""Every Python example in the README and in a public docstring runs.

The examples run in a scratch folder prepared the way they assume: model directories at the paths they name
(``models/heal-minilm``, ``runs/demo/model``, ...) hold the tiny test model, the embedded default model is swapped
for the tiny one (so training examples take seconds), a ``manuals/`` folder and a ``corpus.jsonl`` exist, and the
names an example leaves to the reader (``texts``, ``docs``, ``question``, ...) are defined. Blocks of one docstring,
and the README's blocks, run in order in one namespace, as a reader would type them.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
import shutil
import textwrap
from pathlib import Path

import pytest
from conftest import build_tiny_heal_model, build_tiny_model, make_corpus, write_corpus_jsonl

import heal_rag

BLOCK = re.compile(r"```python\n(.*?)```", re.S)
README = Path(__file__).resolve().parents[1] / "README.md"
#: Paths the examples load a tuned model from (the ones they train into are left free).
MODEL_PATHS = ("models/heal-minilm", "runs/demo/model")


def docstring_examples() -> dict[str, tuple[str, list[str]]]:
    """``{qualified name: (module name, [code blocks])}`` for the package's modules, classes, functions, methods."""
    found: dict[str, tuple[str, list[str]]] = {}
    names = ["heal_rag"] + [info.name for info in pkgutil.walk_packages(heal_rag.__path__, "heal_rag.")]
    for module_name in names:
        module = importlib.import_module(module_name)
        objects = [(module_name, module)]
        for name, value in vars(module).items():
            if getattr(value, "__module__", None) != module_name or not (
                inspect.isclass(value) or inspect.isfunction(value)
            ):
                continue
            objects.append((f"{module_name}.{name}", value))
            for member_name, member in vars(value).items() if inspect.isclass(value) else []:
                function = getattr(member, "__func__", None) or getattr(member, "fget", None) or member
                if inspect.isfunction(function):
                    objects.append((f"{module_name}.{name}.{member_name}", function))
        for qualified, value in objects:
            blocks = BLOCK.findall(inspect.getdoc(value) or "")
            if blocks:
                found[qualified] = (module_name, blocks)
    return found


def readme_examples() -> list[str]:
    return BLOCK.findall(README.read_text(encoding="utf-8"))


@pytest.fixture()
def scratch(tmp_path, monkeypatch):
    """A folder laid out as the examples assume, with the tiny model as the default."""
    import heal_rag.chroma.embedding_function as chroma_function
    import heal_rag.models

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(heal_rag.models, "default_model_path", lambda: build_tiny_model())
    monkeypatch.setattr(chroma_function, "_ENCODERS", {})
    for path in MODEL_PATHS:
        shutil.copytree(build_tiny_heal_model(), tmp_path / path)
    texts, paths, titles = make_corpus(per_leaf=12)
    write_corpus_jsonl(tmp_path / "corpus.jsonl", texts, paths, titles, [f"doc-{i}" for i in range(len(texts))])
    for i, (text, path, title) in enumerate(zip(texts, paths, titles, strict=True)):
        folder = tmp_path / "manuals" / path[0] / path[1]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"doc{i}.md").write_text(f"# {title}\n\n{text}\n")
    from heal_rag.chroma import build_index
    from heal_rag.data import read_corpus
    from heal_rag.demo import DEMO_COLLECTION

    build_index(
        "runs/demo/model", read_corpus("corpus.jsonl"), "runs/demo/chroma", DEMO_COLLECTION, show_progress=False
    )
    return tmp_path


def reader_namespace(tmp_path: Path) -> dict:
    """The names examples leave to the reader."""
    import numpy as np
    from langchain_core.documents import Document
    from langchain_core.language_models import FakeListChatModel
    from llama_index.core.schema import TextNode

    from heal_rag.data import read_corpus
    from heal_rag.encoder import HEALEncoder
    from heal_rag.evaluation.report import EvaluationTask
    from heal_rag.langchain import HEALRetriever
    from heal_rag.models import load_sentence_transformer

    corpus = read_corpus(tmp_path / "corpus.jsonl")
    texts, paths = corpus.texts, [list(p) for p in corpus.labels.paths]
    task = EvaluationTask.build(corpus)
    encoder = HEALEncoder.load(tmp_path / "models" / "heal-minilm")
    rows = list(zip(texts, paths, corpus.ids, strict=True))
    return {
        "np": np,
        "corpus": corpus,
        "texts": texts,
        "titles": corpus.titles,
        "paths": paths,
        "metadatas": [{"title": t} for t in corpus.titles],
        "new_texts": texts[:3],
        "question": "laser light lens beam",
        "model": load_sentence_transformer(build_tiny_model()),
        "docs": [Document(t, metadata={"category": p}, id=i) for t, p, i in rows],
        "nodes": [TextNode(text=t, id_=i, metadata={"heal_path": p}) for t, p, i in rows],
        "chunk_texts": texts[:4],
        "chunk_ids": corpus.ids[:4],
        "chat_model": FakeListChatModel(responses=["1. What does this cover?\n2. Which topic is this?"]),
        "base_retriever": HEALRetriever.from_texts(texts, encoder=encoder, k=10),
        "task": task,
        "reranked_indices": np.tile(np.arange(10), (len(task.query_texts), 1)),
    }  # fmt: skip


def run_blocks(blocks: list[str], namespace: dict, where: str) -> None:
    for number, code in enumerate(blocks, start=1):
        try:
            exec(compile(textwrap.dedent(code), f"<{where} example {number}>", "exec"), namespace)  # noqa: S102 - our own docs
        except Exception as exc:  # noqa: BLE001 - re-raised with the example's place
            raise AssertionError(f"{where}, example {number} failed: {type(exc).__name__}: {exc}\n{code}") from exc


DOCSTRINGS = docstring_examples()


def test_every_public_example_is_collected():
    assert len(DOCSTRINGS) >= 35 and len(readme_examples()) >= 6
    assert "heal_rag.langchain.reranker.HierarchyReranker" in DOCSTRINGS


@pytest.mark.parametrize("qualified", sorted(DOCSTRINGS))
def test_docstring_examples_run(qualified, scratch):
    module_name, blocks = DOCSTRINGS[qualified]
    # As doctest does: an example sees its module's names (a function's example may call the function).
    namespace = {**vars(importlib.import_module(module_name)), **reader_namespace(scratch)}
    run_blocks(blocks, namespace, qualified)


@pytest.mark.filterwarnings("error:.*label tree does not hold:UserWarning")  # the reranker reads the paths given
def test_readme_examples_run(scratch):
    namespace = reader_namespace(scratch)
    run_blocks(readme_examples(), namespace, "README.md")
    assert json.loads((scratch / "models" / "manuals" / "heal_rag.json").read_text())["training"]["chunks"] > 0
