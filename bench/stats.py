"""Small statistics helpers: percentiles and summaries of timing samples (no numpy on purpose)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["percentile", "summary"]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sample; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (pos - low))


def summary(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> dict[str, float]:
    """p50, p99, max and count of a sample, each multiplied by `scale` (e.g. 1000 for ms)."""
    if not values:
        return {"n": 0, "p50": math.nan, "p99": math.nan, "max": math.nan}
    return {"n": len(values), "p50": round(percentile(values, 50) * scale, digits),
            "p99": round(percentile(values, 99) * scale, digits), "max": round(max(values) * scale, digits)}
