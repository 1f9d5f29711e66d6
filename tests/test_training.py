from __future__ import annotations

import json

import numpy as np
import pytest

from heal_rag.artifacts import model_fingerprint, read_metadata
from heal_rag.labels import LabelPaths
from heal_rag.queries import Query
from heal_rag.training import HEALTrainingConfig, build_training_rows, fine_tune

FAST = {"max_steps": 3, "batch_size": 8, "samples_per_leaf": 2, "learning_rate": 1e-2, "max_seq_length": 32}


def test_rows_pair_queries_with_their_documents(corpus):
    texts, paths, titles = corpus
    labels = LabelPaths(paths)
    rows = build_training_rows(
        texts,
        labels,
        ids=[f"d{i}" for i in range(len(texts))],
        titles=titles,
        queries=[("first query", "d3"), Query("second query", "d3")],
    )
    assert rows.paired and list(rows.columns) == ["query", "document", "label"]
    # d3 has two user queries; every other document gets one generated query (its title).
    assert len(rows) == len(texts) + 1
    d3_rows = [i for i, doc in enumerate(rows.columns["document"]) if doc == texts[3]]
    assert [rows.columns["query"][i] for i in d3_rows] == ["first query", "second query"]
    label_rows = np.asarray(rows.columns["label"])
    assert label_rows.shape[1] == labels.depth + 1
    assert (label_rows[d3_rows, -1] == 3).all()  # the document key pairs both queries with d3
    assert (label_rows[d3_rows, :-1] == labels.level_ids()[3]).all()  # queries inherit the path
    other = rows.columns["document"].index(texts[0])
    assert rows.columns["query"][other] == titles[0]


def test_rows_without_queries_or_generator_are_documents_only(corpus):
    texts, paths, _ = corpus
    rows = build_training_rows(texts, LabelPaths(paths), query_generator=None)
    assert not rows.paired and list(rows.columns) == ["document", "label"]
    assert np.asarray(rows.columns["label"]).shape == (len(texts), 2)


def test_custom_query_generator_is_used(corpus):
    texts, paths, _ = corpus
    calls = []

    def generator(documents, titles):
        calls.append(len(documents))
        return [f"about {d.split()[0]}" for d in documents]

    rows = build_training_rows(texts, LabelPaths(paths), query_generator=generator)
    assert calls == [len(texts)]
    assert rows.columns["query"][0] == f"about {texts[0].split()[0]}"


PASSAGES = [
    "Lasers cool atoms to microkelvin temperatures in traps. The cloud is then imaged with a camera and its density "
    "is measured.",
    "Proteins fold into shapes that decide their function in cells. Misfolded proteins cause several known diseases "
    "in humans and animals.",
    "Rivers carry sediment from high valleys down to the open sea. Deltas grow where the river slows down and "
    "drops the sand and clay it carried "
    "from the mountains.",
]


def test_the_inverse_cloze_task_shows_documents_without_their_key_sentence():
    labels = LabelPaths([["physics", "optics"], ["biology", "cells"], ["earth", "rivers"]])
    titles = [None, "Protein folding", None]  # a title query is not cut from the text: that document stays whole
    rows = build_training_rows(PASSAGES, labels, titles=titles, inverse_cloze_rate=1.0)
    shown = dict(zip(rows.columns["query"], rows.columns["document"], strict=True))
    for query, document in shown.items():
        assert query not in document  # never the query's own words to copy
    assert shown["Protein folding"] == PASSAGES[1]
    assert len(rows.document_texts) == 3 and rows.document_texts[1] == PASSAGES[1]
    assert rows.document_texts[0] != PASSAGES[0] and rows.document_texts[0] in PASSAGES[0]
    assert rows.subset([0]).document_texts == rows.document_texts  # per input document, whatever the rows
    whole = build_training_rows(PASSAGES, labels, titles=titles)  # the default shows every document whole
    assert whole.columns["document"] == PASSAGES and whole.document_texts == []
    half = [
        build_training_rows(PASSAGES * 20, LabelPaths([["a", "b"]] * 60), inverse_cloze_rate=0.5, seed=s)
        for s in (0, 1)
    ]
    cut = [sum(d not in PASSAGES for d in rows.columns["document"]) for rows in half]
    assert all(10 < n < 50 for n in cut) and half[0].columns != half[1].columns  # about half, chosen by the seed


def test_remove_key_sentence_cuts_the_whole_sentence_or_nothing():
    from heal_rag.queries import KeySentenceQueryGenerator, remove_key_sentence

    text = (
        "Intro line. Laser cooling of\n rubidium atoms reaches microkelvin temperatures in a magneto-optical trap, "
        "as shown by imaging. Then we measured the cloud density."
    )
    query = KeySentenceQueryGenerator(max_words=5)([text], [None])[0]
    assert query == "Laser cooling of rubidium atoms"
    assert remove_key_sentence(text, query) == "Intro line. Then we measured the cloud density."
    assert remove_key_sentence(text, "not in the text") is None
    assert remove_key_sentence("Only one sentence here.", "Only one sentence here") is None  # nothing would remain


def test_hold_out_for_the_blend_searches_the_documents_as_trained():
    from heal_rag.training import _hold_out_for_share_choice

    texts = PASSAGES * 30
    labels = LabelPaths([["a", "b"], ["c", "d"], ["e", "f"]] * 30)
    config = HEALTrainingConfig(inverse_cloze_rate=1.0, blend_min_validation_queries=1)
    rows = build_training_rows(texts, labels, inverse_cloze_rate=1.0)
    _, validation, reason = _hold_out_for_share_choice(rows, texts, config)
    assert validation is not None and not reason
    for query, gold in zip(validation.queries, validation.gold, strict=True):
        assert query not in validation.corpus[gold]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"queries": [("q", "nope")]}, "not among the documents"),
        ({"ids": ["a"]}, "but 1 ids"),
        ({"queries": [("q", "0")], "query_generator": None}, "have no query"),
    ],
)
def test_row_building_errors(corpus, kwargs, message):
    texts, paths, _ = corpus
    with pytest.raises(ValueError, match=message):
        build_training_rows(texts, LabelPaths(paths), **kwargs)


def test_mismatched_labels_and_documents(corpus):
    texts, paths, _ = corpus
    with pytest.raises(ValueError, match="label paths"):
        fine_tune(texts, paths[:-1], output_dir="unused", **FAST)


def test_unknown_setting_is_rejected(corpus, tmp_path):
    texts, paths, _ = corpus
    with pytest.raises(TypeError, match="Unknown fine_tune settings"):
        fine_tune(texts, paths, output_dir=tmp_path / "m", learning_rat=1e-3)


def test_fine_tune_saves_a_plain_sentence_transformer_with_heal_metadata(corpus, tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    texts, paths, titles = corpus
    out = tmp_path / "heal-model"
    before = SentenceTransformer(str(tiny_model_dir), device="cpu").encode_document(texts)
    result = fine_tune(
        texts, paths, titles=titles, output_dir=out, base_model=tiny_model_dir, show_progress_bar=False, **FAST
    )
    assert result.global_steps == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heal-model"]  # no temporary directories left behind

    reloaded = SentenceTransformer(str(out), device="cpu")
    after = reloaded.encode_document(texts)
    assert not np.allclose(before, after), "training should have changed the weights"
    np.testing.assert_allclose(after, result.model.encode_document(texts), atol=1e-6)

    metadata = read_metadata(out)
    assert metadata["fingerprint"] == model_fingerprint(out)
    assert metadata["training"]["max_steps"] == 3 and metadata["training"]["paired_queries"] is True
    tree = metadata["label_tree"]
    assert tree["depth"] == 2 and tree["levels"][0]["names"] == ["Biology", "Maths", "Physics"]
    assert tree["levels"][1]["parents"] == [0, 0, 1, 1, 2, 2]
    centroids = np.asarray(metadata["centroids"]["level_1"])
    assert centroids.shape == (6, 16)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-4)
    json.dumps(metadata)  # plain JSON


def test_fine_tune_documents_only_and_soft_weights(corpus, tiny_model_dir, tmp_path):
    texts, paths, _ = corpus
    labels = LabelPaths(paths, weights=[[1.0, 0.5 + 0.5 * (i % 2)] for i in range(len(paths))])
    result = fine_tune(
        texts,
        labels,
        output_dir=tmp_path / "m",
        base_model=tiny_model_dir,
        query_generator=None,
        show_progress_bar=False,
        config=HEALTrainingConfig(**FAST, level_weights="uniform", consistency_weight=0.5),
    )
    assert result.metadata["training"]["paired_queries"] is False
    assert np.isfinite(result.train_loss) and result.train_loss > 0


def test_retraining_replaces_the_output_directory_whole_only_with_overwrite(corpus, tiny_model_dir, tmp_path):
    from heal_rag.outputs import OUTPUT_MARKER, OutputPathError

    texts, paths, _ = corpus
    out = tmp_path / "m"
    fine_tune(texts, paths, output_dir=out, base_model=tiny_model_dir, show_progress_bar=False, **FAST)
    first = read_metadata(out)["fingerprint"]
    with pytest.raises(OutputPathError, match="--overwrite"):
        fine_tune(texts, paths, output_dir=out, base_model=tiny_model_dir, show_progress_bar=False, seed=7, **FAST)
    assert read_metadata(out)["fingerprint"] == first
    # a file an earlier run wrote (it is in the output's file list) and this one will not: the directory is replaced
    (out / "old_extra.txt").write_text("from an older run")
    marker = json.loads((out / OUTPUT_MARKER).read_text())
    (out / OUTPUT_MARKER).write_text(json.dumps({**marker, "files": [*marker["files"], "old_extra.txt"]}))
    fine_tune(
        texts,
        paths,
        output_dir=out,
        base_model=tiny_model_dir,
        show_progress_bar=False,
        seed=7,
        overwrite=True,
        **FAST,
    )
    assert not (out / "old_extra.txt").exists()
    assert read_metadata(out)["fingerprint"] != first


def test_failed_training_leaves_nothing_behind(corpus, tiny_model_dir, tmp_path, monkeypatch):
    import heal_rag.training as training

    texts, paths, _ = corpus

    def broken_metadata(**kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(training, "build_metadata", broken_metadata)
    with pytest.raises(RuntimeError, match="disk full"):
        fine_tune(texts, paths, output_dir=tmp_path / "m", base_model=tiny_model_dir, show_progress_bar=False, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_checkpoints_and_resume_come_from_the_trainer(corpus, tiny_model_dir, tmp_path):
    texts, paths, _ = corpus
    out = tmp_path / "m"
    common = {
        **FAST,
        "output_dir": out,
        "base_model": tiny_model_dir,
        "show_progress_bar": False,
        "training_args": {"save_strategy": "steps", "save_steps": 1},
    }
    fine_tune(texts, paths, **{**common, "max_steps": 2})
    checkpoints = sorted(p.name for p in (tmp_path / "m.checkpoints").iterdir())
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]
    resumed = fine_tune(
        texts,
        paths,
        **{**common, "max_steps": 3},
        resume_from_checkpoint=str(tmp_path / "m.checkpoints" / "checkpoint-2"),
        overwrite=True,
    )
    assert resumed.global_steps == 3
    assert read_metadata(out)["training"]["global_steps"] == 3


def test_resuming_with_other_settings_or_data_is_refused_before_training(corpus, tiny_model_dir, tmp_path):
    from heal_rag.checkpoints import RUN_RECORD_FILE

    texts, paths, _ = corpus
    common = {
        **FAST,
        "output_dir": tmp_path / "m",
        "base_model": tiny_model_dir,
        "show_progress_bar": False,
        "checkpoint_dir": tmp_path / "ckpt",
        "checkpoint_steps": 1,
    }
    fine_tune(texts, paths, **{**common, "max_steps": 2})
    record = json.loads((tmp_path / "ckpt" / "checkpoint-2" / RUN_RECORD_FILE).read_text())
    assert record["settings"]["temperature"] == HEALTrainingConfig().temperature
    assert "max_steps" not in record["settings"] and len(record["rows_sha256"]) == 64

    def state():  # every path, and every file's contents (the writability check touches directories' times)
        return sorted((p.relative_to(tmp_path), p.is_file() and p.read_bytes()) for p in tmp_path.rglob("*"))

    before = state()
    with pytest.raises(ValueError, match=r"other settings \(temperature 0\.1 → 0\.3\).*only max_steps and epochs"):
        fine_tune(texts, paths, **{**common, "temperature": 0.3}, resume_from_checkpoint=True, overwrite=True)
    with pytest.raises(ValueError, match=r"other settings \(training_args\.weight_decay None → 0\.1\)"):
        args = {"weight_decay": 0.1, "logging_steps": 5}  # how often to log is not a setting of the run
        fine_tune(texts, paths, **common, training_args=args, resume_from_checkpoint=True, overwrite=True)
    changed = [*texts[:-1], texts[-1] + " (edited)"]
    with pytest.raises(ValueError, match="other training data"):
        fine_tune(changed, paths, **common, resume_from_checkpoint=True, overwrite=True)
    assert state() == before, "a refused resume must write nothing"
    # the step budget may change: training goes on from checkpoint-2
    assert fine_tune(texts, paths, **common, resume_from_checkpoint=True, overwrite=True).global_steps == 3
    # a checkpoint without the record (an older heal_rag's) is resumed, with a warning that it cannot be checked
    (tmp_path / "ckpt" / "checkpoint-3" / RUN_RECORD_FILE).unlink()
    with pytest.warns(UserWarning, match="has no heal_rag_run.json"):
        resumed = fine_tune(texts, paths, **{**common, "max_steps": 4}, resume_from_checkpoint=True, overwrite=True)
    assert resumed.global_steps == 4


def test_the_run_record_is_plain_json_whatever_the_setting_types():
    from heal_rag.checkpoints import run_record
    from heal_rag.training import TrainingRows

    rows = TrainingRows({"document": ["a", "b"], "label": [np.array([0.0, 1.0]), [1.0, 2.0]]}, 1, False, [0, 1])
    record = run_record(HEALTrainingConfig(batch_size=np.int64(8), samples_per_leaf=2), rows, {"seed": np.int32(3)})
    assert json.loads(json.dumps(record)) == record
    assert record["settings"]["batch_size"] == 8 and record["training_args"] == {"seed": 3}
    other = TrainingRows({"document": ["a", "c"], "label": [[0.0, 1.0], [1.0, 2.0]]}, 1, False, [0, 1])
    assert run_record(HEALTrainingConfig(), other)["rows_sha256"] != record["rows_sha256"]


def test_write_json_atomic_leaves_no_temp_files_and_normal_mode(tmp_path):
    import os

    from heal_rag.artifacts import write_json_atomic

    target = tmp_path / "x.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"a": 2}, "a failed write must not touch the existing file"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_base_weight_share_blends_the_tuned_weights_with_the_base(corpus, tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    texts, paths, _ = corpus
    base = SentenceTransformer(str(tiny_model_dir), device="cpu").state_dict()
    tuned = fine_tune(
        texts,
        paths,
        output_dir=tmp_path / "tuned",
        base_model=tiny_model_dir,
        show_progress_bar=False,
        base_weight_share=0.0,
        **FAST,
    )
    blended = fine_tune(
        texts,
        paths,
        output_dir=tmp_path / "blended",
        base_model=tiny_model_dir,
        show_progress_bar=False,
        base_weight_share=0.25,
        **FAST,
    )
    assert blended.metadata["training"]["base_weight_share"] == 0.25
    tuned_state = tuned.model.state_dict()
    saved_state = SentenceTransformer(str(tmp_path / "blended"), device="cpu").state_dict()
    moved = 0
    for name, value in saved_state.items():
        expected = 0.75 * tuned_state[name] + 0.25 * base[name] if value.is_floating_point() else base[name]
        np.testing.assert_allclose(value.numpy(), expected.numpy(), atol=1e-6, err_msg=name)
        moved += int(not np.allclose(value.numpy(), tuned_state[name].numpy()))
    assert moved > 0, "blending should have changed the tuned weights"


@pytest.mark.parametrize("share", [-0.1, 1.0, 1.5])
def test_base_weight_share_out_of_range_is_rejected(corpus, tmp_path, share):
    texts, paths, _ = corpus
    with pytest.raises(ValueError, match=r"base_weight_share must lie in \[0, 1\)"):
        fine_tune(texts, paths, output_dir=tmp_path / "m", base_weight_share=share)
    assert not (tmp_path / "m").exists()


def test_only_key_sentence_queries_is_true_only_when_every_query_will_be_a_key_sentence():
    from heal_rag.queries import KeySentenceQueryGenerator
    from heal_rag.training import DEFAULT_QUERY_GENERATOR, only_key_sentence_queries

    assert only_key_sentence_queries([None, " "], None, DEFAULT_QUERY_GENERATOR)
    assert only_key_sentence_queries(None, None, DEFAULT_QUERY_GENERATOR)
    assert not only_key_sentence_queries([None, "A title"], None, DEFAULT_QUERY_GENERATOR), "titles become queries"
    assert only_key_sentence_queries([None, "A title"], None, KeySentenceQueryGenerator(use_titles=False))
    assert not only_key_sentence_queries([None], [Query("q", "0")], DEFAULT_QUERY_GENERATOR), "given queries"
    assert not only_key_sentence_queries([None], None, None), "no queries at all"
    assert not only_key_sentence_queries([None], None, lambda docs, titles: ["q"] * len(docs)), "another generator"

    class Questions(KeySentenceQueryGenerator):  # a subclass may write real questions
        pass

    assert not only_key_sentence_queries([None], None, Questions())


def test_measured_settings_never_override_the_users_own():
    from heal_rag.training import (
        DISCOVERED_LABELS_SETTINGS,
        HEADING_QUERY_SETTINGS,
        KEY_SENTENCE_QUERY_SETTINGS,
        measured_settings,
    )

    mine = {"inverse_cloze_rate": 0.0, "max_steps": 3}
    settings = measured_settings(mine, discovered_labels=False, key_sentence_queries=True, heading_queries=True)
    assert settings == {**KEY_SENTENCE_QUERY_SETTINGS, "inverse_cloze_rate": 0.0, "max_steps": 3}
    assert settings["hierarchy_views"] == "documents" and settings["blend_standard_errors"] == 1.0
    assert settings["hard_negatives"] == 0, "no mined negatives for key-sentence queries"
    headings = measured_settings(mine, discovered_labels=False, key_sentence_queries=False, heading_queries=True)
    assert headings == {**HEADING_QUERY_SETTINGS, **mine} and "blend_standard_errors" not in headings
    assert headings["hard_negatives"] == "auto"
    discovered = measured_settings(mine, discovered_labels=True, key_sentence_queries=True, heading_queries=True)
    assert discovered == {**DISCOVERED_LABELS_SETTINGS, **mine}, "discovered labels keep their own settings"
    assert measured_settings(mine, discovered_labels=False, key_sentence_queries=False) == mine, "document titles"
    HEALTrainingConfig(**KEY_SENTENCE_QUERY_SETTINGS)  # valid configurations
    HEALTrainingConfig(**HEADING_QUERY_SETTINGS)


def test_only_generated_queries_is_true_only_for_the_default_generator_without_given_queries():
    from heal_rag.queries import KeySentenceQueryGenerator
    from heal_rag.training import DEFAULT_QUERY_GENERATOR, only_generated_queries

    assert only_generated_queries(None, DEFAULT_QUERY_GENERATOR)
    assert only_generated_queries([], KeySentenceQueryGenerator(use_titles=False))
    assert not only_generated_queries([Query("q", "0")], DEFAULT_QUERY_GENERATOR), "given (or LLM) questions"
    assert not only_generated_queries(None, None), "no queries at all"

    class Questions(KeySentenceQueryGenerator):
        pass

    assert not only_generated_queries(None, Questions())
