from __future__ import annotations

import atexit
import functools
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: The team's shared data beside the repository (never copied into it); tests that need it skip when it is absent.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ARXIV_MINI = SHARED_DATA / "arxiv_oai" / "arxiv_oai_hier_mini.jsonl"


def command_env(**extra: str) -> dict[str, str]:
    """The environment of a command a test runs (``heal-rag``, ``torchrun``): one thread a process, offline, this
    checkout importable, plus ``extra``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return env


def shared_file(path: Path) -> Path:
    """``path`` under ../shared/data, or skip the test when the shared data is absent."""
    if not path.is_file():
        pytest.skip(f"shared data not present: {path}")
    return path


# A small labelled corpus: 3 top-level topics, 2 subtopics each, 4 documents per leaf, with titles.
TOPICS = {
    ("physics", "optics"): ["laser light lens beam photon", "mirror refraction optical fibre"],
    ("physics", "plasma"): ["plasma ion fusion tokamak electron", "magnetic confinement hot gas"],
    ("maths", "algebra"): ["group ring field module algebra", "polynomial ideal matrix"],
    ("maths", "geometry"): ["manifold curvature surface geometry", "triangle angle circle metric"],
    ("biology", "genetics"): ["gene dna mutation genome allele", "chromosome protein expression"],
    ("biology", "ecology"): ["species habitat forest ecosystem", "population predator prey climate"],
}


def make_corpus(per_leaf: int = 4):
    texts, labels, titles = [], [], []
    for (top, leaf), (words_a, words_b) in TOPICS.items():
        a, b = words_a.split(), words_b.split()
        for i in range(per_leaf):
            texts.append(f"{' '.join(a[i % len(a) :] + a[: i % len(a)])} {' '.join(b)} study {i}.")
            titles.append(f"{a[i % len(a)]} {b[i % len(b)]}")
            labels.append([top.title(), leaf.title()])
    return texts, labels, titles


def write_corpus_jsonl(path: Path, texts, paths, titles=None, ids=None) -> Path:
    """Write records ``{id, text, labels, title}`` as JSONL, the format ``heal-rag train`` reads."""
    ids = ids or [f"d{i}" for i in range(len(texts))]
    titles = titles or [None] * len(texts)
    with path.open("w", encoding="utf-8") as handle:
        for doc_id, text, labels, title in zip(ids, texts, paths, titles, strict=True):
            handle.write(json.dumps({"id": doc_id, "text": text, "labels": list(labels), "title": title}) + "\n")
    return path


def _vocabulary() -> list[str]:
    words = set()
    texts, _, titles = make_corpus(8)
    for text in texts + titles:
        words.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    return sorted(words)


# Models built for the whole test session (also from langchain-tests' property hooks, which cannot take
# fixtures) live in one temporary directory, removed when the session ends.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="heal-rag-tests-"))
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)


@functools.cache
def build_tiny_model() -> Path:
    """A 16-dimensional StaticEmbedding model with random weights, saved like any sentence-transformers model."""
    path = _SESSION_DIR / "tiny-static"
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {"[UNK]": 0, "[PAD]": 1}
    for word in _vocabulary():
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    torch.manual_seed(0)
    model = SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=16)], device="cpu")
    model.save(str(path))
    return path


def train_tiny_heal_model(path: Path, seed: int = 42) -> Path:
    """Fine-tune the tiny model for 2 HEAL steps on :func:`make_corpus` into ``path`` (replacing a model there)."""
    from heal_rag.training import fine_tune

    texts, labels, titles = make_corpus()
    fine_tune(
        texts,
        labels,
        titles=titles,
        output_dir=path,
        base_model=build_tiny_model(),
        max_steps=2,
        batch_size=8,
        samples_per_leaf=2,
        learning_rate=1e-2,
        seed=seed,
        show_progress_bar=False,
        overwrite=True,
    )
    return path


@functools.cache
def build_tiny_heal_model() -> Path:
    """The session's tiny HEAL model directory (with heal_rag.json)."""
    return train_tiny_heal_model(_SESSION_DIR / "tiny-heal")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return build_tiny_model()


@pytest.fixture(scope="session")
def tiny_heal_model_dir() -> Path:
    return build_tiny_heal_model()


@pytest.fixture()
def tiny_model(tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_model_dir), device="cpu")


@pytest.fixture()
def corpus():
    return make_corpus()
