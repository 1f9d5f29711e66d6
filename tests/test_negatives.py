from __future__ import annotations

import numpy as np
import pytest

from heal_rag.labels import LabelPaths
from heal_rag.negatives import mine_other_leaf_negatives, negative_columns
from heal_rag.training import HEALTrainingConfig, build_training_rows, fine_tune

FAST = {"max_steps": 2, "batch_size": 8, "samples_per_leaf": 2, "learning_rate": 1e-2, "max_seq_length": 32}


def unit(rows: list[list[float]]) -> np.ndarray:
    vectors = np.asarray(rows, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_mining_takes_the_nearest_documents_of_other_leaves_in_order():
    documents = unit([[1, 0], [0.9, 0.1], [0.8, 0.6], [0, 1], [0.6, 0.8]])
    paths = [[0, 0], [0, 0], [0, 1], [0, 1], [1, 2]]
    queries = unit([[1, 0.05], [0, 1]])
    mined = mine_other_leaf_negatives(queries, documents, [[0, 0], [0, 1]], paths, 2)
    # query 0 (leaf 0): documents 0 and 1 are its own leaf; of the rest, 2 is nearest, then 4
    # query 1 (leaf 1): documents 3 and 2 are its own leaf; 4 is nearest, then 1
    assert mined.tolist() == [[2, 4], [4, 1]]
    assert negative_columns(["a", "b", "c", "d", "e"], mined) == {"negative_1": ["c", "e"], "negative_2": ["e", "b"]}


def test_mining_never_takes_the_querys_own_text_nor_a_document_of_unknown_leaf():
    documents = unit([[1, 0], [1, 0], [0.9, 0.1], [0.5, 0.5], [0, 1]])
    # document 1 repeats document 0's text under another leaf; document 2 has no leaf label (-1)
    paths = [[0, 0], [0, 1], [0, -1], [1, 2], [1, 3]]
    mined = mine_other_leaf_negatives(
        unit([[1, 0]]), documents, [[0, 0]], paths, 2, query_keys=[7], document_keys=[7, 7, 8, 9, 10]
    )
    assert mined.tolist() == [[3, 4]]
    # a query whose leaf is masked is compared one level up: its whole branch (0) is left out
    assert mine_other_leaf_negatives(unit([[1, 0]]), documents, [[0, -1]], paths, 1).tolist() == [[3]]


def test_mining_errors_name_the_problem():
    documents = unit([[1, 0], [0, 1], [1, 1]])
    with pytest.raises(ValueError, match="1 documents outside its leaf"):
        mine_other_leaf_negatives(unit([[1, 0]]), documents, [[0]], [[0], [0], [1]], 2)
    with pytest.raises(ValueError, match="one path of the same depth per vector"):
        mine_other_leaf_negatives(unit([[1, 0]]), documents, [[0]], [[0], [1]], 1)
    with pytest.raises(ValueError, match="num_negatives"):
        mine_other_leaf_negatives(unit([[1, 0]]), documents, [[0]], [[0], [1], [1]], 0)


def test_hard_negatives_need_the_ranking_form_and_queries(corpus, tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="pair_loss='ranking'"):
        HEALTrainingConfig(hard_negatives=1, pair_loss="supcon")
    with pytest.raises(ValueError, match="hard_negatives"):
        HEALTrainingConfig(hard_negatives=-1)
    texts, paths, _ = corpus
    with pytest.raises(ValueError, match="hard_negatives=20 or lower"):  # 24 documents, 4 per leaf
        fine_tune(
            texts, paths, output_dir=tmp_path / "m", base_model=tiny_model_dir, hard_negatives=21,
            show_progress_bar=False, **FAST,
        )  # fmt: skip
    with pytest.raises(ValueError, match="needs queries"):
        fine_tune(
            texts, paths, output_dir=tmp_path / "m", base_model=tiny_model_dir, query_generator=None,
            hard_negatives=1, show_progress_bar=False, **FAST,
        )  # fmt: skip
    assert not (tmp_path / "m").exists()


def test_auto_hard_negatives_take_what_the_data_allow():
    from heal_rag.training import AUTO_HARD_NEGATIVES, _negatives_per_query

    texts = [f"passage {i} about topic {i % 3}" for i in range(7)]
    # five documents in the largest leaf: two outside it
    paths = LabelPaths([["a", "x"]] * 5 + [["b", "y"], ["b", "z"]])
    paired = build_training_rows(texts, paths, titles=[f"title {i}" for i in range(7)])
    auto = HEALTrainingConfig(hard_negatives="auto")
    assert _negatives_per_query(paired, auto) == 2
    assert _negatives_per_query(paired, HEALTrainingConfig(hard_negatives=1)) == 1
    wide = build_training_rows(texts, LabelPaths([[str(i), "x"] for i in range(7)]), titles=texts)
    assert _negatives_per_query(wide, auto) == AUTO_HARD_NEGATIVES == 4
    one_leaf = build_training_rows(texts, LabelPaths([["a", "x"]] * 7), titles=texts)
    assert _negatives_per_query(one_leaf, auto) == 0
    unpaired = build_training_rows(texts, paths, query_generator=None)
    assert _negatives_per_query(unpaired, auto) == 0, "no queries: nothing to mine for"
    supcon = HEALTrainingConfig(hard_negatives="auto", pair_loss="supcon", hierarchy_views="both")
    assert _negatives_per_query(paired, supcon) == 0, "the negatives join the ranking form only"
    with pytest.raises(ValueError, match="an integer >= 0 or 'auto', got 'many'"):
        HEALTrainingConfig(hard_negatives="many")


def test_fine_tune_with_auto_hard_negatives_mines_as_many_as_the_leaves_allow(corpus, tiny_model_dir, tmp_path):
    texts, paths, titles = corpus
    # the first leaf whole (four documents) and two of the second: two documents outside the largest leaf
    keep = [0, 1, 2, 3, 4, 5]
    result = fine_tune(
        [texts[i] for i in keep], [paths[i] for i in keep], titles=[titles[i] for i in keep],
        output_dir=tmp_path / "m", base_model=tiny_model_dir, hard_negatives="auto", show_progress_bar=False, **FAST,
    )  # fmt: skip
    assert result.global_steps == 2 and np.isfinite(result.train_loss)
    training = result.metadata["training"]
    assert training["hard_negatives"] == "auto" and training["hard_negatives_per_query"] == 2


@pytest.mark.parametrize("source_level", [False, True])
def test_training_rows_get_negatives_from_other_leaves(corpus, tiny_model, source_level):
    from heal_rag.training import _with_hard_negatives

    texts, paths, titles = corpus
    # with a source level, two texts share each source: the leaf is still the user's (the level above)
    sources = [f"doc-{i // 2}" for i in range(len(texts))] if source_level else None
    rows = build_training_rows(texts, LabelPaths(paths), titles=titles, source_ids=sources)
    mined = _with_hard_negatives(tiny_model, rows, 2, show_progress_bar=False)
    assert list(mined.columns) == ["query", "document", "negative_1", "negative_2", "label"]
    leaf_of = {text: tuple(path) for text, path in zip(texts, paths, strict=True)}
    for row, document in enumerate(mined.document_indices):
        own_leaf = tuple(paths[document])
        for column in ("negative_1", "negative_2"):
            assert leaf_of[mined.columns[column][row]] != own_leaf
        assert mined.columns["negative_1"][row] != mined.columns["negative_2"][row]
    # the nearest one first, as the model that mined them sees it
    query = tiny_model.encode_query(mined.columns["query"][:1], normalize_embeddings=True)
    first, second = (
        tiny_model.encode_document([mined.columns[c][0]], normalize_embeddings=True)
        for c in ("negative_1", "negative_2")
    )
    assert (query @ first.T).item() >= (query @ second.T).item() - 1e-6
    assert mined.columns["query"] == rows.columns["query"]
    # each label row: its own, then each negative's ids (levels and key) as the negative's own row has them
    own_ids = {text: label for text, label in zip(rows.columns["document"], rows.columns["label"], strict=True)}
    width = len(rows.columns["label"][0])
    for row, label in enumerate(mined.columns["label"]):
        assert label[:width] == rows.columns["label"][row]
        assert label[width:] == own_ids[mined.columns["negative_1"][row]] + own_ids[mined.columns["negative_2"][row]]


def test_fine_tune_with_hard_negatives_trains_and_records_the_setting(corpus, tiny_model_dir, tmp_path):
    texts, paths, titles = corpus
    result = fine_tune(
        texts, paths, titles=titles, output_dir=tmp_path / "m", base_model=tiny_model_dir, hard_negatives=1,
        show_progress_bar=False, **FAST,
    )  # fmt: skip
    assert result.global_steps == 2 and np.isfinite(result.train_loss)
    assert result.metadata["training"]["hard_negatives"] == 1
    assert result.metadata["training"]["hard_negatives_per_query"] == 1
