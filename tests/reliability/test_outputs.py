"""Kind 1: nothing heal_rag did not write is ever deleted or replaced; output locations are checked up front."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _helpers import corpus_file, tiny_training_flags, tree_snapshot
from conftest import build_tiny_heal_model, build_tiny_model, make_corpus

from heal_rag.cli import main
from heal_rag.outputs import OUTPUT_MARKER, OutputPathError, prepare_output_dir, remove_stale_staging
from heal_rag.training import fine_tune

FAST = {"max_steps": 2, "batch_size": 8, "samples_per_leaf": 2, "learning_rate": 1e-2, "show_progress_bar": False}


def train_cli(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), *tiny_training_flags(), *extra])


def test_train_refuses_a_directory_with_foreign_files_and_keeps_them(tmp_path, capsys):
    data = corpus_file(tmp_path / "in")
    out = tmp_path / "some_dir"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):  # --overwrite never replaces what heal_rag did not write
        assert train_cli(data, out, *extra) == 2
        err = capsys.readouterr().err
        assert "notes.txt" in err and "heal_rag did not write" in err and str(out) in err
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_train_never_deletes_its_input(tmp_path, capsys):
    data = corpus_file(tmp_path / "data")
    before = tree_snapshot(tmp_path / "data")
    assert train_cli(data, tmp_path / "data") == 2
    assert "contains the input" in capsys.readouterr().err
    assert tree_snapshot(tmp_path / "data") == before


def test_an_input_inside_an_earlier_model_directory_is_never_replaced(tmp_path, capsys):
    out = tmp_path / "m"
    assert train_cli(corpus_file(tmp_path / "in"), out) == 0
    data = corpus_file(out, "corpus.jsonl")  # the user keeps the corpus inside the model directory
    assert train_cli(data, out, "--overwrite") == 2
    assert "contains the input" in capsys.readouterr().err and data.is_file()


def test_an_earlier_model_directory_needs_overwrite(tmp_path, capsys):
    data = corpus_file(tmp_path / "in")
    out = tmp_path / "m"
    assert train_cli(data, out) == 0
    first = (out / "heal_rag.json").read_bytes()
    assert train_cli(data, out, "--seed", "5") == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "heal_rag.json").read_bytes() == first
    assert train_cli(data, out, "--seed", "5", "--overwrite") == 0
    assert (out / "heal_rag.json").read_bytes() != first and (out / OUTPUT_MARKER).is_file()


def test_overwrite_never_deletes_files_added_to_an_earlier_model_directory(tmp_path, capsys):
    """--overwrite replaces what heal_rag wrote, not a user's notes kept beside it; its own exports/ may go."""
    data = corpus_file(tmp_path / "in")
    out = tmp_path / "m"
    assert train_cli(data, out) == 0
    (out / "exports").mkdir()
    (out / "exports" / "model.onnx").write_bytes(b"written by heal-rag export")
    (out / "notes").mkdir()
    (out / "notes" / "MY_NOTES.txt").write_text("mine")
    before = tree_snapshot(out)
    assert train_cli(data, out, "--seed", "5", "--overwrite") == 2
    err = capsys.readouterr().err
    assert "notes/MY_NOTES.txt" in err and "would delete them" in err and "exports" not in err
    assert tree_snapshot(out) == before
    (out / "notes" / "MY_NOTES.txt").unlink()
    (out / "notes").rmdir()
    assert train_cli(data, out, "--seed", "5", "--overwrite") == 0  # heal_rag's own files, exports included
    assert not (out / "exports").exists() and (out / "heal_rag.json").read_bytes() != before["heal_rag.json"]


def test_an_unwritable_output_fails_before_training(tmp_path, capsys, monkeypatch):
    import heal_rag.training

    data = corpus_file(tmp_path / "in")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setattr(heal_rag.training, "_train", lambda *a, **k: pytest.fail("training must not start"))
    assert train_cli(data, blocker / "model") == 2
    err = capsys.readouterr().err
    assert "Cannot write" in err and "a_file" in err and ".tmp-" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_fails_before_training(tmp_path, capsys):
    data = corpus_file(tmp_path / "in")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert train_cli(data, locked / "model") == 2
        assert "Cannot write" in capsys.readouterr().err
    finally:
        locked.chmod(0o755)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_staging_left_by_a_killed_run_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "m"
    stale = tmp_path / f".m.tmp-{_dead_pid()}-deadbeef"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    live = tmp_path / f".m.tmp-{os.getppid()}-cafecafe"  # a process that still runs: left alone
    live.mkdir()
    texts, paths, titles = make_corpus()
    fine_tune(texts, paths, titles=titles, output_dir=out, base_model=build_tiny_model(), **FAST)
    assert not stale.exists() and live.exists() and (out / "heal_rag.json").is_file()


def test_a_real_sigkill_during_save_leaves_staging_that_the_next_run_removes(tmp_path):
    """Kill a training process while it writes the model; the next run cleans up after it."""
    out = tmp_path / "m"
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(os.path.dirname(os.path.dirname(__file__)))!r})
from conftest import build_tiny_model, make_corpus
import heal_rag.training as training
original = training.build_metadata
def kill_during_save(**kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
training.build_metadata = kill_during_save
texts, paths, titles = make_corpus()
training.fine_tune(texts, paths, output_dir={str(out)!r}, base_model=build_tiny_model(), max_steps=1, batch_size=8,
                   show_progress_bar=False)
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert completed.returncode == -9
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".m.tmp-")]
    assert left and not out.exists()
    assert remove_stale_staging(out) == left and not any(p.exists() for p in left)


def test_every_writing_command_refuses_a_foreign_directory(tmp_path, capsys):
    data = corpus_file(tmp_path / "in")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.me").write_text("x")
    model = str(build_tiny_heal_model())
    commands = {
        "demo": ["demo", "--data", str(data), "--out", str(foreign), *tiny_training_flags()],
        "eval": ["eval", "--data", str(data), "--out", str(foreign), "--base-model", str(build_tiny_model())],
        "index": ["index", "--model", model, "--data", str(data), "--db", str(foreign)],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        assert "keep.me" in capsys.readouterr().err or name == "index"
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.me"]


def test_cluster_never_overwrites_its_input_or_an_existing_file(tmp_path, capsys):
    data = corpus_file(tmp_path / "in")
    before = data.read_bytes()
    assert main(["cluster", "--data", str(data), "--out", str(data), "--overwrite"]) == 2
    assert "contains the input" in capsys.readouterr().err and data.read_bytes() == before
    existing = tmp_path / "labels.jsonl"
    existing.write_text("mine\n")
    assert main(["cluster", "--data", str(data), "--out", str(existing)]) == 2
    assert "--overwrite" in capsys.readouterr().err and existing.read_text() == "mine\n"
    nested = tmp_path / "labels" / "run1" / "labels.jsonl"  # a folder that does not exist yet is made
    cluster = ["cluster", "--data", str(data), "--max-depth", "1", "--min-node-size", "10", "-q"]
    assert main([*cluster, "--out", str(nested)]) == 0
    assert nested.is_file() and nested.with_suffix(".tree.json").is_file()
    assert main([*cluster, "--out", str(nested), "--overwrite"]) == 0  # its own earlier output is replaced
    # --overwrite never replaces a file heal_rag did not write: the user's labels, or a corpus copy named as the tree
    mine = data.parent / "c.json"
    for flags in (["--out", str(existing)], ["--out", str(tmp_path / "new.jsonl"), "--tree", str(mine)]):
        mine.write_text('{"mine": 1}')
        assert main([*cluster, *flags, "--overwrite"]) == 2
        assert "not an earlier heal_rag output" in capsys.readouterr().err
    assert existing.read_text() == "mine\n" and mine.read_text() == '{"mine": 1}'


def test_eval_report_directory_is_replaced_only_with_overwrite(tmp_path, capsys):
    data = corpus_file(tmp_path / "in")
    out = tmp_path / "report"
    argv = ["eval", "--data", str(data), "--out", str(out), "--base-model", str(build_tiny_model()), "--map", "pca"]
    assert main(argv) == 0
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0 and (out / "report.md").is_file()


def test_fine_tune_applies_the_same_rules(tmp_path):
    texts, paths, titles = make_corpus()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(OutputPathError, match="heal_rag did not write"):
        fine_tune(texts, paths, output_dir=foreign, base_model=build_tiny_model(), overwrite=True, **FAST)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    with pytest.raises(OutputPathError, match="is an existing file"):
        prepare_output_dir(foreign / "notes.txt")


def test_resume_from_the_cli_equals_an_uninterrupted_run(tmp_path):
    import shutil

    from safetensors.numpy import load_file

    data = corpus_file(tmp_path / "in")
    flags = tiny_training_flags(steps=4)
    whole, checkpoints = tmp_path / "whole", tmp_path / "ck-whole"
    train = ["train", "--data", str(data), *flags, "--checkpoint-steps", "2"]
    assert main([*train, "--out", str(whole), "--checkpoints", str(checkpoints)]) == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    # A run killed after its step-2 checkpoint: only that checkpoint exists; --resume continues it.
    interrupted = tmp_path / "ck-killed"
    shutil.copytree(checkpoints / "checkpoint-2", interrupted / "checkpoint-2")
    # ... and killed again while writing its step-4 checkpoint: that one has no trainer_state.json and is passed over
    shutil.copytree(checkpoints / "checkpoint-4", interrupted / "checkpoint-4")
    (interrupted / "checkpoint-4" / "trainer_state.json").unlink()
    resumed = tmp_path / "resumed"
    with pytest.warns(UserWarning, match="Resuming from checkpoint-2: checkpoint-4 is incomplete"):
        assert main([*train, "--out", str(resumed), "--checkpoints", str(interrupted), "--resume"]) == 0
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    base = load_file(str(build_tiny_model() / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != base[k]).any() for k in a), "the model trained"


def test_resume_needs_a_checkpoint_and_leftover_checkpoints_need_resume(tmp_path, capsys):
    data = corpus_file(tmp_path / "in")
    empty = tmp_path / "ck"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "m"),
                *tiny_training_flags(),
                "--checkpoints",
                str(empty),
                "--resume",
            ]
        )
        == 2
    )
    assert "Nothing to resume" in capsys.readouterr().err and not (tmp_path / "m").exists()
    (empty / "checkpoint-2").mkdir(parents=True)
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "m"),
                *tiny_training_flags(),
                "--checkpoints",
                str(empty),
            ]
        )
        == 2
    )
    assert "--resume" in capsys.readouterr().err
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "m"), *tiny_training_flags(), "--checkpoints",
            str(empty), "--resume"]  # fmt: skip
    assert main(argv) == 2  # the only checkpoint was never finished: say so, and how to get out
    err = capsys.readouterr().err
    assert "No complete checkpoint" in err and "checkpoint-2 has no trainer_state.json" in err and "Delete" in err
