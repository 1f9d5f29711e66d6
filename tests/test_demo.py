"""The main job on a small slice: the API docs of two subpackages as a folder → chunks → tune → index → report →
answers, with the tiny model and two steps; and the API-docs corpus builder."""

from __future__ import annotations

import json

import pytest
from conftest import build_tiny_model

from heal_rag.api_docs import CORPUS_INFO_FILE, build_api_docs, split_docstring
from heal_rag.demo import DEMO_COLLECTION, run_demo

SLICE = ("scipy.cluster", "sklearn.tree")


def test_split_docstring_keeps_the_summary_out_of_the_passage():
    summary, rest = split_docstring(
        "add(x1, x2, /)\n\nAdd arguments\nelement-wise.\n\nParameters\n----------\nx1 : array"
    )
    assert summary == "Add arguments element-wise." and rest.startswith("Parameters") and "Add arguments" not in rest


def test_api_docs_tree_is_a_labelled_folder_tree_and_deterministic(tmp_path):
    first = build_api_docs(tmp_path / "a", libraries=SLICE)
    second = build_api_docs(tmp_path / "b", libraries=SLICE)
    assert first.fingerprint == second.fingerprint and first.n_objects == second.n_objects >= 30
    files = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.md"))
    assert "sklearn/tree/export_graphviz.md" in files and "scipy/cluster/hierarchy/linkage.md" in files
    page = (tmp_path / "a" / "sklearn" / "tree" / "export_graphviz.md").read_text()
    heading, body = page.split("\n\n", 1)
    assert heading == "# Export a decision tree in DOT format."
    assert body.startswith("`sklearn.tree.export_graphviz(") and "Export a decision tree in DOT format" not in body
    info = json.loads((tmp_path / "a" / CORPUS_INFO_FILE).read_text())
    assert info["fingerprint"] == first.fingerprint and set(info["versions"]) == set(SLICE)
    with pytest.raises(ValueError, match="--overwrite"):
        build_api_docs(tmp_path / "a", libraries=SLICE)


def test_the_default_corpus_covers_numpy_scipy_and_scikit_learn(tmp_path):
    docs = build_api_docs(tmp_path / "api")
    assert 2000 <= docs.n_objects <= 3500 and docs.n_folders >= 80
    assert set(docs.versions) == {"numpy", "scipy", "sklearn"}
    assert {p.name for p in (tmp_path / "api").iterdir() if p.is_dir()} == {"numpy", "scipy", "sklearn"}


def test_the_demo_runs_the_whole_path_on_a_small_slice(tmp_path, capsys):
    out = tmp_path / "demo"
    result = run_demo(
        output_dir=out,
        base_model=str(build_tiny_model()),
        libraries=SLICE,
        show_progress_bar=False,
        max_steps=2,
        batch_size=8,
    )
    printed = capsys.readouterr().out
    for stage in ("== corpus", "== read and chunk", "== fine-tune", "== index", "== report", "== answers"):
        assert stage in printed
    assert "| context-miss@5 |" in printed and "report:" in printed
    results = json.loads(result.results_path.read_text())
    assert results["corpus"]["data"] == "api_docs" and results["corpus"]["objects"] >= 30
    assert results["training"]["source_level"] is True and results["training"]["chunking"]["chunk_size"] == 256
    assert len(results["answers"]) == 3 and all(" > " in a["citations"] for a in results["answers"])
    assert {"HEAL - untouched", "HEAL + reranker - HEAL"} == set(results["differences"])
    assert set(result.stage_seconds) >= {"corpus", "fine-tune", "index", "report", "answers"}
    from heal_rag.chroma import open_collection

    collection = open_collection(result.db_path, DEMO_COLLECTION)
    assert collection.count() == results["chunks"]
    assert (result.report_dir / "report.html").is_file() and (result.report_dir / "metrics.json").is_file()
    metrics = json.loads((result.report_dir / "metrics.json").read_text())
    assert list(metrics["models"]) == ["untouched", "HEAL", "HEAL + reranker"]


def test_signatures_carry_no_memory_address_so_the_tree_is_the_same_in_every_process():
    from heal_rag.api_docs import _signature

    sentinel = object()

    def function(x, call=sentinel, flag=None):
        return x

    text = _signature("pkg.function", function)
    assert text == "pkg.function(x, call=<object object>, flag=None)" and "0x" not in text
    assert _signature("pkg.len", len) == "pkg.len(obj, /)"
