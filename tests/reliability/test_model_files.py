"""Kind 3: weights load only from safetensors, and damaged files are named, on every path that loads a model."""

from __future__ import annotations

import shutil

import pytest
import torch
from _helpers import corpus_file
from conftest import build_tiny_heal_model, build_tiny_model, make_corpus

from heal_rag.cli import main
from heal_rag.encoder import HEALEncoder
from heal_rag.models import CorruptModelError, UnsafeModelError, load_sentence_transformer


@pytest.fixture()
def pickled_model(tmp_path):
    """A heal_rag model directory whose weights are only a pickle (pytorch_model.bin)."""
    from safetensors.torch import load_file

    path = tmp_path / "pickled"
    shutil.copytree(build_tiny_heal_model(), path)
    weights = load_file(str(path / "model.safetensors"))
    (path / "model.safetensors").unlink()
    torch.save(weights, path / "pytorch_model.bin")
    return path


@pytest.fixture()
def truncated_model(tmp_path):
    path = tmp_path / "truncated"
    shutil.copytree(build_tiny_heal_model(), path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture()
def never_unpickle(monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)


def loaders(model_dir):
    """Every way heal_rag loads a model, as callables."""
    from heal_rag.chroma import HEALEmbeddingFunction
    from heal_rag.langchain import HEALEmbeddings, HierarchyReranker
    from heal_rag.llamaindex import HEALEmbedding, HierarchyNodePostprocessor
    from heal_rag.training import fine_tune

    texts, paths, _ = make_corpus()
    return {
        "load_sentence_transformer": lambda: load_sentence_transformer(model_dir),
        "HEALEncoder.load": lambda: HEALEncoder.load(model_dir),
        "chroma function": lambda: HEALEmbeddingFunction(str(model_dir)),
        "LangChain embeddings": lambda: HEALEmbeddings(model=str(model_dir)),
        "LangChain reranker": lambda: HierarchyReranker.from_model(str(model_dir)),
        "LlamaIndex embedding": lambda: HEALEmbedding(model=str(model_dir)),
        "LlamaIndex postprocessor": lambda: HierarchyNodePostprocessor.from_model(str(model_dir)),
        "fine_tune base model": lambda: fine_tune(
            texts, paths, output_dir=model_dir.parent / "out", base_model=model_dir
        ),
    }


def test_pickled_weights_are_refused_everywhere_without_unpickling(pickled_model, never_unpickle):
    for name, load in loaders(pickled_model).items():
        with pytest.raises(UnsafeModelError, match="pytorch_model.bin") as info:
            load()
        assert "never loads" in str(info.value) and "safetensors" in str(info.value), name
    assert not (pickled_model.parent / "out").exists()


def test_pickled_weights_refused_from_the_cli_without_a_traceback(pickled_model, tmp_path, capsys, never_unpickle):
    data = corpus_file(tmp_path / "in")
    commands = [
        ["index", "--model", str(pickled_model), "--data", str(data), "--db", str(tmp_path / "db")],
        [
            "eval",
            "--data",
            str(data),
            "--model",
            str(pickled_model),
            "--base-model",
            str(build_tiny_model()),
            "--out",
            str(tmp_path / "report"),
        ],
        ["train", "--data", str(data), "--base-model", str(pickled_model), "--out", str(tmp_path / "m")],
    ]
    for argv in commands:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "pytorch_model.bin" in err and "Traceback" not in err
    assert not (tmp_path / "db").exists() and not (tmp_path / "report").exists() and not (tmp_path / "m").exists()


def test_a_module_folder_with_only_a_pickle_is_refused(tmp_path):
    path = tmp_path / "with-dense"
    shutil.copytree(build_tiny_model(), path)
    (path / "2_Dense").mkdir()
    torch.save({"linear.weight": torch.zeros(2, 2)}, path / "2_Dense" / "pytorch_model.bin")
    with pytest.raises(UnsafeModelError, match="2_Dense"):
        load_sentence_transformer(path)


def test_a_truncated_safetensors_file_is_named(truncated_model, tmp_path, capsys):
    for name, load in loaders(truncated_model).items():
        with pytest.raises(CorruptModelError, match="model.safetensors") as info:
            load()
        assert "damaged" in str(info.value), name
    data = corpus_file(tmp_path / "in")
    assert main(["index", "--model", str(truncated_model), "--data", str(data), "--db", str(tmp_path / "db")]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "damaged" in err and "Traceback" not in err


def test_a_plain_safetensors_model_still_loads(tmp_path):
    model = load_sentence_transformer(build_tiny_model())
    assert model.encode(["laser light"]).shape == (1, 16)
