"""`heal-rag eval` and the report writer, on the tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_corpus_jsonl

from heal_rag.cli import main
from heal_rag.data import read_corpus
from heal_rag.evaluation.report import EvaluationTask, evaluate_bm25, evaluate_embedding_model, write_report
from heal_rag.queries import Query

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def corpus_file(corpus, tmp_path):
    texts, paths, titles = corpus
    return write_corpus_jsonl(tmp_path / "c.jsonl", texts, paths, titles)


def test_cli_eval_writes_a_complete_ab_report(corpus_file, tiny_model_dir, tiny_heal_model_dir, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(
        [
            "eval",
            "--data",
            str(corpus_file),
            "--base-model",
            str(tiny_model_dir),
            "--model",
            str(tiny_heal_model_dir),
            "--bm25",
            "--map",
            "pca",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".heal_rag-output",
        "levels.png",
        "map.png",
        "metrics.json",
        "report.html",
        "report.md",
    ]
    assert (out / "levels.png").read_bytes().startswith(PNG_MAGIC)
    assert (out / "map.png").read_bytes().startswith(PNG_MAGIC)
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["models"]) == ["tiny-static", "tiny-heal", "bm25"]
    assert metrics["models"]["bm25"]["classification"] is None
    assert set(metrics["models"]["tiny-heal"]["classification"]) == {"acc/L0", "acc/L1", "hP", "hR", "hF1"}
    paired = metrics["minus_reference"]
    assert set(paired) == {"tiny-heal", "bm25"}
    heal_mrr = paired["tiny-heal"]["MRR@10"]
    expected = (
        metrics["models"]["tiny-heal"]["retrieval"]["MRR@10"] - metrics["models"]["tiny-static"]["retrieval"]["MRR@10"]
    )
    assert heal_mrr["mean"] == pytest.approx(expected)
    assert heal_mrr["low"] <= heal_mrr["mean"] <= heal_mrr["high"]
    markdown = (out / "report.md").read_text()
    assert "| tiny-heal − tiny-static |" in markdown.replace(" | bm25 − tiny-static", "")
    mrr_row = next(line for line in markdown.splitlines() if line.startswith("| MRR@10 |"))
    assert f"{heal_mrr['mean']:+.4f} [{heal_mrr['low']:+.4f}, {heal_mrr['high']:+.4f}]" in mrr_row
    assert "![per-level metrics](levels.png)" in markdown
    assert "<img src='map.png'" in (out / "report.html").read_text()
    assert "report:" in capsys.readouterr().out


def test_report_numbers_are_those_of_the_metrics_module(corpus_file, tiny_model):
    from heal_rag.evaluation import evaluate_retrieval

    corpus = read_corpus(corpus_file)
    task = EvaluationTask.build(corpus)
    result = evaluate_embedding_model(tiny_model, task, "tiny", show_progress_bar=False)
    docs = tiny_model.encode_document(corpus.texts, normalize_embeddings=True)
    queries = tiny_model.encode_query([t for t in corpus.titles], normalize_embeddings=True)
    level_ids = corpus.labels.level_ids()
    direct = evaluate_retrieval(queries, docs, np.arange(len(corpus)), level_ids, level_ids, k=10, recall_at=(1, 10))
    assert result.retrieval.as_dict() == pytest.approx(direct.as_dict())


def test_explicit_queries_and_bm25_find_exact_words(corpus_file):
    corpus = read_corpus(corpus_file)
    # Each query repeats words only its own document has ("study <i>." is shared by the leaf's other docs).
    queries = [Query(corpus.texts[i].split(" study")[0], corpus.ids[i]) for i in range(0, len(corpus), 4)]
    task = EvaluationTask.build(corpus, queries)
    assert len(task.query_texts) == len(queries)
    assert evaluate_bm25(task).retrieval.hier_precision[0] > 0.5


def test_evaluation_needs_labels_and_queries(tmp_path, capsys):
    unlabelled = tmp_path / "u.jsonl"
    unlabelled.write_text(json.dumps({"id": "a", "text": "some text", "title": "t"}) + "\n")
    assert main(["eval", "--data", str(unlabelled)]) == 2
    assert "labels" in capsys.readouterr().err
    untitled = write_corpus_jsonl(tmp_path / "n.jsonl", ["a b", "c d"], [["X"], ["Y"]])
    with pytest.raises(ValueError, match="No queries"):
        EvaluationTask.build(read_corpus(untitled))
    with pytest.raises(ValueError, match="unknown document ids"):
        EvaluationTask.build(read_corpus(untitled), [Query("q", "missing")])


def test_a_failed_report_leaves_nothing_behind(corpus_file, tiny_model, tmp_path):
    task = EvaluationTask.build(read_corpus(corpus_file))
    result = evaluate_embedding_model(tiny_model, task, "tiny", show_progress_bar=False)
    out = tmp_path / "report"
    with pytest.raises(ValueError, match="map method"):
        write_report([result], task, out, map_method="umap")
    assert not out.exists()
    assert not list(tmp_path.glob(".report*"))


def test_tsne_map(corpus_file, tiny_model, tmp_path):
    task = EvaluationTask.build(read_corpus(corpus_file))
    result = evaluate_embedding_model(tiny_model, task, "tiny", show_progress_bar=False)
    write_report([result], task, tmp_path / "r", map_method="tsne")
    assert (tmp_path / "r" / "map.png").read_bytes().startswith(PNG_MAGIC)


def test_per_query_scores_are_saved_and_reports_compare_any_models(corpus_file, tiny_model_dir, tmp_path, capsys):
    from heal_rag.evaluation.report import compare_reports

    model_a = tmp_path / "run-a" / "model"
    model_b = tmp_path / "run-b" / "model"
    from conftest import train_tiny_heal_model

    train_tiny_heal_model(model_a, seed=1)
    train_tiny_heal_model(model_b, seed=2)
    base = ["eval", "--data", str(corpus_file), "--base-model", str(tiny_model_dir), "--map", "pca"]
    assert main([*base, "--model", str(model_a), "--out", str(tmp_path / "ra")]) == 0
    assert main([*base, "--model", str(model_b), "--out", str(tmp_path / "rb")]) == 0
    saved = json.loads((tmp_path / "ra" / "metrics.json").read_text())
    assert list(saved["per_query"]) == ["tiny-static", "run-a/model"]  # named by their directories
    assert len(saved["per_query"]["run-a/model"]["MRR@10"]) == 24
    capsys.readouterr()
    # Compare the two tuned models with each other, from the saved scores, nothing re-encoded.
    code = main(["eval", "--compare", str(tmp_path / "ra"), str(tmp_path / "rb"), "--reference", "run-a/model",
                 "--out", str(tmp_path / "ab")])  # fmt: skip
    assert code == 0
    combined = json.loads((tmp_path / "ab" / "metrics.json").read_text())
    assert combined["reference"] == "run-a/model"
    assert list(combined["models"]) == ["run-a/model", "tiny-static", "run-b/model"]
    a = np.asarray(saved["per_query"]["run-a/model"]["nDCG@10"])
    b = np.asarray(json.loads((tmp_path / "rb" / "metrics.json").read_text())["per_query"]["run-b/model"]["nDCG@10"])
    assert combined["minus_reference"]["run-b/model"]["nDCG@10"]["mean"] == pytest.approx((b - a).mean(), abs=1e-5)
    assert "| run-b/model − run-a/model |" in (tmp_path / "ab" / "report.md").read_text().replace(
        " | tiny-static − run-a/model", ""
    )
    other = write_corpus_jsonl(tmp_path / "other.jsonl", ["x y", "z w"], [["A"], ["B"]], ["x", "z"])
    assert main(["eval", "--data", str(other), "--base-model", str(tiny_model_dir), "--out", str(tmp_path / "ro"),
                 "--map", "pca"]) == 0  # fmt: skip
    with pytest.raises(ValueError, match="different corpora or queries"):
        compare_reports([tmp_path / "ra", tmp_path / "ro"], tmp_path / "bad")

    # one model name in reports whose folders share a name too: every distinct model keeps its own column
    for index, run in enumerate(["x", "y", "z"]):
        changed = json.loads(json.dumps(saved))
        changed["per_query"]["run-a/model"]["nDCG@10"][0] = index / 10
        (tmp_path / run / "report").mkdir(parents=True)
        (tmp_path / run / "report" / "metrics.json").write_text(json.dumps(changed))
    folders = [tmp_path / run / "report" for run in ["x", "y", "z", "y"]]
    combined = json.loads((compare_reports(folders, tmp_path / "xyz") / "metrics.json").read_text())
    tuned = ["run-a/model", "run-a/model (y/report)", "run-a/model (z/report)"]
    assert list(combined["models"]) == ["tiny-static", *tuned]  # the base model and y twice: the same scores, once
    assert [combined["per_query"][name]["nDCG@10"][0] for name in tuned] == [0.0, 0.1, 0.2]


def test_quiet_means_quiet(corpus_file, tiny_model_dir, tmp_path, capfd):
    from heal_rag.training import fine_tune

    assert main(["eval", "--quiet", "--data", str(corpus_file), "--base-model", str(tiny_model_dir), "--map", "pca",
                 "--out", str(tmp_path / "r")]) == 0  # fmt: skip
    assert main(["train", "--quiet", "--data", str(corpus_file), "--base-model", str(tiny_model_dir), "--max-steps",
                 "2", "--batch-size", "8", "--out", str(tmp_path / "m")]) == 0  # fmt: skip
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    texts, paths = read_corpus(corpus_file).texts, read_corpus(corpus_file).labels.paths
    fine_tune(texts, paths, output_dir=tmp_path / "m2", base_model=tiny_model_dir, max_steps=2, batch_size=8,
              show_progress_bar=False)  # fmt: skip
    captured = capfd.readouterr()
    assert "loss" not in captured.out and "loss" not in captured.err and "widget" not in captured.err
