from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from heal_rag.labels import LabelPaths
from heal_rag.losses import HEALLoss, level_weight_schedule


def reference_heal_loss(
    embeddings: list[torch.Tensor],
    labels: torch.Tensor,
    temperature: float,
    level_weights: list[float],
    query_document_weight: float = 1.0,
    consistency_weight: float = 0.0,
    consistency_margin: float = 0.0,
    pair_loss: str = "supcon",
    hierarchy_views: str = "both",
    pair_level_discount: float = 0.0,
    symmetric_pairs: bool = False,
    pair_negatives: str = "all",
    query_hierarchy_weight: float = 1.0,
) -> dict[str, float]:
    """Slow, obviously-correct loops over anchors, positives and levels (heal-method §3)."""
    if len(embeddings) == 2 and pair_loss == "ranking":
        keys = labels[:, -1].tolist()
        q, d = (F.normalize(e.double(), dim=-1) for e in embeddings)
        paths = labels[:, :-1].tolist()

        def ranking_term(anchors, candidates):
            total_loss = 0.0
            for i in range(len(keys)):
                # other_leaves: the other documents of the anchor's leaf are left out of its softmax
                kept = [
                    j
                    for j in range(len(keys))
                    if pair_negatives == "all" or keys[j] == keys[i] or paths[j][-1] != paths[i][-1]
                ]
                scores = {j: float(anchors[i] @ candidates[j]) / temperature for j in kept}
                log_norm = math.log(sum(math.exp(s) for s in scores.values()))
                if pair_level_discount == 0:
                    positive = sum(math.exp(s) for j, s in scores.items() if keys[j] == keys[i])
                    total_loss += -(math.log(positive) - log_norm)
                    continue
                targets = {}
                for j in kept:
                    shared = sum(1 for a, b in zip(paths[i], paths[j], strict=True) if a == b and a >= 0)
                    if keys[j] == keys[i]:
                        targets[j] = 1.0
                    else:
                        targets[j] = pair_level_discount ** (len(paths[i]) - shared + 1) if shared else 0.0
                norm = sum(targets.values())
                total_loss += -sum(t / norm * (scores[j] - log_norm) for j, t in targets.items())
            return total_loss / len(keys)

        ranking = ranking_term(q, d)
        if symmetric_pairs:
            ranking = (ranking + ranking_term(d, q)) / 2
        pool = embeddings if hierarchy_views == "both" else [embeddings[1]]
        pool = [torch.cat(pool)] if len(pool) == 2 else pool
        pool_labels = labels[:, :-1]
        if hierarchy_views == "both":
            # queries take part with weight query_hierarchy_weight: float rows of ids then weights
            query_weights = torch.full(pool_labels.shape, query_hierarchy_weight, dtype=torch.float64)
            pool_labels = torch.cat(
                [
                    torch.cat([pool_labels, pool_labels]).double(),
                    torch.cat([query_weights, torch.ones_like(query_weights)]),
                ],
                dim=1,
            )
        out = reference_heal_loss(pool, pool_labels, temperature, level_weights)
        out["query_document"] = query_document_weight * ranking
        return out
    paired = len(embeddings) == 2
    if labels.is_floating_point():
        half = labels.shape[1] // 2
        ids = labels[:, :half].round().long().tolist()
        weights = labels[:, half:].tolist()
    else:
        ids = labels.tolist()
        weights = [[1.0] * len(row) for row in ids]
    z = torch.cat(embeddings) if paired else embeddings[0]
    if paired:
        ids, weights = ids + ids, weights + weights
    z = F.normalize(z.double(), dim=-1)
    n, n_cols = z.shape[0], len(ids[0])
    lambdas = list(level_weights) + ([query_document_weight] if paired else [])
    out = {}
    for level in range(n_cols):
        numerator, denominator = 0.0, 0.0
        for i in range(n):
            if ids[i][level] < 0 or weights[i][level] == 0:
                continue
            log_denominator = math.log(sum(math.exp(float(z[i] @ z[a]) / temperature) for a in range(n) if a != i))
            terms, total_w = 0.0, 0.0
            for p in range(n):
                if p == i or ids[p][level] < 0 or ids[p][level] != ids[i][level]:
                    continue
                w = weights[p][level]
                terms += w * (float(z[i] @ z[p]) / temperature - log_denominator)
                total_w += w
            if total_w == 0:
                continue
            numerator += weights[i][level] * (-terms / total_w)
            denominator += weights[i][level]
        value = numerator / denominator if denominator else 0.0
        name = "query_document" if paired and level == n_cols - 1 else f"level_{level}"
        out[name] = lambdas[level] * value
    if consistency_weight > 0:
        violations, count = 0.0, 0
        for i in range(n):
            for level in range(n_cols - 1):

                def shares(p, lv, i=i):
                    return p != i and ids[i][lv] >= 0 and ids[p][lv] == ids[i][lv]

                deeper = [float(z[i] @ z[p]) for p in range(n) if shares(p, level + 1)]
                shallow = [float(z[i] @ z[p]) for p in range(n) if shares(p, level) and not shares(p, level + 1)]
                if deeper and shallow:
                    violations += max(0.0, consistency_margin + np.mean(shallow) - np.mean(deeper))
                    count += 1
        out["consistency"] = consistency_weight * (violations / count if count else 0.0)
    return out


class IdentityModel(torch.nn.Module):
    def forward(self, features):
        return {"sentence_embedding": features["x"]}


def nested_ids(rng: np.random.Generator, n: int, branching=(2, 2, 3)) -> np.ndarray:
    paths = [[f"a{rng.integers(branching[0])}"] for _ in range(n)]
    for level in range(1, len(branching)):
        for path in paths:
            path.append(f"{path[-1]}.{rng.integers(branching[level])}")
    return LabelPaths(paths).level_ids()


def assert_matches_reference(loss, embeddings, labels, **reference_kwargs):
    got = {k: float(v) for k, v in loss.compute_loss_from_embeddings(embeddings, labels).items()}
    want = reference_heal_loss(embeddings, labels, **reference_kwargs)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), key


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(2, 12),
    temperature=st.sampled_from([0.05, 0.1, 0.5]),
    schedule=st.sampled_from(["uniform", "deeper", "coarser"]),
)
def test_documents_only_loss_matches_loop_reference(seed, batch, temperature, schedule):
    rng = np.random.default_rng(seed)
    labels = torch.as_tensor(nested_ids(rng, batch))
    embeddings = [torch.as_tensor(rng.normal(size=(batch, 8)), dtype=torch.float32)]
    loss = HEALLoss(IdentityModel(), temperature=temperature, level_weights=schedule)
    assert_matches_reference(
        loss, embeddings, labels, temperature=temperature, level_weights=level_weight_schedule(3, schedule)
    )


def paired_batch(seed: int, batch: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Label rows (3 nested levels + document key) and (query, document) embeddings for a random batch."""
    rng = np.random.default_rng(seed)
    doc_keys = rng.integers(0, max(1, batch // 2 + 1), size=(batch, 1))  # some documents repeat in the batch
    labels = torch.as_tensor(np.concatenate([nested_ids(rng, batch), doc_keys], axis=1))
    embeddings = [torch.as_tensor(rng.normal(size=(batch, 8)), dtype=torch.float32) for _ in range(2)]
    return labels, embeddings


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(2, 10), qd_weight=st.sampled_from([0.0, 0.5, 2.0]))
def test_query_document_loss_matches_loop_reference(seed, batch, qd_weight):
    labels, embeddings = paired_batch(seed, batch)
    options = {
        "temperature": 0.1,
        "level_weights": [1.0, 0.5, 2.0],
        "query_document_weight": qd_weight,
        "pair_loss": "supcon",
    }
    assert_matches_reference(HEALLoss(IdentityModel(), **options), embeddings, labels, **options)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(2, 10),
    qd_weight=st.sampled_from([0.5, 2.0]),
    views=st.sampled_from(["both", "documents"]),
    discount=st.sampled_from([0.0, 0.1, 0.5]),
    symmetric=st.booleans(),
    negatives=st.sampled_from(["all", "other_leaves"]),
    query_weight=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_ranking_pair_loss_matches_loop_reference(
    seed, batch, qd_weight, views, discount, symmetric, negatives, query_weight
):
    labels, embeddings = paired_batch(seed, batch)
    options = {
        "temperature": 0.1,
        "level_weights": [1.0, 0.5, 2.0],
        "query_document_weight": qd_weight,
        "pair_loss": "ranking",
        "hierarchy_views": views,
        "pair_level_discount": discount,
        "symmetric_pairs": symmetric,
        "pair_negatives": negatives,
        "query_hierarchy_weight": query_weight if views == "both" else 1.0,
    }
    assert_matches_reference(HEALLoss(IdentityModel(), **options), embeddings, labels, **options)


@pytest.mark.parametrize("symmetric", [False, True])
def test_ranking_pair_loss_equals_multiple_negatives_ranking_loss(symmetric):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.manual_seed(0)
    queries, documents = torch.randn(6, 8), torch.randn(6, 8)
    labels = torch.tensor([[0, 0, i] for i in range(6)])  # one row per document
    heal = HEALLoss(
        IdentityModel(),
        temperature=0.05,
        level_weights=[0.0, 0.0],
        query_document_weight=1.0,
        pair_loss="ranking",
        symmetric_pairs=symmetric,
    )
    ours = heal.compute_loss_from_embeddings([queries, documents], labels)["query_document"]
    # The symmetric form as sentence-transformers spells it now (MultipleNegativesSymmetricRankingLoss is deprecated).
    directions = (
        {"directions": ("query_to_doc", "doc_to_query"), "partition_mode": "per_direction"} if symmetric else {}
    )
    mnrl = MultipleNegativesRankingLoss(IdentityModel(), scale=20.0, **directions)
    theirs = mnrl.compute_loss_from_embeddings([queries, documents], labels)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(3, 10))
def test_soft_weights_masks_and_consistency_match_loop_reference(seed, batch):
    rng = np.random.default_rng(seed)
    ids = nested_ids(rng, batch).astype(np.float64)
    ids[rng.random(ids.shape) < 0.15] = -1  # masked levels
    weights = rng.uniform(0.0, 1.0, size=ids.shape).round(3)
    weights[ids < 0] = 0.0
    labels = torch.as_tensor(np.concatenate([ids, weights], axis=1), dtype=torch.float32)
    embeddings = [torch.as_tensor(rng.normal(size=(batch, 8)), dtype=torch.float32)]
    loss = HEALLoss(
        IdentityModel(), temperature=0.2, level_weights="uniform", consistency_weight=0.7, consistency_margin=0.1
    )
    assert_matches_reference(
        loss,
        embeddings,
        labels,
        temperature=0.2,
        level_weights=[1.0, 1.0, 1.0],
        consistency_weight=0.7,
        consistency_margin=0.1,
    )


def test_anchors_without_positives_are_skipped_not_nan():
    embeddings = [torch.randn(4, 8, requires_grad=True)]
    labels = torch.tensor([[0, 0], [1, 1], [2, 2], [3, 3]])  # every label is unique: no positives anywhere
    components = HEALLoss(IdentityModel()).compute_loss_from_embeddings(embeddings, labels)
    total = torch.stack(list(components.values())).sum()
    assert torch.isfinite(total) and float(total.detach()) == 0.0
    total.backward()  # still attached to the graph, so the trainer can call backward
    assert embeddings[0].grad is not None


def test_only_levels_with_positives_contribute():
    labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]])  # level 0 has positives, level 1 has none
    components = HEALLoss(IdentityModel()).compute_loss_from_embeddings([torch.randn(4, 8)], labels)
    assert float(components["level_0"]) > 0
    assert float(components["level_1"]) == 0.0


def test_gradients_flow_to_every_embedding():
    torch.manual_seed(0)
    queries = torch.randn(6, 8, requires_grad=True)
    documents = torch.randn(6, 8, requires_grad=True)
    labels = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 2], [0, 1, 3], [1, 2, 4], [1, 2, 5]])
    components = HEALLoss(IdentityModel(), consistency_weight=0.5).compute_loss_from_embeddings(
        [queries, documents], labels
    )
    torch.stack(list(components.values())).sum().backward()
    for tensor in (queries, documents):
        assert tensor.grad is not None
        assert torch.all(tensor.grad.abs().sum(dim=1) > 0)


def test_hierarchy_respecting_batch_has_lower_loss_than_shuffled():
    rng = np.random.default_rng(0)
    ids = nested_ids(rng, 48)
    # Embeddings built from the path: a shared direction per level-0, level-1 and level-2 label, decreasing scale.
    directions = [rng.normal(size=(ids[:, level].max() + 1, 32)) for level in range(3)]
    aligned = sum(scale * directions[level][ids[:, level]] for level, scale in enumerate([3.0, 2.0, 1.0]))
    aligned = torch.as_tensor(aligned + 0.1 * rng.normal(size=aligned.shape), dtype=torch.float32)
    shuffled = aligned[torch.as_tensor(rng.permutation(48))]
    labels = torch.as_tensor(ids)
    loss = HEALLoss(IdentityModel(), temperature=0.1)

    def total(emb):
        return float(torch.stack(list(loss.compute_loss_from_embeddings([emb], labels).values())).sum())

    assert total(aligned) < 0.7 * total(shuffled)


def test_forward_embeds_each_column_separately(tiny_model):
    """Queries and documents go through the model in separate passes: queries keep their own (short) length."""
    seen_lengths = []
    original_forward = tiny_model.forward

    def spy(features, **kwargs):
        seen_lengths.append(features["input_ids"].shape[-1])
        return original_forward(features, **kwargs)

    tiny_model.forward = spy
    queries = tiny_model.preprocess(["laser", "plasma"])
    documents = tiny_model.preprocess(
        ["laser light lens beam photon mirror", "plasma ion fusion tokamak electron gas"]
    )
    labels = torch.tensor([[0, 0, 0], [0, 1, 1]])
    components = HEALLoss(tiny_model).forward([queries, documents], labels)
    assert set(components) == {"level_0", "level_1", "query_document"}
    assert len(seen_lengths) == 2 and seen_lengths[0] < seen_lengths[1]


def test_level_weight_schedules():
    assert level_weight_schedule(3, "uniform") == [1.0, 1.0, 1.0]
    deeper = level_weight_schedule(3, "deeper", alpha=0.5)
    coarser = level_weight_schedule(3, "coarser", alpha=0.5)
    assert deeper[0] < deeper[1] < deeper[2] and coarser[0] > coarser[1] > coarser[2]
    assert sum(deeper) == pytest.approx(3.0)
    assert level_weight_schedule(2, [0.2, 0.8]) == [0.2, 0.8]
    with pytest.raises(ValueError, match="one weight per level"):
        level_weight_schedule(3, [1.0, 2.0])
    with pytest.raises(ValueError, match="Unknown level-weight schedule"):
        level_weight_schedule(3, "steep")
    with pytest.raises(ValueError, match="non-negative"):
        level_weight_schedule(2, [1.0, -1.0])


def with_negative_ids(labels: torch.Tensor, *negative_ids: torch.Tensor) -> torch.Tensor:
    """Label rows carrying each negative column's ids after the row's own, as fine_tune(hard_negatives=k) makes."""
    return torch.cat([labels, *negative_ids], dim=1)


@pytest.mark.parametrize("n_negatives", [1, 2])
def test_hard_negative_columns_match_multiple_negatives_ranking_loss(n_negatives):
    """With negative columns the query↔document level is sentence-transformers' MNRL on (anchor, positive,
    negative_1, ...): every negative of the batch is a candidate for every query."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.manual_seed(0)
    columns = [torch.randn(6, 8) for _ in range(2 + n_negatives)]
    labels = torch.tensor([[0, 0, i] for i in range(6)])
    negative_ids = [torch.tensor([[1, 1, 100 + 10 * j + i] for i in range(6)]) for j in range(n_negatives)]
    heal = HEALLoss(IdentityModel(), temperature=0.05, level_weights=[0.0, 0.0], query_document_weight=1.0)
    ours = heal.compute_loss_from_embeddings(columns, with_negative_ids(labels, *negative_ids))["query_document"]
    theirs = MultipleNegativesRankingLoss(IdentityModel(), scale=20.0).compute_loss_from_embeddings(columns, labels)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_a_negative_counts_as_the_document_it_is():
    torch.manual_seed(1)
    queries, documents = torch.randn(6, 8), torch.randn(6, 8)
    labels = torch.tensor([[i // 3, i // 2, i] for i in range(6)])
    for options in ({}, {"symmetric_pairs": True}, {"pair_negatives": "other_leaves"}):
        loss = HEALLoss(IdentityModel(), **options)
        without = loss.compute_loss_from_embeddings([queries, documents], labels)
        # another row's own document as a negative, with its ids: a second copy of that row's target, which leaves
        # every query's probability of its own document (and the graded targets) as they were
        shifted = torch.roll(torch.arange(6), 1)
        copies = loss.compute_loss_from_embeddings(
            [queries, documents, documents[shifted]], with_negative_ids(labels, labels[shifted])
        )
        for name, value in without.items():
            assert float(copies[name]) == pytest.approx(float(value), rel=1e-5), (options, name)
    # the hierarchy levels never see the negatives; only the ranking grows harder
    loss = HEALLoss(IdentityModel())
    outsiders = with_negative_ids(labels, torch.tensor([[5, 5, 50 + i] for i in range(6)]))
    with_negatives = loss.compute_loss_from_embeddings([queries, documents, torch.randn(6, 8)], outsiders)
    without = loss.compute_loss_from_embeddings([queries, documents], labels)
    for level in ("level_0", "level_1"):
        assert float(with_negatives[level]) == pytest.approx(float(without[level]))
    assert float(with_negatives["query_document"]) > float(without["query_document"])


def test_other_leaves_leaves_a_negative_of_the_querys_leaf_out():
    torch.manual_seed(2)
    queries, documents, negatives = torch.randn(6, 8), torch.randn(6, 8), torch.randn(6, 8)
    labels = torch.tensor([[0, i % 3, i] for i in range(6)])
    loss = HEALLoss(IdentityModel(), pair_negatives="other_leaves")
    without = loss.compute_loss_from_embeddings([queries, documents], labels)["query_document"]
    # every negative sits in one leaf (1) under another key: left out for the queries of leaf 1 only
    in_leaf_1 = with_negative_ids(labels, torch.tensor([[0, 1, 100 + i] for i in range(6)]))
    mixed = loss.compute_loss_from_embeddings([queries, documents, negatives], in_leaf_1)["query_document"]
    assert float(mixed) > float(without)
    only_leaf_1 = torch.tensor([1, 4])
    rows_of_leaf_1 = loss.compute_loss_from_embeddings(
        [queries, documents, negatives], in_leaf_1, anchors=torch.isin(torch.arange(6), only_leaf_1)
    )["query_document"]
    expected = loss.compute_loss_from_embeddings(
        [queries, documents], labels, anchors=torch.isin(torch.arange(6), only_leaf_1)
    )["query_document"]
    assert float(rows_of_leaf_1) == pytest.approx(float(expected), rel=1e-6)


def test_bad_inputs_raise_clear_errors():
    loss = HEALLoss(IdentityModel())
    with pytest.raises(ValueError, match="one text column"):
        loss.compute_loss_from_embeddings([], torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="pair_loss='ranking'"):
        HEALLoss(IdentityModel(), pair_loss="supcon").compute_loss_from_embeddings(
            [torch.randn(2, 4)] * 3, torch.zeros(2, 6, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="each negative's ids"):
        loss.compute_loss_from_embeddings([torch.randn(2, 4)] * 3, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="label"):
        loss.compute_loss_from_embeddings([torch.randn(2, 4)], None)
    with pytest.raises(ValueError, match="shape"):
        loss.compute_loss_from_embeddings([torch.randn(2, 4)], torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        HEALLoss(IdentityModel(), temperature=0)
    with pytest.raises(ValueError, match="Unknown level-weight schedule"):
        HEALLoss(IdentityModel(), level_weights="steep")
    with pytest.raises(ValueError, match="pair_loss must be"):
        HEALLoss(IdentityModel(), pair_loss="triplet")
    with pytest.raises(ValueError, match="hierarchy_views='both'"):
        HEALLoss(IdentityModel(), pair_loss="supcon", hierarchy_views="documents")
    with pytest.raises(ValueError, match="pair_level_discount"):
        HEALLoss(IdentityModel(), pair_level_discount=1.0)
    with pytest.raises(ValueError, match="pair_negatives must be one of 'all', 'other_leaves'"):
        HEALLoss(IdentityModel(), pair_negatives="same_leaf")
    with pytest.raises(ValueError, match="with pair_loss='ranking'"):
        HEALLoss(IdentityModel(), pair_loss="supcon", pair_negatives="other_leaves")
    with pytest.raises(ValueError, match="query_hierarchy_weight must be 1 with hierarchy_views='documents'"):
        HEALLoss(IdentityModel(), hierarchy_views="documents", query_hierarchy_weight=0.5)
    with pytest.raises(ValueError, match=r"query_hierarchy_weight must lie in \[0, 1\]"):
        HEALLoss(IdentityModel(), query_hierarchy_weight=1.5)
