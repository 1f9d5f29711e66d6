"""Up-front checks of user settings: finite numbers in range, integer counts, unique ids.

Every entry point (``HEALTrainingConfig``, ``HEALLoss``, ``HierarchyScorer``, ``HNMFk``, ``build_index``, the CLI)
validates its numeric settings with these helpers before any work starts, so a ``NaN`` temperature or a zero batch
size fails with an error naming the setting instead of training a broken model.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any


def _interval(minimum: float | None, maximum: float | None, min_open: bool, max_open: bool) -> str:
    low = "(-inf" if minimum is None else f"{'(' if min_open else '['}{minimum:g}"
    high = "inf)" if maximum is None else f"{maximum:g}{')' if max_open else ']'}"
    return f"{low}, {high}"


def check_real(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    allow_none: bool = False,
) -> float | None:
    """Check that ``value`` is a finite real number in the given interval and return it as a float.

    Args:
        name: The setting's name, used in the error message.
        value: The value to check.
        minimum: Lower bound (``None``: unbounded).
        maximum: Upper bound (``None``: unbounded).
        min_open: Exclude ``minimum`` itself.
        max_open: Exclude ``maximum`` itself.
        allow_none: Accept ``None`` (returned as is).

    Raises:
        ValueError: When ``value`` is not a number, is NaN or infinite, or lies outside the interval.
    """
    if value is None and allow_none:
        return None
    interval = _interval(minimum, maximum, min_open, max_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}.")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number in {interval}, got {number!r}.")
    too_low = minimum is not None and (number <= minimum if min_open else number < minimum)
    too_high = maximum is not None and (number >= maximum if max_open else number > maximum)
    if too_low or too_high:
        raise ValueError(f"{name} must lie in {interval}, got {number:g}.")
    return number


def check_int(
    name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None, allow_none: bool = False
) -> int | None:
    """Check that ``value`` is an integer in ``[minimum, maximum]`` and return it.

    Raises:
        ValueError: When ``value`` is not an integer (``bool`` and ``2.5`` are refused) or lies outside the range.
    """
    if value is None and allow_none:
        return None
    interval = _interval(minimum, maximum, False, False)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer in {interval}, got {value!r}.")
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ValueError(f"{name} must be an integer in {interval}, got {number}.")
    return number


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Check that ``value`` is one of ``choices``.

    Raises:
        ValueError: Naming the setting and the allowed values.
    """
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}.")
    return value


def check_unique_ids(ids: Iterable[Any], what: str = "ids") -> None:
    """Check that no id repeats (compared as strings, as vector stores store them).

    Raises:
        ValueError: Naming the first duplicate and the positions where it occurs.
    """
    first_seen: dict[str, int] = {}
    for position, value in enumerate(ids):
        key = str(value)
        if key in first_seen:
            raise ValueError(
                f"Duplicate {what}: {key!r} occurs at positions {first_seen[key]} and {position}. Ids must be unique: "
                "a vector store keeps one record per id, so the second would silently replace the first."
            )
        first_seen[key] = position
