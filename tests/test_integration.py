"""Integration tests with the real embedded default model (all-MiniLM-L6-v2), a handful of steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ARXIV_MINI, shared_file, write_corpus_jsonl

from heal_rag.cli import main
from heal_rag.data import read_corpus

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_arxiv():
    corpus = read_corpus(shared_file(ARXIV_MINI))
    # Two physics archives and one maths archive: 3 leaves each, 6 documents per leaf.
    wanted = {}
    for index, path in enumerate(corpus.labels.paths):
        if path[0] in ("Physics", "Mathematics") and len(wanted.setdefault(path, [])) < 6:
            wanted[path].append(index)
    leaves = sorted(wanted)[:3] + sorted(wanted)[-3:]
    return corpus.subset([i for leaf in leaves for i in wanted[leaf]])


def test_train_default_model_save_and_reload_gives_same_embeddings(small_arxiv, tmp_path):
    from sentence_transformers import SentenceTransformer

    from heal_rag import fine_tune
    from heal_rag.models import load_sentence_transformer

    untouched = load_sentence_transformer(None).encode_document(small_arxiv.texts[:4])
    result = fine_tune(
        small_arxiv.texts,
        small_arxiv.labels,
        titles=small_arxiv.titles,
        output_dir=tmp_path / "heal-minilm",
        max_steps=3,
        batch_size=8,
        max_seq_length=64,
        show_progress_bar=False,
    )
    reloaded = SentenceTransformer(str(tmp_path / "heal-minilm"), device="cpu", local_files_only=True)
    texts = small_arxiv.texts[:4] + small_arxiv.titles[:2]
    np.testing.assert_allclose(reloaded.encode_document(texts), result.model.encode_document(texts), atol=1e-5)
    assert not np.allclose(untouched, reloaded.encode_document(small_arxiv.texts[:4]), atol=1e-4)
    assert reloaded.get_embedding_dimension() == 384
    metadata = json.loads((tmp_path / "heal-minilm" / "heal_rag.json").read_text())
    assert metadata["embedding_dimension"] == 384 and metadata["label_tree"]["depth"] == 3


def test_cli_train_on_a_jsonl_corpus(small_arxiv, tmp_path, capsys):
    data = write_corpus_jsonl(
        tmp_path / "corpus.jsonl", small_arxiv.texts, small_arxiv.labels.paths, small_arxiv.titles, small_arxiv.ids
    )
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "m"),
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--max-seq-length",
            "48",
            "--level-weights",
            "1,1,2",
        ]
    )
    assert code == 0
    assert "saved to" in capsys.readouterr().out
    metadata = json.loads((tmp_path / "m" / "heal_rag.json").read_text())
    assert metadata["training"]["level_weights"] == [1.0, 1.0, 2.0]
    assert metadata["training"]["global_steps"] == 2
