"""Kind 2: every numeric setting is checked (finite, in range) before work starts, and a non-finite loss stops
training with nothing saved."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _helpers import corpus_file, tiny_training_flags
from conftest import build_tiny_heal_model, build_tiny_model, make_corpus

from heal_rag.cli import main
from heal_rag.data import Corpus
from heal_rag.labels import LabelPaths
from heal_rag.losses import HEALLoss, NonFiniteLossError
from heal_rag.training import HEALTrainingConfig, fine_tune

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("temperature", NAN),
        ("temperature", 0.0),
        ("temperature", -1.0),
        ("pair_temperature", INF),
        ("learning_rate", NAN),
        ("learning_rate", 0.0),
        ("epochs", 0.0),
        ("epochs", NAN),
        ("batch_size", 0),
        ("batch_size", 1),
        ("batch_size", 2.5),
        ("max_steps", 0),
        ("warmup_ratio", 1.0),
        ("max_seq_length", 0),
        ("save_max_seq_length", -3),
        ("schedule_alpha", NAN),
        ("query_document_weight", -1.0),
        ("query_document_weight", NAN),
        ("consistency_weight", INF),
        ("pair_level_discount", 1.0),
        ("query_hierarchy_weight", 2.0),
        ("samples_per_leaf", 1),
        ("leaves_per_parent", 0),
        ("level_weights", [1.0, NAN]),
        ("level_weights", "steeper"),
        ("base_weight_share", NAN),
        ("base_weight_share", 1.0),
        ("blend_validation_fraction", 0.0),
        ("blend_candidate_shares", (0.1, NAN)),
        ("blend_fallback_share", NAN),
        ("blend_min_validation_queries", 0),
        ("blend_standard_errors", NAN),
        ("seed", -1),
        ("pair_loss", "triplet"),
    ],
)
def test_training_config_refuses_bad_values_naming_the_setting(setting, value):
    with pytest.raises(ValueError, match=setting.split("[")[0]):
        HEALTrainingConfig(**{setting: value})


def test_fine_tune_with_nan_temperature_saves_nothing(tmp_path):
    texts, paths, _ = make_corpus()
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        fine_tune(texts, paths, output_dir=tmp_path / "m", base_model=build_tiny_model(), temperature=NAN)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--temperature", "nan", "finite"),
        ("--lr", "inf", "finite"),
        ("--batch-size", "0", ">= 1"),
        ("--max-steps", "-2", ">= 1"),
        ("--base-weight-share", "nan", "[0, 1)"),
        ("--level-weights", "1,nan", "non-negative numbers"),
    ],
)
def test_cli_refuses_bad_numbers_before_reading_anything(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "m"), flag, value])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_settings_that_only_fail_together(tmp_path, capsys):
    data = corpus_file(tmp_path / "in")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "m"), "--temperature", "0"]) == 2
    assert "temperature must lie in (0, inf)" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "m"),
                "--batch-size",
                "2",
                "--samples-per-leaf",
                "4",
            ]
        )
        == 2
    )
    assert "batch_size (2) must be >= samples_per_leaf (4)" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_index_with_batch_size_zero_creates_nothing(tmp_path, capsys):
    data = corpus_file(tmp_path / "in")
    with pytest.raises(SystemExit):
        main(
            [
                "index",
                "--model",
                str(build_tiny_heal_model()),
                "--data",
                str(data),
                "--db",
                str(tmp_path / "db"),
                "--batch-size",
                "0",
            ]
        )
    assert ">= 1" in capsys.readouterr().err and not (tmp_path / "db").exists()


def test_build_index_validates_before_touching_the_database(tmp_path):
    from heal_rag.chroma import build_index

    texts, paths, titles = make_corpus()
    corpus = Corpus([f"d{i}" for i in range(len(texts))], texts, titles, LabelPaths(paths))
    for kwargs, message in (({"batch_size": 0}, "batch_size"), ({"collection_name": "c"}, "Invalid collection")):
        with pytest.raises(ValueError, match=message):
            build_index(str(build_tiny_heal_model()), corpus, tmp_path / "db", **kwargs)
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": NAN}, "temperature"),
        ({"pair_temperature": 0}, "pair_temperature"),
        ({"query_document_weight": NAN}, "query_document_weight"),
        ({"schedule_alpha": INF}, "schedule_alpha"),
        ({"level_weights": [1.0, -1.0]}, "level_weights"),
        ({"consistency_margin": NAN}, "consistency_margin"),
    ],
)
def test_heal_loss_refuses_bad_settings(tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        HEALLoss(tiny_model, **kwargs)


def test_heal_loss_refuses_label_weights_that_are_not_memberships(tiny_model):
    loss = HEALLoss(tiny_model)
    embeddings = [torch.randn(4, 16)]
    for bad in (NAN, -0.5, 2.0):
        labels = torch.tensor([[0, 0, 1.0, bad], [0, 0, 1.0, 1.0], [1, 1, 1.0, 1.0], [1, 1, 1.0, 1.0]])
        with pytest.raises(ValueError, match="Label weights must be finite and lie in"):
            loss.compute_loss_from_embeddings(embeddings, labels)


def test_a_non_finite_loss_stops_training_and_saves_nothing(tmp_path):
    """A guard in the training loop itself, whatever the settings: here the base model's weights hold NaN."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(build_tiny_model()), device="cpu")
    with torch.no_grad():
        next(model.parameters())[3, :] = float("nan")
    texts, paths, titles = make_corpus()
    with pytest.raises(NonFiniteLossError, match="not finite"):
        fine_tune(
            texts,
            paths,
            titles=titles,
            output_dir=tmp_path / "m",
            base_model=model,
            max_steps=2,
            batch_size=8,
            base_weight_share=0.0,
            show_progress_bar=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_heal_rag_json_can_never_hold_nan(tmp_path):
    from heal_rag.artifacts import write_json_atomic

    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "x.json", {"temperature": NAN})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"margin": NAN}, "margin"),
        ({"margin": -0.1}, "margin"),
        ({"margin": 1.5}, "margin"),
        ({"confidence_floor": 1.0}, "confidence_floor"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": INF}, "temperature"),
        ({"level_weights": [1.0, NAN]}, "level_weights"),
    ],
)
def test_hierarchy_scorer_refuses_bad_settings(kwargs, message):
    from heal_rag.encoder import HEALEncoder
    from heal_rag.rerank import HierarchyScorer

    with pytest.raises(ValueError, match=message):
        HierarchyScorer(HEALEncoder.load(build_tiny_heal_model()), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epsilon": NAN}, "epsilon"),
        ({"silhouette_threshold": NAN}, "silhouette_threshold"),
        ({"n_perturbations": 1}, "n_perturbations"),
        ({"k_range": (2, NAN)}, "max_k"),
        ({"max_df": 0.0}, "max_df"),
        ({"membership_threshold": INF}, "membership_threshold"),
        ({"n_jobs": 0}, "n_jobs"),
        ({"max_depth": 0}, "max_depth"),
    ],
)
def test_hnmfk_refuses_bad_settings_before_any_work(kwargs, message):
    from heal_rag.hierarchy import HNMFk

    texts, _, _ = make_corpus(8)
    with pytest.raises(ValueError, match=message):
        HNMFk(**kwargs).fit(texts)


def test_cli_cluster_with_nan_threshold_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "cluster",
                "--data",
                str(corpus_file(tmp_path)),
                "--out",
                str(tmp_path / "l.jsonl"),
                "--silhouette-threshold",
                "nan",
            ]
        )
    assert "finite" in capsys.readouterr().err and not (tmp_path / "l.jsonl").exists()


def test_a_saved_model_holds_only_finite_numbers(tmp_path):
    texts, paths, titles = make_corpus()
    fine_tune(
        texts,
        paths,
        titles=titles,
        output_dir=tmp_path / "m",
        base_model=build_tiny_model(),
        max_steps=2,
        batch_size=8,
        show_progress_bar=False,
    )
    payload = json.loads((tmp_path / "m" / "heal_rag.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    centroids = np.concatenate([np.ravel(v) for v in payload["centroids"].values()])
    assert np.isfinite(centroids).all() and math.isfinite(payload["training"]["temperature"])


def test_cli_flags_reach_training_unchanged(tmp_path):
    data = corpus_file(tmp_path / "in")
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "m"),
                *tiny_training_flags(),
                "--temperature",
                "0.3",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "m" / "heal_rag.json").read_text())["training"]["temperature"] == 0.3
