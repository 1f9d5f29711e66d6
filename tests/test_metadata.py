"""The flat metadata heal_rag writes on every record, whichever store or framework it goes to."""

from __future__ import annotations

import math

from heal_rag.metadata import flatten_metadata, path_from_metadata, record_metadata


def test_flatten_metadata_keeps_flat_values_and_flattens_the_rest() -> None:
    flat = flatten_metadata({"page": 3, "tags": ["x", 2], "extra": {"k": 1}, "empty": None, "nan": math.nan, 4: True})
    assert flat == {"page": 3, "tags": "x, 2", "extra": '{"k": 1}', "4": True}


def test_record_metadata_replaces_the_users_path_and_keeps_the_users_title() -> None:
    user = {"heal_path": "Old > Path", "title": "Mine", "source": "a.md", "tags": ["x", "y"]}
    metadata = record_metadata(user, path=["Physics", "Optics"], title="Lenses")
    assert metadata == {
        "title": "Mine",
        "source": "a.md",
        "tags": "x, y",
        "heal_path": "Physics > Optics",
        "heal_l0": "Physics",
        "heal_l1": "Optics",
    }
    assert path_from_metadata(metadata) == ("Physics", "Optics")
    assert user["heal_path"] == "Old > Path", "the user's metadata must not be changed"


def test_a_users_path_key_holding_the_records_path_is_stored_as_a_path() -> None:
    """The path a model was tuned on from ``path_key="category"`` reads back from that key after storage."""
    user = {"category": ["Physics", "Optics"], "tags": ["Physics", "Lab"]}
    metadata = record_metadata(user, path=("Physics", "Optics"))
    assert metadata["category"] == "Physics > Optics" and metadata["tags"] == "Physics, Lab"
    assert path_from_metadata(metadata, "category") == ("Physics", "Optics")
    assert user["category"] == ["Physics", "Optics"]


def test_record_metadata_without_a_path_drops_a_stale_one_and_adds_the_title() -> None:
    metadata = record_metadata({"heal_path": "Old > Path", "source": "a.md"}, title="Lenses")
    assert metadata == {"source": "a.md", "title": "Lenses"}
    assert record_metadata(None) == {}
