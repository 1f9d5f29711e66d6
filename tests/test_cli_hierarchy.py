"""The HNMFk paths of the CLI: `heal-rag cluster`, and train/demo on corpora without labels."""

from __future__ import annotations

import json

import pytest
from conftest import make_corpus
from test_hierarchy import planted_corpus

from heal_rag.cli import main


def write_unlabelled(path, texts, titles=None):
    with path.open("w", encoding="utf-8") as handle:
        for i, text in enumerate(texts):
            record = {"id": f"d{i}", "text": text}
            if titles:
                record["title"] = titles[i]
            handle.write(json.dumps(record) + "\n")
    return path


def test_cluster_writes_labels_and_tree(tmp_path, capsys):
    texts, truth = planted_corpus()
    data = write_unlabelled(tmp_path / "c.jsonl", texts)
    out = tmp_path / "labels.jsonl"
    code = main(
        [
            "cluster",
            "--data",
            str(data),
            "--out",
            str(out),
            "--min-node-size",
            "20",
            "--n-jobs",
            "1",
            "--membership-threshold",
            "0.2",
        ]
    )
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == [f"d{i}" for i in range(len(texts))]
    assert all(len(r["labels"]) == 2 and r["labels"][1].startswith(r["labels"][0] + ".") for r in records)
    assert all(len(r["label_names"]) == 2 and " · " in r["label_names"][0] for r in records)
    assert all(0 < w <= 1 for r in records for w in r["weights"])
    assert all(r["memberships"][0] for r in records)
    # documents with the same planted leaf share a discovered leaf
    leaf_of = {}
    for record, (a, b) in zip(records, truth, strict=True):
        leaf_of.setdefault((a, b), set()).add(record["labels"][1])
    assert all(len(leaves) == 1 for leaves in leaf_of.values())
    tree = json.loads((tmp_path / "labels.tree.json").read_text())
    assert tree["tree"]["k"] == 3
    assert (tmp_path / "labels.tree.txt").read_text().startswith("root  (270 docs, k=3)")
    assert "written to" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("options", "share", "temperature"),
    [([], 0.4, 0.2), (["--base-weight-share", "0.1", "--temperature", "0.3"], 0.1, 0.3)],
)
def test_train_clusters_an_unlabelled_corpus_first(tiny_model_dir, tmp_path, capsys, options, share, temperature):
    texts, _, titles = make_corpus(per_leaf=12)  # 72 documents, 6 planted leaves
    data = write_unlabelled(tmp_path / "c.jsonl", texts, titles)
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "m"),
            "--base-model",
            str(tiny_model_dir),
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--samples-per-leaf",
            "2",
            *options,
        ]
    )
    assert code == 0
    assert "no labels: discovering" in capsys.readouterr().out
    metadata = json.loads((tmp_path / "m" / "heal_rag.json").read_text())
    level0 = metadata["label_tree"]["levels"][0]
    assert all(path[0].isdigit() for path in level0["paths"])  # node ids
    assert all(" · " in name for name in level0["display_names"])  # readable names from the top terms
    # Discovered labels: their own settings (fixed share, heavier pair level, softer hierarchy τ) unless given.
    assert metadata["training"]["base_weight_share"] == share
    assert metadata["training"]["query_document_weight"] == 6.0
    assert metadata["training"]["temperature"] == temperature and metadata["training"]["pair_temperature"] == 0.1


def test_demo_on_an_unlabelled_corpus_uses_discovered_labels(tiny_model_dir, tmp_path, capsys):
    texts, _, titles = make_corpus(per_leaf=16)
    data = write_unlabelled(tmp_path / "c.jsonl", texts, titles)
    code = main(
        [
            "demo",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "demo"),
            "--base-model",
            str(tiny_model_dir),
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--samples-per-leaf",
            "2",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "discovering a hierarchy with HNMFk" in printed and "| context-miss@5 |" in printed
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert results["chunks"] == len(texts) and 0 < results["queries"] < len(texts)
    training = json.loads((tmp_path / "demo" / "model" / "heal_rag.json").read_text())["training"]
    assert training["base_weight_share"] == 0.4 and training["query_document_weight"] == 6.0
    assert training["temperature"] == 0.2 and training["pair_temperature"] == 0.1
