"""Small figures the context benchmarks share: which items to take, and quantiles."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def spread(items: Sequence[T], count: int) -> list[T]:
    """``count`` of ``items``, evenly spaced from the first (all when there are fewer;
    none for a count of 0 or less)."""
    if count <= 0:
        return []
    if len(items) <= count:
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1), linear between the nearest ranks, to 0.1; None for no
    values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (pos - low), 1)


def percent(values: Sequence[float]) -> float | None:
    """The mean of 0/1 (or bool) values in percent, to 0.1; None for no values."""
    return round(100 * statistics.mean(values), 1) if values else None
