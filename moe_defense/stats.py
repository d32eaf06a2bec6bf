"""95% intervals for rates: Wilson for one run's counts, Student t over seeds; how a missing figure prints.

Every ASR and rate moe-defense reports carries its n and one of these; at n = 16 a Wilson interval
is about +-0.2 wide, which is the honest size of a difference between two such runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import mean, stdev
from typing import Any

Z95 = 1.959963984540054
# two-sided 95% quantiles of Student's t, by degrees of freedom (df > 30: the normal quantile)
T95 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def wilson(successes: int, n: int) -> list[float] | None:
    """The 95% Wilson score interval [low, high] of successes / n (None when n = 0)."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def t_quantile(df: int) -> float:
    return T95[df - 1] if df <= len(T95) else Z95


def over_seeds(values: Sequence[float | None], rate: bool = True) -> dict[str, Any]:
    """Mean over seeds with its 95% t interval (None with fewer than two seeds), clipped to [0, 1] for a rate
    (`rate=False`: an NLL, unbounded above); the rounded ends never cross the mean."""
    known = [v for v in values if v is not None]
    if not known:
        return {"mean": None, "ci95": None, "n": 0}
    centre = mean(known)
    if len(known) < 2:
        return {"mean": centre, "ci95": None, "n": 1}
    half = t_quantile(len(known) - 1) * stdev(known) / math.sqrt(len(known))
    low, high = centre - half, centre + half
    if rate:
        low, high = max(0.0, low), min(1.0, high)
    return {"mean": centre, "ci95": [min(round(low, 4), centre), max(round(high, 4), centre)], "n": len(known)}


MISSING = "n/a"  # a figure with nothing behind it (no sample scored, or not defined for the row): never printed as 0


def fmt(value: Any) -> str:
    """A figure as tables print it (floats to 3 decimals); None or NaN prints as `MISSING`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.3f}" if isinstance(value, float) else str(value)
