from __future__ import annotations

import numpy as np
import pytest

from heal_rag.labels import MASKED, LabelPathError, LabelPaths


def test_level_ids_are_nested_prefixes():
    labels = LabelPaths([["Physics", "Optics"], ["Physics", "Plasma"], ["Maths", "Optics"], ["Physics", "Optics"]])
    ids = labels.level_ids()
    assert ids.shape == (4, 2)
    assert ids[0, 0] == ids[1, 0] == ids[3, 0] != ids[2, 0]
    # Same leaf name under different parents is a different label.
    assert ids[0, 1] != ids[2, 1]
    assert ids[0, 1] == ids[3, 1]
    assert labels.level_names(1)[ids[2, 1]] == "Maths > Optics"
    assert labels.parent_ids(1)[ids[1, 1]] == ids[1, 0]


def test_ragged_pad_repeats_the_leaf():
    labels = LabelPaths([["A", "B", "C"], ["A", "B"]], ragged="pad")
    ids = labels.level_ids()
    assert labels.depth == 3 and labels.is_ragged
    assert (ids >= 0).all()
    assert ids[0, 1] == ids[1, 1] and ids[0, 2] != ids[1, 2]
    assert labels.level_names(2)[ids[1, 2]] == "A > B > B"


def test_ragged_mask_leaves_deeper_levels_unlabelled():
    labels = LabelPaths([["A", "B", "C"], ["A", "B"]], ragged="mask")
    ids = labels.level_ids()
    assert ids[1, 2] == MASKED and ids[0, 2] >= 0
    assert labels.level_weights()[1, 2] == 0.0
    assert labels.n_labels(2) == 1


def test_weights_and_label_rows():
    labels = LabelPaths([["A", "B"], ["A", "C"]], weights=[[1.0, 0.5], [0.9, 0.2]])
    rows = np.asarray(labels.to_label_rows(extra_ids=[7, 8]))
    # ids (2 levels + document key) then weights (2 levels + 1.0 for the key)
    assert rows.shape == (2, 6)
    assert rows[:, 2].tolist() == [7, 8]
    assert rows[:, 3:].tolist() == [[1.0, 0.5, 1.0], [0.9, 0.2, 1.0]]
    plain = LabelPaths([["A", "B"], ["A", "C"]]).to_label_rows()
    assert all(isinstance(v, int) for row in plain for v in row)


def test_tree_counts():
    tree = LabelPaths([["A", "B"], ["A", "C"], ["A", "B"], ["D"]]).tree()
    assert tree["A"]["count"] == 3 and tree["A"]["children"]["B"]["count"] == 2 and tree["D"]["count"] == 1


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        ([["A", "B"], []], "Label path 1 is empty"),
        ([["A", 3]], "non-string part at level 1"),
        ([["A", None]], "non-string part"),
        ([["A", "  "]], "empty label at level 1"),
        (["Physics"], "is the string 'Physics'"),
        ([], "paths is empty"),
        ("Physics", "not a single string"),
        ([5], "not a list of strings"),
    ],
)
def test_malformed_paths_raise_clear_errors(paths, message):
    with pytest.raises(LabelPathError, match=message):
        LabelPaths(paths)


def test_mismatched_lengths_with_texts():
    labels = LabelPaths([["A"], ["B"]])
    labels.check_length(2)
    with pytest.raises(LabelPathError, match="Got 3 documents but 2 label paths"):
        labels.check_length(3, "documents")


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([[1.0, 1.0]], "Got 1 weight rows for 2 label paths"),
        ([[1.0], [1.0, 1.0]], "Weight row 0 has 1 values but its path has 2 levels"),
        ([[1.0, 1.5], [1.0, 1.0]], "outside \\[0, 1\\]"),
    ],
)
def test_bad_weights_raise_clear_errors(weights, message):
    with pytest.raises(LabelPathError, match=message):
        LabelPaths([["A", "B"], ["A", "C"]], weights=weights)


def test_bad_ragged_mode():
    with pytest.raises(LabelPathError, match="ragged must be"):
        LabelPaths([["A"]], ragged="drop")
