from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import write_corpus_jsonl

from heal_rag import blending
from heal_rag.blending import (
    BlendValidation,
    check_candidate_shares,
    choose_share,
    hold_out_pairs,
    reciprocal_ranks,
    select_base_weight_share,
)
from heal_rag.cli import main
from heal_rag.labels import LabelPaths
from heal_rag.models import blend_with_base_weights, copy_weights
from heal_rag.training import FineTuneResult, build_training_rows, fine_tune

FAST = {"max_steps": 3, "batch_size": 8, "samples_per_leaf": 2, "learning_rate": 1e-2, "max_seq_length": 32}


def _rows(n_docs: int, queries_per_doc: int = 2) -> tuple[list[int], list[str], list[str]]:
    row_documents = [d for d in range(n_docs) for _ in range(queries_per_doc)]
    row_queries = [f"query {q} of doc {d}" for d in range(n_docs) for q in range(queries_per_doc)]
    return row_documents, row_queries, [f"document {d}" for d in range(n_docs)]


def test_hold_out_pairs_keeps_held_out_documents_and_their_queries_out_of_training():
    row_documents, row_queries, documents = _rows(40)
    kept, validation = hold_out_pairs(row_documents, row_queries, documents, fraction=0.1, seed=3)
    held = set(validation.held_out_documents)
    assert len(held) == 4
    assert all(row_documents[row] not in held for row in kept)
    assert len(kept) + len(validation.queries) == len(row_documents), "every row is either trained or validated"
    assert len(validation.queries) == 8, "all queries of a held-out document are validation queries"
    for query, gold in zip(validation.queries, validation.gold, strict=True):
        assert query.endswith(validation.corpus[gold].replace("document", "doc")), "gold is the query's document"
    assert validation.corpus[:4] == [documents[d] for d in validation.held_out_documents]
    distractors = validation.corpus[4:]
    assert len(distractors) == 12 and len(set(distractors)) == 12
    assert not held & {documents.index(text) for text in distractors}, "distractors are training documents"
    again = hold_out_pairs(row_documents, row_queries, documents, fraction=0.1, seed=3)
    other_seed = hold_out_pairs(row_documents, row_queries, documents, fraction=0.1, seed=4)
    assert again == (kept, validation)
    assert other_seed[1].held_out_documents != validation.held_out_documents


def test_hold_out_pairs_caps_the_held_out_documents(monkeypatch):
    monkeypatch.setattr(blending, "MAX_HELD_OUT_DOCUMENTS", 5)
    row_documents, row_queries, documents = _rows(100, queries_per_doc=1)
    kept, validation = hold_out_pairs(row_documents, row_queries, documents, fraction=0.5, seed=0)
    assert len(validation.held_out_documents) == 5 and len(kept) == 95
    assert len(validation.corpus) == 5 * blending.DISTRACTOR_FACTOR


@pytest.mark.parametrize(
    ("n_docs", "fraction", "message"),
    [(40, 0.0, r"must lie in \(0, 1\)"), (40, 1.0, r"must lie in \(0, 1\)"), (4, 0.1, "leaves none on one side")],
)
def test_hold_out_pairs_rejects_a_split_with_an_empty_side(n_docs, fraction, message):
    row_documents, row_queries, documents = _rows(n_docs)
    with pytest.raises(ValueError, match=message):
        hold_out_pairs(row_documents, row_queries, documents, fraction=fraction, seed=0)


def test_check_candidate_shares():
    assert check_candidate_shares([0.4, 0, 0.4, 0.2]) == (0.0, 0.2, 0.4)
    with pytest.raises(ValueError, match="empty"):
        check_candidate_shares([])
    with pytest.raises(ValueError, match=r"\[1.0\]"):
        check_candidate_shares([0.2, 1.0])


def _mrr_at_10(model, validation: BlendValidation) -> float:
    queries = model.encode_query(validation.queries, normalize_embeddings=True)
    corpus = model.encode_document(validation.corpus, normalize_embeddings=True)
    order = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :10]
    ranks = [np.flatnonzero(row == gold) for row, gold in zip(order, validation.gold, strict=True)]
    return float(np.mean([1.0 / (r[0] + 1) if len(r) else 0.0 for r in ranks]))


def test_select_base_weight_share_scores_every_blend_and_keeps_the_best(corpus, tiny_model):
    texts, _, titles = corpus
    base_state = copy_weights(tiny_model)
    generator = torch.Generator().manual_seed(1234)  # not 0: the tiny model was drawn with seed 0
    with torch.no_grad():  # a "fine-tune" far from the base: the blends rank differently
        for tensor in tiny_model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator) * tensor.std().clamp(min=0.05) * 3)
    tuned_state = copy_weights(tiny_model)
    validation = BlendValidation(queries=titles, gold=list(range(len(texts))), corpus=texts)
    shares = (0.0, 0.3, 0.6, 0.9)

    selection = select_base_weight_share(tiny_model, base_state, validation, shares)
    left_state = copy_weights(tiny_model)

    expected = {}
    for share in shares:
        tiny_model.load_state_dict(tuned_state)
        blend_with_base_weights(tiny_model, base_state, share)
        expected[share] = _mrr_at_10(tiny_model, validation)
    assert selection.validation_mrr == pytest.approx(expected, abs=1e-6)
    assert len(set(np.round(list(expected.values()), 6))) > 1, "the blends should rank differently"
    best = max(shares, key=lambda share: (expected[share], -share))
    assert selection.share == best
    assert selection.n_queries == len(titles) and selection.n_documents == len(texts)
    assert json.loads(json.dumps(selection.as_dict()))["share"] == best
    # The model is left blended at the chosen share.
    tiny_model.load_state_dict(tuned_state)
    blend_with_base_weights(tiny_model, base_state, best)
    for name, tensor in tiny_model.state_dict().items():
        torch.testing.assert_close(left_state[name], tensor)

    # With a tolerance: the largest share within it, and the model left there (not at the best share).
    tiny_model.load_state_dict(tuned_state)
    lenient = select_base_weight_share(tiny_model, base_state, validation, shares, standard_errors=3.0)
    left_state = copy_weights(tiny_model)
    within = [s for s in shares if expected[best] - expected[s] <= 3.0 * lenient.difference_se[s] + 1e-9]
    assert lenient.best_share == best and lenient.share == max(within)
    assert lenient.share != best, "the tolerance should move the choice here"
    tiny_model.load_state_dict(tuned_state)
    blend_with_base_weights(tiny_model, base_state, lenient.share)
    for name, tensor in tiny_model.state_dict().items():
        torch.testing.assert_close(left_state[name], tensor)


def test_choose_share_keeps_the_best_or_the_share_nearest_the_base_within_the_tolerance():
    rng = np.random.default_rng(0)
    best = rng.choice([0.0, 0.5, 1.0], size=400, p=[0.1, 0.2, 0.7])
    near = best.copy()  # a little worse than the best: 10 queries fall from rank 1 to 2, 8 rise from 2 to 1
    near[np.flatnonzero(best == 1.0)[:10]] = 0.5
    near[np.flatnonzero(best == 0.5)[:8]] = 1.0
    reciprocal = {
        0.0: best - 0.2 * (best > 0),  # clearly worse
        0.2: best,
        0.4: near,
        0.6: np.clip(best - 0.15 * (best > 0.5), 0, 1),  # worse by several standard errors
    }
    differences = {share: best - values for share, values in reciprocal.items()}
    se = {share: np.std(d, ddof=1) / np.sqrt(len(d)) for share, d in differences.items()}
    gap = {share: d.mean() for share, d in differences.items()}
    assert 0 < gap[0.4] <= se[0.4] and gap[0.6] > 3 * se[0.6] and gap[0.0] > 3 * se[0.0]

    plain = choose_share(reciprocal)
    assert plain.share == plain.best_share == 0.2
    assert plain.difference_se == pytest.approx(se) and plain.difference_se[0.2] == 0.0
    one_se = choose_share(reciprocal, standard_errors=1.0)
    assert one_se.best_share == 0.2 and one_se.share == 0.4
    assert choose_share(reciprocal, standard_errors=gap[0.6] / se[0.6] + 0.01).share == 0.6
    # Ties keep the smaller share without a tolerance, the larger with one.
    tied = {0.0: best, 0.3: best.copy()}
    assert choose_share(tied).share == 0.0 and choose_share(tied, standard_errors=1.0).share == 0.3
    record = json.loads(json.dumps(one_se.as_dict()))
    assert record["share"] == 0.4 and record["best_share"] == 0.2 and record["standard_errors"] == 1.0
    assert set(record["difference_se@10"]) == {"0", "0.2", "0.4", "0.6"}


def test_describe_blend_says_when_the_tolerance_moved_the_choice(tmp_path):
    selection = choose_share(
        {0.2: np.array([1.0, 1.0, 0.5, 1.0]), 0.4: np.array([1.0, 0.5, 1.0, 0.5])}, standard_errors=1.0
    )
    record = selection.as_dict()
    result = FineTuneResult(None, tmp_path, {"training": {"blend_selection": record}}, 0.0, 0.0, 0)
    assert record["share"] == 0.4 and record["best_share"] == 0.2
    assert result.describe_blend() == (
        "base_weight_share 0.4, chosen on 4 held-out queries (MRR@10 0.7500), the share nearest the base model whose "
        "MRR@10 is within 1 standard error(s) of the best (0.8750 at 0.2)"
    )


@pytest.mark.parametrize(
    ("tolerance", "message"), [(-1.0, r"must lie in \[0, inf\)"), (math.inf, "must be a finite number")]
)
def test_select_base_weight_share_rejects_a_bad_tolerance(tiny_model, tolerance, message):
    state = tiny_model.state_dict()
    validation = BlendValidation(queries=["a"], gold=[0], corpus=["a"])
    with pytest.raises(ValueError, match=f"blend_standard_errors {message}"):
        select_base_weight_share(tiny_model, state, validation, standard_errors=tolerance)


@pytest.mark.parametrize(
    ("reciprocal", "message"),
    [
        ({}, "No candidate shares"),
        ({0.0: np.array([1.0, 0.5]), 0.2: np.array([1.0])}, "same length"),
        ({0.0: np.array([]), 0.2: np.array([])}, "same length"),
        ({0.0: np.array([1.0, np.nan]), 0.2: np.array([1.0, 0.5])}, r"in \[0, 1\]"),
    ],
)
def test_choose_share_refuses_inconsistent_scores(reciprocal, message):
    with pytest.raises(ValueError, match=message):
        choose_share(reciprocal, standard_errors=1.0)


def test_choose_share_keeps_a_gap_of_exactly_one_standard_error():
    # One query of n worse by d: the gap and the standard error are both d / n; rounding must not decide.
    for n in range(2, 60):
        for d in (0.5, 0.9, 2 / 3):
            best = np.ones(n)
            worse = best.copy()
            worse[0] -= d
            assert choose_share({0.2: best, 0.6: worse}, standard_errors=1.0).share == 0.6, (n, d)


def test_reciprocal_ranks_cut_at_k_and_do_not_let_a_duplicate_push_the_gold_down(tiny_model):
    texts = ["qubits and quantum gates", "prime numbers and sieves", "ocean tides and the moon", "baking bread"]
    validation = BlendValidation(
        queries=["quantum gates", "ocean tides", "baking bread"],
        gold=[0, 2, 3],
        corpus=[*texts, texts[0]],  # an exact duplicate of the first query's gold
    )
    scores = tiny_model.encode_query(validation.queries) @ tiny_model.encode_document(validation.corpus).T
    expected_rank = 1 + (scores > scores[np.arange(3), validation.gold][:, None]).sum(axis=1)
    assert scores[0, 0] == scores[0, 4]  # the duplicate ties with the gold: it must not count as ranked above it
    ranks = reciprocal_ranks(tiny_model, validation, k=5)
    np.testing.assert_allclose(ranks, 1.0 / expected_rank, rtol=1e-6)
    cut = reciprocal_ranks(tiny_model, validation, k=1)
    np.testing.assert_allclose(cut, np.where(expected_rank <= 1, 1.0, 0.0))
    with pytest.raises(ValueError, match="k must be at least 1"):
        reciprocal_ranks(tiny_model, validation, k=0)


def test_select_base_weight_share_needs_queries(tiny_model):
    state = tiny_model.state_dict()
    with pytest.raises(ValueError, match="no queries"):
        select_base_weight_share(tiny_model, state, BlendValidation(queries=[], gold=[], corpus=["a"]))


def _tune(corpus, model_dir, output_dir, **settings):
    """A few fast steps of ``fine_tune`` on the tiny corpus (titles as queries) and the tiny model."""
    texts, paths, titles = corpus
    return fine_tune(
        texts,
        paths,
        titles=titles,
        output_dir=output_dir,
        base_model=model_dir,
        show_progress_bar=False,
        **{**FAST, **settings},
    )


def test_fine_tune_auto_share_holds_out_pairs_and_records_the_choice(corpus, tiny_model_dir, tmp_path):
    texts, paths, titles = corpus
    result = _tune(
        corpus,
        tiny_model_dir,
        tmp_path / "m",
        base_weight_share="auto",
        blend_validation_fraction=0.25,
        blend_candidate_shares=(0.0, 0.5),
        blend_min_validation_queries=1,  # the tiny corpus holds out 6 queries
    )
    training = result.metadata["training"]
    selection = training["blend_selection"]
    n_rows = len(build_training_rows(texts, LabelPaths(paths), titles=titles))
    assert training["base_weight_share"] == "auto"
    assert selection["share"] in (0.0, 0.5) and set(selection["validation_mrr@10"]) == {"0", "0.5"}
    assert selection["validation_queries"] == round(0.25 * len(texts))
    assert training["training_rows"] == n_rows - selection["validation_queries"]
    assert selection["validation_documents"] == min(len(texts), blending.DISTRACTOR_FACTOR * round(0.25 * len(texts)))
    mrr = selection["validation_mrr@10"][f"{selection['share']:g}"]
    assert result.describe_blend() == (
        f"base_weight_share {selection['share']:g}, chosen on {selection['validation_queries']} held-out queries "
        f"(MRR@10 {mrr:.4f})"
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"base_weight_share": "sometimes"}, "or be 'auto'"),
        ({"base_weight_share": "auto", "blend_validation_fraction": 1.5}, r"must lie in \(0, 1\)"),
        ({"base_weight_share": "auto", "blend_candidate_shares": (0.2, 1.0)}, r"\[0, 1\)"),
        ({"blend_fallback_share": 1.0}, r"blend_fallback_share must lie in \[0, 1\)"),
        ({"blend_min_validation_queries": 0}, r"blend_min_validation_queries must be an integer in \[1"),
        ({"blend_standard_errors": -1.0}, r"blend_standard_errors must lie in \[0, inf\)"),
        ({"blend_standard_errors": float("inf")}, r"blend_standard_errors must be a finite number"),
    ],
)
def test_fine_tune_rejects_bad_blend_settings_before_training(corpus, tmp_path, settings, message):
    texts, paths, _ = corpus
    with pytest.raises(ValueError, match=message):
        fine_tune(texts, paths, output_dir=tmp_path / "m", **settings)
    assert not (tmp_path / "m").exists()


def test_auto_is_the_default_and_falls_back_to_the_fixed_share_on_too_few_queries(corpus, tiny_model_dir, tmp_path):
    texts = corpus[0]
    by_default = _tune(corpus, tiny_model_dir, tmp_path / "default")
    fixed = _tune(corpus, tiny_model_dir, tmp_path / "fixed", base_weight_share=blending.FIXED_SHARE)

    training = by_default.metadata["training"]
    assert training["base_weight_share"] == "auto"
    n_held_out = round(0.1 * len(texts))
    assert training["blend_selection"] == {
        "share": blending.FIXED_SHARE,
        "fallback": f"only {n_held_out} held-out queries (blend_min_validation_queries=50)",
    }
    assert training["training_rows"] == len(texts), "nothing is held out when the share is not chosen"
    assert "blend_selection" not in fixed.metadata["training"]
    fallback = training["blend_selection"]["fallback"]
    assert by_default.describe_blend() == f"base_weight_share 0.4, not chosen: {fallback}"
    assert fixed.describe_blend() == "base_weight_share 0.4 (fixed)"
    fixed_state = fixed.model.state_dict()
    assert all(torch.equal(tensor, fixed_state[name]) for name, tensor in by_default.model.state_dict().items()), (
        "same model as the fixed share"
    )


def test_auto_without_queries_trains_on_documents_and_keeps_the_fallback_share(corpus, tiny_model_dir, tmp_path):
    texts = corpus[0]
    result = _tune(corpus, tiny_model_dir, tmp_path / "m", query_generator=None, blend_fallback_share=0.25)
    training = result.metadata["training"]
    assert training["paired_queries"] is False and training["training_rows"] == len(texts)
    reason = "no queries (none given and query_generator=None)"
    assert training["blend_selection"] == {"share": 0.25, "fallback": reason}


def test_auto_falls_back_when_the_hold_out_leaves_a_side_empty(corpus, tiny_model_dir, tmp_path):
    result = _tune(
        corpus,
        tiny_model_dir,
        tmp_path / "m",
        blend_validation_fraction=0.01,  # rounds to no document
        blend_min_validation_queries=1,
    )
    assert "leaves none on one side" in result.metadata["training"]["blend_selection"]["fallback"]


def test_cli_train_accepts_auto_share(corpus, tiny_model_dir, tmp_path, capsys):
    texts, paths, titles = corpus
    data = write_corpus_jsonl(tmp_path / "c.jsonl", texts, paths, titles)
    common = ["train", "--data", str(data), "--out", str(tmp_path / "m"), "--base-model", str(tiny_model_dir)]
    fast = ["--max-steps", "2", "--batch-size", "8", "--samples-per-leaf", "2"]
    assert main([*common, *fast, "--base-weight-share", "AUTO"]) == 0
    assert "base_weight_share 0.4, not chosen: only" in capsys.readouterr().out
    training = json.loads((tmp_path / "m" / "heal_rag.json").read_text())["training"]
    assert training["base_weight_share"] == "auto" and "blend_selection" in training
    with pytest.raises(SystemExit):
        main([*common, "--base-weight-share", "half"])
    assert "expected a number in [0, 1) or 'auto'" in capsys.readouterr().err
