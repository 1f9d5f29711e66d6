"""Kinds 6 and 7: long texts are not cut silently, training keeps the deployed model's limit, and training sees the
model's own query/document prompts."""

from __future__ import annotations

import warnings

import pytest
from conftest import _vocabulary, build_tiny_heal_model, build_tiny_model, command_env, make_corpus

from heal_rag.encoder import HEALEncoder, TruncationWarning
from heal_rag.training import fine_tune

FAST = {"max_steps": 2, "batch_size": 8, "samples_per_leaf": 2, "learning_rate": 1e-2, "show_progress_bar": False}


def wordpiece_model(tmp_path, max_seq_length=32, prompts=None):
    """A tiny transformer model (1 layer, 16 dims) with a real tokenizer and token limit, optionally prompts."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "query", "passage", ":", *_vocabulary()]
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(dict.fromkeys(vocab))})
    assert "[UNK]" not in tokenizer.tokenize("query: laser light"), "the test tokenizer lost its vocabulary"
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)  # the same weights whatever ran before (tests query these models for exact results)
    BertModel(config).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    transformer = Transformer(str(tmp_path / "bert"), max_seq_length=max_seq_length)
    model = SentenceTransformer(modules=[transformer, Pooling(16)], prompts=prompts or {}, device="cpu")
    model.save(str(tmp_path / "model"))
    return tmp_path / "model"


def test_embedding_long_texts_warns_once_with_the_count(tmp_path):
    encoder = HEALEncoder.load(wordpiece_model(tmp_path))
    long_text = "laser light lens beam photon " * 20  # > 32 tokens
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoder.embed_documents([long_text, "short text", long_text])
        encoder.embed_documents([long_text])
        encoder.embed_queries(["laser"])
    messages = [str(w.message) for w in caught if issubclass(w.category, TruncationWarning)]
    assert len(messages) == 1 and messages[0].startswith("2 of 3 texts are longer") and "chunks" in messages[0]
    assert encoder.truncated_texts == 3


def test_build_index_warns_with_the_total_count(tmp_path):
    from heal_rag.chroma import build_index
    from heal_rag.data import Corpus

    model = wordpiece_model(tmp_path)
    texts = ["laser light lens beam photon " * 20, "short", "plasma ion fusion " * 30]
    with pytest.warns(UserWarning, match="2 of 3 documents were longer than the model's max_seq_length"):
        build_index(str(model), Corpus(["a", "b", "c"], texts, [None] * 3), tmp_path / "db", show_progress=False)


def test_short_texts_do_not_warn(tmp_path):
    encoder = HEALEncoder.load(wordpiece_model(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncationWarning)
        encoder.embed_documents(["laser light", "plasma ion"])
    assert encoder.truncated_texts == 0


def test_training_with_a_short_limit_keeps_the_base_models_limit(tmp_path):
    from sentence_transformers import SentenceTransformer

    base = wordpiece_model(tmp_path, max_seq_length=64)
    texts, paths, titles = make_corpus()
    fine_tune(texts, paths, titles=titles, output_dir=tmp_path / "a", base_model=base, max_seq_length=16, **FAST)
    assert SentenceTransformer(str(tmp_path / "a")).max_seq_length == 64
    fine_tune(
        texts,
        paths,
        titles=titles,
        output_dir=tmp_path / "b",
        base_model=base,
        max_seq_length=16,
        save_max_seq_length=48,
        **FAST,
    )
    assert SentenceTransformer(str(tmp_path / "b")).max_seq_length == 48


def test_training_uses_the_models_query_and_document_prompts(tmp_path, monkeypatch):
    from sentence_transformers.base.data_collator import BaseDataCollator

    model = wordpiece_model(tmp_path, prompts={"query": "query: ", "document": "passage: "})
    prompt_per_column: list[tuple[str, str | None]] = []
    original = BaseDataCollator._get_prompt_for_column

    def spy(self, prompts, column_name):
        prompt = original(self, prompts, column_name)
        prompt_per_column.append((column_name, prompt))
        return prompt

    monkeypatch.setattr(BaseDataCollator, "_get_prompt_for_column", spy)
    texts, paths, titles = make_corpus()
    result = fine_tune(
        texts, paths, titles=titles, output_dir=tmp_path / "m", base_model=model, base_weight_share=0.0, **FAST
    )
    # Every training batch: the query column with the query prompt, the document column with the document prompt,
    # as encode_query / encode_document apply them when serving.
    assert len(prompt_per_column) >= 2 * FAST["max_steps"]
    assert set(prompt_per_column) == {("query", "query: "), ("document", "passage: ")}
    assert result.metadata["training"]["training_prompts"] == {"query": "query: ", "document": "passage: "}


def test_models_without_prompts_train_on_plain_texts(tmp_path):
    texts, paths, titles = make_corpus()
    result = fine_tune(texts, paths, titles=titles, output_dir=tmp_path / "m", base_model=build_tiny_model(), **FAST)
    assert result.metadata["training"]["training_prompts"] == {}
    assert HEALEncoder.load(build_tiny_heal_model()).max_seq_length is None  # a StaticEmbedding model: no limit


def test_the_cli_shows_its_own_warnings_as_one_line(tmp_path):
    import subprocess
    import sys

    model = wordpiece_model(tmp_path)
    corpus = tmp_path / "corpus.jsonl"
    long_text = "laser light lens beam photon " * 20
    corpus.write_text(f'{{"id": "a", "text": "{long_text}"}}\n{{"id": "b", "text": "short"}}\n')
    env = command_env()
    command = [sys.executable, "-m", "heal_rag.cli", "index", "--model", str(model), "--data", str(corpus), "--db",
               str(tmp_path / "db"), "-q"]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)  # as a terminal shows it
    assert result.returncode == 0, result.stderr
    assert "heal-rag index: warning: 1 of 2 documents were longer than the model's max_seq_length" in result.stderr
    assert "TruncationWarning" not in result.stderr and "warnings.warn(" not in result.stderr  # not Python's form


def test_only_heal_rags_own_warnings_are_shortened_by_the_cli():
    from heal_rag import HEALWarning
    from heal_rag._process import one_line_warnings

    here = __file__.replace("tests/reliability/test_truncation_and_prompts.py", "heal_rag/encoder.py")
    with one_line_warnings("index"):
        ours = warnings.formatwarning("cut", TruncationWarning, here, 1)
        numpy_like = warnings.formatwarning("invalid value encountered in divide", RuntimeWarning, here, 7)
        plain = warnings.formatwarning("deprecated", UserWarning, here, 9)
    assert issubclass(TruncationWarning, HEALWarning)
    assert ours == "heal-rag index: warning: cut\n"
    # a warning of another library keeps Python's form (file, line, category), even raised from heal_rag's code
    assert numpy_like.startswith(f"{here}:7: RuntimeWarning: invalid value") and plain.startswith(f"{here}:9: User")
    assert warnings.formatwarning("cut", TruncationWarning, here, 1).startswith(here)  # put back afterwards
