"""The benchmark helpers whose arithmetic the reported figures rest on (benchmarks/ is not a package)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import blend_shares  # noqa: E402

from heal_rag.models import blend_with_base_weights, copy_weights  # noqa: E402


def _weights(model) -> np.ndarray:
    return np.concatenate([t.detach().flatten().numpy() for t in model.state_dict().values() if t.is_floating_point()])


def test_at_shares_rebuilds_each_blend_from_the_delivered_model_and_restores_it(tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    tuned = SentenceTransformer(str(tiny_model_dir), device="cpu")
    with torch.no_grad():  # stand-in for training: move every weight
        for tensor in tuned.state_dict().values():
            tensor.add_(torch.randn_like(tensor))
    tuned_state = copy_weights(tuned)
    base_state = copy_weights(SentenceTransformer(str(tiny_model_dir), device="cpu"))
    delivered = SentenceTransformer(str(tiny_model_dir), device="cpu")
    delivered.load_state_dict(tuned_state)
    blend_with_base_weights(delivered, base_state, 0.4)
    before = _weights(delivered)

    seen = {}
    for share in blend_shares.at_shares(delivered, 0.4, [0.0, 0.6, 0.8], base_model=tiny_model_dir):
        expected = SentenceTransformer(str(tiny_model_dir), device="cpu")
        expected.load_state_dict(tuned_state)
        blend_with_base_weights(expected, base_state, share)
        seen[share] = np.abs(_weights(delivered) - _weights(expected)).max()
    assert list(seen) == [0.0, 0.6, 0.8]
    assert max(seen.values()) < 1e-5
    assert np.array_equal(_weights(delivered), before)


def test_at_shares_restores_the_delivered_weights_when_the_loop_stops_early(tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    delivered = SentenceTransformer(str(tiny_model_dir), device="cpu")
    with torch.no_grad():
        for tensor in delivered.state_dict().values():
            tensor.add_(1.0)
    before = _weights(delivered)
    shares = blend_shares.at_shares(delivered, 0.5, [0.0, 0.2], base_model=tiny_model_dir)
    next(shares)
    assert not np.array_equal(_weights(delivered), before)
    shares.close()
    assert np.array_equal(_weights(delivered), before)


@pytest.mark.parametrize("chosen", [0.0, 0.3])
def test_at_the_chosen_share_the_weights_do_not_move(tiny_model_dir, chosen):
    from sentence_transformers import SentenceTransformer

    delivered = SentenceTransformer(str(tiny_model_dir), device="cpu")
    with torch.no_grad():
        for tensor in delivered.state_dict().values():
            tensor.mul_(2.0)
    before = _weights(delivered)
    for _ in blend_shares.at_shares(delivered, chosen, [chosen], base_model=tiny_model_dir):
        assert np.allclose(_weights(delivered), before, atol=1e-6)


def test_first_ranked_breakdown_sorts_each_miss_by_how_close_it_lands():
    import quality

    from heal_rag.labels import LabelPaths

    # five held-out documents: 0 and 1 share a leaf, 2 shares only the top class with them, 3 and 4 are elsewhere
    level_ids = np.array([[0, 0], [0, 0], [0, 1], [1, 2], [1, 3]])
    split = quality.Split(
        name="toy",
        train_texts=[],
        train_queries=[],
        train_ids=[],
        train_labels=LabelPaths([["a", "b"]]),
        test_texts=["d0", "d1", "d2", "d3", "d4"],
        test_queries=["q0", "q1", "q2", "q3", "q4"],
        test_level_ids=level_ids,
        train_level_ids=np.zeros((0, 2), dtype=int),
    )
    ranked = np.array(
        [
            [0, 1, 2],  # gold first
            [0, 1, 2],  # a same-leaf sibling first, gold at 2
            [0, 1, 3],  # same top class first, gold below the ranking
            [0, 4, 3],  # another top class first, gold at 3
            [4, 0, 1],  # gold first
        ]
    )
    shares = quality.first_ranked_breakdown(split, ranked)
    assert shares["gold first"] == pytest.approx(2 / 5)
    assert shares["same leaf"] == pytest.approx(1 / 5)
    assert shares["same top"] == pytest.approx(1 / 5)
    assert shares["elsewhere"] == pytest.approx(1 / 5)
    assert shares["gold at 2-3"] == pytest.approx(2 / 5)
    assert shares["gold below 10"] == pytest.approx(1 / 5)


def test_top1_breakdown_tells_a_chunk_of_the_same_document_from_a_sibling_document():
    from types import SimpleNamespace

    import documents

    from heal_rag.chunking import DOCUMENT_ID_KEY

    # chunks: 0, 1 of document a; 2 of document b (same leaf); 3 of c (same parent, other leaf); 4 of d (elsewhere)
    task = SimpleNamespace(
        corpus=SimpleNamespace(metadata=[{DOCUMENT_ID_KEY: doc} for doc in "aabcd"]),
        level_ids=np.array([[0, 0], [0, 0], [0, 0], [0, 1], [1, 2]]),
        gold=np.array([0, 0, 0, 0, 0]),
    )
    shares = documents.top1_breakdown(np.array([0, 1, 2, 3, 4]), task)
    assert shares == {
        "gold first": 0.2,
        "same document": 0.2,
        "same leaf": 0.2,
        "same parent": 0.2,
        "elsewhere": 0.2,
    }


def test_merge_runs_keeps_other_methods_and_drops_intervals_a_rerun_made_stale():
    import documents

    sizes = {
        "steps": 100,
        "queries": 3,
        "train_documents": 2,
        "train_chunks": 4,
        "test_documents": 1,
        "test_chunks": 2,
    }

    def run(metrics, differences):
        return sizes | {"metrics": metrics, "differences": differences, "heal_runs": {}, "top1": {}, "seconds": {}}

    previous = run({"heal": 1, "mnrl": 2, "bm25": 3}, {"heal - mnrl": "old", "heal - bm25": "old"})
    merged = documents.merge_runs(previous, run({"mnrl": 5}, {}))
    assert merged["metrics"] == {"heal": 1, "mnrl": 5, "bm25": 3}
    assert merged["differences"] == {"heal - bm25": "old"}  # HEAL vs the new MNRL was not measured
    merged = documents.merge_runs(previous, run({"heal": 9}, {}))
    assert merged["differences"] == {}  # every interval was against the old HEAL
    other_sizes = run({"heal": 9}, {}) | {"test_chunks": 3}
    assert documents.merge_runs(previous, other_sizes) is other_sizes
    other_recipe = run({"heal": 9}, {}) | {"heal_overrides": {"learning_rate": 2e-5}}
    assert documents.merge_runs(previous, other_recipe) is other_recipe  # another HEAL recipe never merges
    assert documents.merge_runs(previous, run({"mnrl": 5}, {}) | {"heal_overrides": {}})["metrics"]["heal"] == 1


def test_paired_comparisons_pair_a_variant_with_its_own_defaults_and_the_default_with_every_variant():
    import documents

    methods = ["untouched", "heal", "heal-no-source", "heal-generator-free", "heal-generator-free-defaults"]
    pairs = documents.paired_comparisons(methods)
    assert ("heal-generator-free", "heal-generator-free-defaults") in pairs
    assert ("heal", "heal-no-source") in pairs and ("heal", "heal-generator-free") in pairs
    assert ("heal-no-source", "heal-generator-free") not in pairs  # two variants: neither is the other's defaults
    assert ("heal-generator-free-defaults", "untouched") in pairs  # the default recipe against a baseline
    assert all(method != "untouched" for method, _ in pairs)  # a baseline is never the reference
    assert len(pairs) == len(set(pairs))
