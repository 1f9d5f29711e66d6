"""The cases a second adversarial pass found after the first fixes, one test each, kept by kind."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from _helpers import corpus_file, tiny_training_flags, tree_snapshot
from conftest import build_tiny_heal_model, build_tiny_model, make_corpus

from heal_rag.artifacts import MetadataError
from heal_rag.cli import main
from heal_rag.encoder import HEALEncoder
from heal_rag.models import CorruptModelError, UnsafeModelError, load_sentence_transformer


def copy_model(tmp_path, name="m", source=None):
    target = tmp_path / name
    shutil.copytree(source or build_tiny_heal_model(), target)
    return target


# ---- kind 1: outputs ----------------------------------------------------------------------------------------------
def test_a_file_named_heal_rag_json_does_not_make_a_folder_ours(tmp_path, capsys):
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "heal_rag.json").write_text('{"app": 1}')
    (project / "src" / "main.py").write_text("print('mine')")
    before = tree_snapshot(project)
    assert main(["train", "--data", str(corpus_file(tmp_path / "in")), "--out", str(project), "--overwrite",
                 *tiny_training_flags()]) == 2  # fmt: skip
    assert "heal_rag did not write" in capsys.readouterr().err and tree_snapshot(project) == before


def test_eval_never_replaces_a_model_with_a_report(tmp_path, capsys):
    model = copy_model(tmp_path)
    before = tree_snapshot(model)
    argv = ["eval", "--data", str(corpus_file(tmp_path / "in")), "--base-model", str(build_tiny_model()),
            "--model", str(model), "--out", str(model), "--overwrite"]  # fmt: skip
    assert main(argv) == 2
    assert "contains the input" in capsys.readouterr().err and tree_snapshot(model) == before
    other = copy_model(tmp_path, "other")
    argv[argv.index("--model") + 1] = str(other)
    assert main(argv) == 2 and "holds a heal_rag model, not a report" in capsys.readouterr().err


def test_the_base_model_is_an_input_of_train_and_demo(tmp_path, capsys):
    data = corpus_file(tmp_path / "in")
    model = copy_model(tmp_path)
    before = tree_snapshot(model)
    flags = ["--max-steps", "2", "--batch-size", "8"]
    assert (
        main(["train", "--data", str(data), "--out", str(model), "--base-model", str(model), "--overwrite", *flags])
        == 2
    )
    assert "contains the input" in capsys.readouterr().err
    demo = tmp_path / "d1"
    assert main(["demo", "--data", str(data), "--out", str(demo), "--base-model", str(model), *flags]) == 0
    capsys.readouterr()
    assert main(["demo", "--data", str(data), "--out", str(demo), "--base-model", str(demo / "model"), *flags]) == 2
    assert "contains the input" in capsys.readouterr().err and tree_snapshot(model) == before


def test_cluster_outputs_may_not_collide(tmp_path, capsys):
    data = corpus_file(tmp_path / "in")
    for out, tree in (("labels.txt", "labels.json"), ("labels.jsonl", "t.txt")):
        assert (
            main(["cluster", "--data", str(data), "--out", str(tmp_path / out), "--tree", str(tmp_path / tree)]) == 2
        )
        assert "three different files" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_the_index_database_may_not_go_into_an_input_folder_or_the_model(tmp_path, capsys):
    docs = tmp_path / "docs" / "topic"
    docs.mkdir(parents=True)
    (docs / "a.md").write_text("# A\n\nlaser light")
    model = copy_model(tmp_path)
    for db in (tmp_path / "docs" / "db", model / "db"):
        assert main(["index", "--model", str(model), "--data", str(tmp_path / "docs"), "--db", str(db)]) == 2
        assert "input" in capsys.readouterr().err and not db.exists()


# ---- kind 3: model files ------------------------------------------------------------------------------------------
def dense_model(tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    base = SentenceTransformer(str(build_tiny_model()), device="cpu")
    model = SentenceTransformer(modules=[base[0], Dense(16, 8)], device="cpu")
    model.save(str(tmp_path / "dense"))
    return tmp_path / "dense", next(p for p in (tmp_path / "dense").iterdir() if p.name.endswith("Dense"))


def test_a_pickle_beside_an_unrelated_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import load_file

    path, dense = dense_model(tmp_path)
    weights = load_file(str(dense / "model.safetensors"))
    (dense / "model.safetensors").rename(dense / "backup.safetensors")
    torch.save(weights, dense / "pytorch_model.bin")
    with pytest.raises(UnsafeModelError, match="pytorch_model.bin"):
        load_sentence_transformer(path)


def test_a_pickle_in_a_hidden_module_folder_is_refused(tmp_path):
    from safetensors.torch import load_file

    path, dense = dense_model(tmp_path)
    weights = load_file(str(dense / "model.safetensors"))
    hidden = dense.rename(path / f".{dense.name}")
    (hidden / "model.safetensors").unlink()
    torch.save(weights, hidden / "pytorch_model.bin")
    modules = json.loads((path / "modules.json").read_text())
    modules[-1]["path"] = hidden.name
    (path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UnsafeModelError, match="pytorch_model.bin"):
        load_sentence_transformer(path)


def test_resuming_from_a_checkpoint_with_pickled_weights_is_refused(tmp_path, capsys):
    from safetensors.torch import load_file

    data = corpus_file(tmp_path / "in")
    checkpoints = tmp_path / "ck"
    flags = [*tiny_training_flags(steps=4), "--checkpoints", str(checkpoints), "--checkpoint-steps", "2"]
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "a"), *flags]) == 0
    shutil.rmtree(checkpoints / "checkpoint-4")
    step2 = checkpoints / "checkpoint-2"
    torch.save(load_file(str(step2 / "model.safetensors")), step2 / "pytorch_model.bin")
    (step2 / "model.safetensors").unlink()
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "b"), *flags, "--resume"]) == 2
    assert "pytorch_model.bin" in capsys.readouterr().err and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("file", "content"),
    [("tokenizer.json", '{"model": 1}'), ("modules.json", "[1, 2]"), ("config_sentence_transformers.json", "{")],
)
def test_damaged_model_files_are_one_line_errors(tmp_path, capsys, file, content):
    model = copy_model(tmp_path, source=build_tiny_model())
    (model / file).write_text(content)
    with pytest.raises(CorruptModelError, match="Could not load the model"):
        load_sentence_transformer(model)
    assert main(["train", "--data", str(corpus_file(tmp_path / "in")), "--out", str(tmp_path / "out"),
                 "--base-model", str(model), "--max-steps", "1"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "Could not load the model" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "message"),
    [("[1]", "not a heal_rag model description"), ("{", "not valid JSON"), (None, "'fingerprint' missing")],
)
def test_a_damaged_heal_rag_json_is_named_and_nothing_is_created(tmp_path, capsys, content, message):
    model = copy_model(tmp_path)
    payload = json.loads((model / "heal_rag.json").read_text())
    payload.pop("fingerprint")
    (model / "heal_rag.json").write_text(content if content is not None else json.dumps(payload))
    with pytest.raises(MetadataError, match=message):
        HEALEncoder.load(model)
    argv = ["index", "--model", str(model), "--data", str(corpus_file(tmp_path / "in")), "--db", str(tmp_path / "db")]
    assert main(argv) == 2
    assert message.strip("'") in capsys.readouterr().err and not (tmp_path / "db").exists()


def test_weights_swapped_under_an_unchanged_heal_rag_json_are_refused(tmp_path):
    model = copy_model(tmp_path)
    other = tmp_path / "other"
    from conftest import train_tiny_heal_model

    train_tiny_heal_model(other, seed=7)
    (model / "NOTES.txt").write_text("mine")  # a user's file beside the weights changes nothing the model computes
    (model / "labels").mkdir()
    (model / "labels" / "l.jsonl").write_text("{}")
    assert HEALEncoder.load(model).fingerprint == json.loads((model / "heal_rag.json").read_text())["fingerprint"]
    shutil.copy(other / "model.safetensors", model / "model.safetensors")
    with pytest.raises(MetadataError, match="changed after its heal_rag.json was written"):
        HEALEncoder.load(model)


# ---- kind 4: stale model through LangChain's own Chroma store ------------------------------------------------------
def test_a_langchain_chroma_store_built_by_hand_refuses_another_model(tmp_path):
    langchain_chroma = pytest.importorskip("langchain_chroma")
    from heal_rag.chroma import StaleModelError, build_index, open_client
    from heal_rag.data import Corpus
    from heal_rag.labels import LabelPaths
    from heal_rag.langchain import HEALEmbeddings

    texts, paths, titles = make_corpus()
    corpus = Corpus([f"d{i}" for i in range(len(texts))], texts, titles, LabelPaths(paths))
    build_index(str(build_tiny_heal_model()), corpus, tmp_path / "db", show_progress=False)
    other = HEALEmbeddings(model=str(build_tiny_model()))
    store = langchain_chroma.Chroma(client=open_client(tmp_path / "db"), collection_name="heal_rag",
                                    embedding_function=other)  # fmt: skip
    with pytest.raises(StaleModelError):
        store.similarity_search("laser", k=2)
    with pytest.raises(StaleModelError):
        store.add_texts(["a new text"])
    right = langchain_chroma.Chroma(client=open_client(tmp_path / "db"), collection_name="heal_rag",
                                    embedding_function=HEALEmbeddings(model=str(build_tiny_heal_model())))  # fmt: skip
    assert len(right.similarity_search("laser", k=2)) == 2


def test_the_chatbot_refuses_a_collection_built_by_another_model(tmp_path):
    from heal_rag.chatbot import Chatbot
    from heal_rag.chroma import StaleModelError, build_index
    from heal_rag.data import Corpus
    from heal_rag.encoder import HEALEncoder
    from heal_rag.labels import LabelPaths

    texts, paths, titles = make_corpus()
    corpus = Corpus([f"d{i}" for i in range(len(texts))], texts, titles, LabelPaths(paths))
    collection = build_index(str(build_tiny_heal_model()), corpus, tmp_path / "db", show_progress=False)
    other = tmp_path / "other"
    from conftest import train_tiny_heal_model

    train_tiny_heal_model(other, seed=7)  # same architecture and labels, other weights: only the fingerprint differs
    with pytest.raises(StaleModelError):
        Chatbot(HEALEncoder.load(other), collection)
    answer, sources = Chatbot(HEALEncoder.load(build_tiny_heal_model()), collection).ask("laser light")
    assert "[1] " in answer and len(sources) == 3


# ---- kind 2: settings ----------------------------------------------------------------------------------------------
def test_absurd_learning_rates_are_refused_and_a_collapsed_model_is_not_saved(tmp_path, capsys, monkeypatch):
    import heal_rag.training as training
    from heal_rag.losses import TrainingDivergedError

    data = corpus_file(tmp_path / "in")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "m"), "--lr", "1e30"]) == 2
    assert "learning_rate must lie in (0, 1]" in capsys.readouterr().err
    original = training._train

    def collapse(model, *args, **kwargs):
        output = original(model, *args, **kwargs)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.zero_()
        return output

    monkeypatch.setattr(training, "_train", collapse)
    texts, paths, _ = make_corpus()
    with pytest.raises(TrainingDivergedError, match="diverged"):
        training.fine_tune(texts, paths, output_dir=tmp_path / "m", base_model=build_tiny_model(), max_steps=1,
                           batch_size=8, show_progress_bar=False)  # fmt: skip
    assert not (tmp_path / "m").exists()


def test_nothing_to_train_is_refused():
    from heal_rag.training import HEALTrainingConfig

    with pytest.raises(ValueError, match="nothing to train"):
        HEALTrainingConfig(level_weights=[0, 0], query_document_weight=0)


def test_a_sequence_limit_beyond_the_models_positions_is_refused_up_front(tmp_path, capsys):
    data = corpus_file(tmp_path / "in")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "m"), "--max-seq-length", "100000"]) == 2
    assert main(["eval", "--data", str(data), "--max-seq-length", "100000", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("exceeds what this model can read (512 positions)") == 2 and "Traceback" not in err


def test_python_api_settings_are_checked():
    from heal_rag.rerank import HierarchyScorer

    encoder = HEALEncoder.load(build_tiny_heal_model())
    for temperature in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            encoder.predict_path(["laser"], temperature=temperature)
    scorer = HierarchyScorer(encoder)
    for top_n in (0, -1):
        with pytest.raises(ValueError, match="top_n"):
            scorer.rerank("laser", ["laser light", "gene dna"], top_n=top_n)
    with pytest.raises(ValueError, match="margin=0"):
        HierarchyScorer(encoder, level_weights=[0, 0])


def test_level_weights_of_the_wrong_length_and_huge_seeds_fail_before_loading(tmp_path, capsys, monkeypatch):
    import heal_rag.models

    monkeypatch.setattr(heal_rag.models, "load_sentence_transformer", lambda *a, **k: pytest.fail("model loaded"))
    data = corpus_file(tmp_path / "in")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "m"), "--level-weights", "1"]) == 2
    assert "1 values but the labels have 2" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "m"), "--seed", "99999999999999999999"]) == 2
    assert "seed must be an integer in [0, 4.29497e+09]" in capsys.readouterr().err


def test_the_demo_refuses_a_split_with_nothing_to_train_on(tmp_path, capsys):
    data = corpus_file(tmp_path / "in")
    assert main(["demo", "--data", str(data), "--out", str(tmp_path / "d"), "--test-fraction", "0.99",
                 *tiny_training_flags()]) == 2  # fmt: skip
    assert "documents to train on; lower it" in capsys.readouterr().err


# ---- kind 6: truncation in training and evaluation ------------------------------------------------------------------
def test_training_and_eval_warn_about_long_texts(tmp_path, capsys):
    from conftest import write_corpus_jsonl

    from heal_rag.encoder import TruncationWarning
    from heal_rag.training import fine_tune

    texts, paths, titles = make_corpus()
    long_texts = [" ".join([t] * 40) for t in texts]  # > 128 tokens each
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fine_tune(long_texts, paths, titles=titles, output_dir=tmp_path / "m", max_steps=1, batch_size=8,
                  max_seq_length=128, show_progress_bar=False)  # fmt: skip
    messages = [str(w.message) for w in caught if issubclass(w.category, TruncationWarning)]
    assert any(m.startswith("24 of 24 training documents are longer than max_seq_length=128") for m in messages)
    data = write_corpus_jsonl(tmp_path / "long.jsonl", long_texts, paths, titles)
    assert (
        main(["eval", "--data", str(data), "--max-seq-length", "128", "--out", str(tmp_path / "r"), "--map", "pca"])
        == 0
    )
    assert (
        "heal-rag eval: warning: 24 of 24 documents are longer than all-MiniLM-L6-v2's token limit (128)"
        in capsys.readouterr().err
    )


# ---- kind 9: inputs ------------------------------------------------------------------------------------------------
def test_folder_given_where_a_file_is_needed_and_empty_query_files(tmp_path, capsys):
    data = corpus_file(tmp_path / "in")
    assert main(["eval", "--data", str(tmp_path / "in"), "--out", str(tmp_path / "r")]) == 2
    assert "is a folder; this takes a JSONL corpus" in capsys.readouterr().err
    empty = tmp_path / "q.jsonl"
    empty.write_text("\n")
    assert main(["eval", "--data", str(data), "--queries", str(empty), "--out", str(tmp_path / "r")]) == 2
    assert "holds no queries" in capsys.readouterr().err


def test_n_jobs_below_minus_one_is_refused():
    from heal_rag.hierarchy import HNMFk

    texts, _, _ = make_corpus(8)
    with pytest.raises(ValueError, match="n_jobs"):
        HNMFk(n_jobs=-7).fit(texts)


def test_resuming_a_finished_run_is_refused(tmp_path, capsys):
    data = corpus_file(tmp_path / "in")
    flags = [*tiny_training_flags(steps=4), "--checkpoints", str(tmp_path / "ck"), "--checkpoint-steps", "2"]
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "a"), *flags]) == 0
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "b"), *flags, "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err and not (tmp_path / "b").exists()
