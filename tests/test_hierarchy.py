from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

from heal_rag.hierarchy import HNMFk, project, select_k
from heal_rag.hierarchy.nmfk import match_runs


def word(*parts) -> str:
    """Letters-only token (the TF-IDF keeps words of letters): digits become letters."""
    return "".join(chr(97 + int(c)) if c.isdigit() else c for c in "".join(map(str, parts)))


def planted_corpus(n_top=3, n_sub=3, per_leaf=30, seed=0):
    """Documents drawn from a 2-level structure.

    Each document has most of its top topic's 10 words (common inside the top topic, as parent terms are) and
    12 of its subtopic's 30 words, plus a little noise shared by everyone.
    """
    rng = np.random.default_rng(seed)
    noise = [word("noise", i) for i in range(200)]
    texts, truth = [], []
    for a in range(n_top):
        top_words = [word("top", a, "w", i) for i in range(10)]
        for b in range(n_sub):
            sub_words = [word("sub", a, "x", b, "w", i) for i in range(30)]
            for _ in range(per_leaf):
                tokens = [
                    *rng.choice(top_words, 8, replace=False),
                    *rng.choice(sub_words, 12),
                    *rng.choice(noise, 4),
                ]
                texts.append(" ".join(tokens))
                truth.append((a, b))
    return texts, truth


@pytest.fixture(scope="module")
def fitted():
    texts, truth = planted_corpus()
    model = HNMFk(max_depth=2, min_node_size=20, random_state=0)
    labels = model.fit_transform(texts)
    return model, labels, texts, truth


def test_planted_two_level_structure_is_recovered_exactly(fitted):
    model, labels, _, truth = fitted
    ids = labels.level_ids()
    assert adjusted_rand_score([a for a, _ in truth], ids[:, 0]) == 1.0
    assert adjusted_rand_score([f"{a}.{b}" for a, b in truth], ids[:, 1]) == 1.0
    assert model.tree_.k == 3 and model.tree_.k_passed
    assert [child.k for child in model.tree_.children] == [3, 3, 3]
    assert all(leaf.stop_reason == "depth" for child in model.tree_.children for leaf in child.children)


def test_node_ids_are_paths_and_names_are_top_terms(fitted):
    model, labels, texts, truth = fitted
    assert {p[0] for p in labels.paths} == {"0", "1", "2"}
    assert all(p[1].startswith(p[0] + ".") for p in labels.paths)
    node = model.node("1.2")
    assert node.depth == 2 and node.size == 30
    members = [truth[i] for i, p in enumerate(labels.paths) if p[1] == "1.2"]
    (a, b) = members[0]
    assert set(members) == {(a, b)}
    # The leaf's name is made of its own subtopic's words.
    assert all(term.startswith(word("sub", a, "x", b)) for term in node.top_terms[:3])
    assert node.name == " · ".join(node.top_terms[:3])


def test_transform_on_training_texts_reproduces_paths_and_weights(fitted):
    model, labels, texts, _ = fitted
    again = model.transform(texts)
    assert again.paths == labels.paths
    np.testing.assert_allclose(again.level_weights(), labels.level_weights())
    # One text alone gets the same path as in a batch.
    assert model.transform([texts[5]]).paths[0] == labels.paths[5]


def test_soft_memberships_are_shares(fitted):
    _, labels, _, _ = fitted
    weights = labels.level_weights()
    assert weights.shape == (270, 2)
    assert ((weights > 0.34) & (weights <= 1.0)).all()  # the chosen topic is the largest of 3 shares


def test_multi_membership_threshold():
    texts, _ = planted_corpus(n_top=2, n_sub=2, per_leaf=20)
    mixed = " ".join(texts[0].split()[:12] + texts[-1].split()[:12])  # half topic 0, half topic 1
    model = HNMFk(max_depth=1, min_node_size=10, membership_threshold=0.3, random_state=0).fit(texts + [mixed])
    memberships = model.multi_memberships_
    assert len(memberships[-1][0]) == 2, "the mixed document belongs to both top-level topics"
    assert len(memberships[0][0]) == 1


def test_exports(fitted, tmp_path):
    model, _, _, _ = fitted
    payload = json.loads(json.dumps(model.to_dict()))
    assert payload["tree"]["k"] == 3 and len(payload["tree"]["children"]) == 3
    assert payload["tree"]["k_scores"][0]["k"] == 2
    text = model.format_tree()
    assert text.splitlines()[0].startswith("root  (270 docs, k=3)")
    assert "├── 0  " in text and "│   └── 0.2  " in text
    assert set(model.node_names()) == {"0", "1", "2"} | {f"{a}.{b}" for a in range(3) for b in range(3)}


def test_deterministic_under_random_state():
    texts, _ = planted_corpus(n_top=2, n_sub=2, per_leaf=25, seed=3)
    first = HNMFk(max_depth=2, min_node_size=20, random_state=7).fit(texts)
    second = HNMFk(max_depth=2, min_node_size=20, random_state=7).fit(texts)
    assert first.labels_.paths == second.labels_.paths
    assert first.to_dict() == second.to_dict()


def test_small_nodes_and_depth_stop_the_recursion():
    texts, _ = planted_corpus(n_top=3, n_sub=2, per_leaf=6)  # 36 documents, 12 per top topic
    model = HNMFk(max_depth=2, min_node_size=15, random_state=0).fit(texts)
    assert model.tree_.k == 3
    assert all(child.stop_reason == "small" for child in model.tree_.children)  # 12 docs < 15
    assert all(len(p) == 1 for p in model.labels_.paths)
    deep = HNMFk(max_depth=1, min_node_size=5, random_state=0).fit(texts)
    assert all(child.stop_reason == "depth" for child in deep.tree_.children)


def test_children_try_k_up_to_their_parents_k(fitted):
    model, _, _, _ = fitted
    for child in model.tree_.children:
        assert max(s.k for s in child.k_scores) <= model.tree_.k


@pytest.mark.parametrize(
    ("texts", "kwargs", "message"),
    [
        ([], {}, "corpus is empty"),
        (["", "   "], {}, "All texts are empty"),
        ("one string", {}, "not a single string"),
        (["alpha beta"] * 50, {"max_depth": 2, "min_node_size": 30}, "too few for max_depth=2"),
        (["the and of"] * 80, {"max_depth": 1, "min_node_size": 30}, "Could not build a vocabulary"),
        (["alpha beta"] * 80, {"k_range": (1, 4)}, "k_range"),
        (["alpha beta"] * 80, {"max_depth": 0}, "max_depth"),
    ],
)
def test_bad_input_raises_clear_errors(texts, kwargs, message):
    with pytest.raises(ValueError, match=message):
        HNMFk(**kwargs).fit(texts)


def test_transform_before_fit():
    with pytest.raises(RuntimeError, match="not fitted"):
        HNMFk().transform(["text"])


def test_project_is_row_independent_and_non_negative():
    rng = np.random.default_rng(0)
    topics = rng.random((3, 20))
    matrix = sp.csr_matrix(rng.random((6, 20)) * (rng.random((6, 20)) > 0.5))
    together = project(matrix, topics)
    alone = np.vstack([project(matrix[i], topics) for i in range(6)])
    np.testing.assert_allclose(together, alone)
    assert (together >= 0).all()
    exact = rng.random((4, 3)) @ topics  # rows that are exact mixtures of the topics
    np.testing.assert_allclose(project(exact, topics, n_iter=2000) @ topics, exact, rtol=1e-3, atol=1e-3)


def test_match_runs_recovers_permutations():
    rng = np.random.default_rng(1)
    base = rng.random((4, 30))
    perms = [np.arange(4), np.array([2, 0, 3, 1]), np.array([1, 3, 0, 2])]
    runs = [base[p] + 0.01 * rng.random((4, 30)) for p in perms]
    matched = match_runs(runs)
    for run, perm in zip(runs, matched, strict=True):
        np.testing.assert_allclose(run[perm], base, atol=0.02)


def test_select_k_warns_and_falls_back_when_nothing_is_stable(caplog):
    rng = np.random.default_rng(0)
    noise = sp.csr_matrix(rng.random((60, 40)))
    selection = select_k(noise, [2, 3, 4], n_perturbations=3, silhouette_threshold=0.999, random_state=0)
    assert not selection.passed
    assert selection.k == max(selection.scores, key=lambda s: (s.score, -s.k)).k
    assert "no k in [2, 3, 4] reached silhouette" in caplog.text


def test_nodes_without_a_stable_k_stay_leaves_unless_asked(monkeypatch):
    import dataclasses

    import heal_rag.hierarchy.hnmfk as hnmfk_module

    real_select_k = hnmfk_module.select_k

    def nothing_stable_below_root(*args, where="root", **kwargs):
        selection = real_select_k(*args, where=where, **kwargs)
        return selection if where == "root" else dataclasses.replace(selection, passed=False)

    monkeypatch.setattr(hnmfk_module, "select_k", nothing_stable_below_root)
    texts, _ = planted_corpus()
    model = HNMFk(max_depth=2, min_node_size=20, random_state=0).fit(texts)
    assert model.tree_.k == 3
    assert all(child.stop_reason == "no stable k" and child.is_leaf for child in model.tree_.children)
    assert all(len(p) == 1 for p in model.labels_.paths)
    forced = HNMFk(max_depth=2, min_node_size=20, random_state=0, split_unstable_nodes=True).fit(texts)
    assert all(child.k >= 2 for child in forced.tree_.children)
