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
    assert list(metrics["models"]) == ["untouched", "tiny-heal", "bm25"]
    assert metrics["models"]["bm25"]["classification"] is None
    assert set(metrics["models"]["tiny-heal"]["classification"]) == {"acc/L0", "acc/L1", "hP", "hR", "hF1"}
    paired = metrics["minus_reference"]
    assert set(paired) == {"tiny-heal", "bm25"}
    heal_mrr = paired["tiny-heal"]["MRR@10"]
    expected = (
        metrics["models"]["tiny-heal"]["retrieval"]["MRR@10"] - metrics["models"]["untouched"]["retrieval"]["MRR@10"]
    )
    assert heal_mrr["mean"] == pytest.approx(expected)
    assert heal_mrr["low"] <= heal_mrr["mean"] <= heal_mrr["high"]
    markdown = (out / "report.md").read_text()
    assert "| tiny-heal − untouched |" in markdown.replace(" | bm25 − untouched", "")
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
