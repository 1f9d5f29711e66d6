from __future__ import annotations

import json

import pytest
from conftest import write_corpus_jsonl

from heal_rag.cli import main
from heal_rag.models import ModelNotFoundError, default_model_path, load_sentence_transformer, resolve_model_path


def test_default_model_is_embedded():
    assert resolve_model_path(None) == str(default_model_path())
    assert resolve_model_path("all-MiniLM-L6-v2") == str(default_model_path())
    assert (default_model_path() / "model.safetensors").is_file()


@pytest.mark.parametrize("name", ["./no/such/model", "/abs/missing", "a/b/c"])
def test_missing_model_directory_is_a_clear_error(name):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_path(name)


def test_unknown_hub_name_is_never_downloaded():
    with pytest.raises(ModelNotFoundError, match="never downloads"):
        load_sentence_transformer("nobody/no-such-model-xyz")


def test_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a sentence-transformers"):
        resolve_model_path(tmp_path)


def test_cli_train_on_a_tiny_unlabelled_corpus_explains_why_it_cannot_cluster(tmp_path, capsys):
    data = tmp_path / "c.jsonl"
    data.write_text(json.dumps({"id": "a", "text": "hello"}) + "\n")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "too few for max_depth=2" in err and not (tmp_path / "m").exists()


def test_cli_bad_hard_negatives(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data", "x", "--out", "y", "--hard-negatives", "-1"])
    assert "expected a whole number >= 0 or 'auto', got '-1'" in capsys.readouterr().err
    assert main(["train", "--data", "x", "--out", "y", "--hard-negatives", "1", "--pair-loss", "supcon"]) == 2
    assert "hard_negatives=1 goes with pair_loss='ranking'" in capsys.readouterr().err


def test_cli_bad_level_weights(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data", "x", "--out", "y", "--level-weights", "steep"])
    assert "--level-weights must be" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("loss_args", "expected"),
    [
        (["--pair-loss", "supcon", "--hierarchy-views", "both"], {"pair_loss": "supcon", "hierarchy_views": "both"}),
        (["--pair-negatives", "other_leaves"], {"pair_loss": "ranking", "pair_negatives": "other_leaves"}),
        (["--hard-negatives", "2"], {"hard_negatives": 2, "hard_negatives_per_query": 2}),
        (["--hard-negatives", "auto"], {"hard_negatives": "auto", "hard_negatives_per_query": 4}),
        (["--base-weight-share", "0"], {"base_weight_share": 0.0, "learning_rate": 2e-4}),
    ],
)
def test_cli_train_with_tiny_model(corpus, tiny_model_dir, tmp_path, loss_args, expected):
    texts, paths, titles = corpus
    data = write_corpus_jsonl(tmp_path / "c.jsonl", texts, paths, titles)
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"query": "laser beams", "document_id": "d0"}) + "\n")
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "m"),
            "--queries",
            str(queries),
            "--base-model",
            str(tiny_model_dir),
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--samples-per-leaf",
            "2",
            *loss_args,
        ]
    )
    assert code == 0
    metadata = json.loads((tmp_path / "m" / "heal_rag.json").read_text())
    assert metadata["training"]["training_rows"] == len(texts)
    assert {key: metadata["training"][key] for key in expected} == expected
    assert metadata["base_model"] == str(tiny_model_dir)


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip()


def test_demo_on_a_jsonl_corpus(corpus, tiny_model_dir, tmp_path, capsys):
    texts, paths, titles = corpus
    data = write_corpus_jsonl(tmp_path / "c.jsonl", texts, paths, titles)
    out = tmp_path / "demo"
    flags = ["--base-model", str(tiny_model_dir), "--max-steps", "2", "--batch-size", "8", "--test-fraction", "0.5"]
    assert main(["demo", "--data", str(data), "--out", str(out), *flags]) == 0
    printed = capsys.readouterr().out
    assert "| context-miss@5 |" in printed and "| MRR@10 |" in printed and "stage times:" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["metrics"]) == {"untouched", "HEAL", "HEAL + reranker"}
    assert results["chunks"] == len(texts) and results["corpus"] == {"data": str(data)}
    assert (out / "model" / "heal_rag.json").is_file() and (out / "report" / "report.html").is_file()
    assert main(["demo", "--data", str(data), "--out", str(out), *flags]) == 0, "a second run replaces the first"


def test_blend_with_base_weights_interpolates_float_tensors(tiny_model):
    import torch

    from heal_rag.models import blend_with_base_weights

    base = {name: tensor.clone() for name, tensor in tiny_model.state_dict().items()}
    with torch.no_grad():
        for tensor in tiny_model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(1.0)
    blend_with_base_weights(tiny_model, base, 0.0)
    state = tiny_model.state_dict()
    assert all(torch.equal(state[n], base[n] + 1.0) for n in base if base[n].is_floating_point())
    blend_with_base_weights(tiny_model, base, 0.75)
    for name, tensor in tiny_model.state_dict().items():
        expected = base[name] + 0.25 if tensor.is_floating_point() else base[name]
        torch.testing.assert_close(tensor, expected)


def test_blend_with_base_weights_keeps_integer_buffers():
    import torch

    from heal_rag.models import blend_with_base_weights

    module = torch.nn.Linear(2, 2)
    module.register_buffer("steps", torch.tensor([4, 8]))
    base = {name: tensor.clone() for name, tensor in module.state_dict().items()}
    base["steps"] = torch.tensor([0, 0])
    blend_with_base_weights(module, base, 0.5)
    assert module.steps.tolist() == [4, 8]
    torch.testing.assert_close(module.weight, base["weight"])  # floats equal in both: unchanged


def test_blend_with_base_weights_errors(tiny_model):
    from heal_rag.models import blend_with_base_weights

    base = dict(tiny_model.state_dict())
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        blend_with_base_weights(tiny_model, base, 1.2)
    name = next(iter(base))
    with pytest.raises(ValueError, match="lack 1 of the tuned model's tensors"):
        blend_with_base_weights(tiny_model, {k: v for k, v in base.items() if k != name}, 0.5)
    with pytest.raises(ValueError, match="in the tuned model"):
        blend_with_base_weights(tiny_model, {**base, name: base[name].flatten()[:1]}, 0.5)


@pytest.mark.parametrize("bars_on", [True, False])
def test_loading_a_model_prints_no_loading_bar_and_leaves_transformers_bars_as_they_were(capfd, bars_on):
    from transformers.utils import logging as transformers_logging

    from heal_rag.models import load_sentence_transformer

    (transformers_logging.enable_progress_bar if bars_on else transformers_logging.disable_progress_bar)()
    try:
        capfd.readouterr()
        load_sentence_transformer(None)  # the default model: transformers shows the bar for it
        assert "Loading weights" not in capfd.readouterr().err
        assert transformers_logging.is_progress_bar_enabled() is bars_on
    finally:
        transformers_logging.enable_progress_bar()


def test_the_cli_offers_exactly_the_backends_the_library_has():
    from heal_rag.backends import BACKENDS
    from heal_rag.cli import BACKEND_CHOICES, build_parser

    assert BACKEND_CHOICES == BACKENDS  # spelt out in the CLI so --help stays light; kept equal here
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for command in ("index", "eval"):
        backend = next(a for a in commands[command]._actions if a.dest == "backend")
        assert tuple(backend.choices) == BACKENDS
