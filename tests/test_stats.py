"""Intervals: Wilson against published values, Student t over seeds (not 1.96 * s / sqrt(n))."""

from __future__ import annotations

import math

import pytest

from moe_defense.stats import over_seeds, t_quantile, wilson


def test_wilson_matches_reference_values():
    assert wilson(2, 3) == [0.2077, 0.9385]
    assert wilson(0, 16) == [0.0, 0.1936]  # a clean 0/16 still allows ASR up to ~0.19
    assert wilson(16, 16) == [0.8064, 1.0]
    assert wilson(0, 0) is None  # nothing scored: no interval, never a zero-width one


def test_interval_over_two_seeds_uses_the_t_quantile():
    stats = over_seeds([0.25, 0.5])
    half = 12.706 * (0.25 / math.sqrt(2)) / math.sqrt(2)  # s = 0.1768; 6.5x the normal approximation
    assert stats["mean"] == 0.375 and stats["n"] == 2
    assert stats["ci95"] == [0.0, 1.0] and half > 1  # clipped to [0, 1]: two seeds say little
    narrow = over_seeds([0.5, 0.52, 0.48, 0.5])
    assert narrow["ci95"][0] == pytest.approx(0.5 - t_quantile(3) * 0.01633 / 2, abs=1e-3)


def test_missing_values_are_not_zeros():
    assert over_seeds([None, None]) == {"mean": None, "ci95": None, "n": 0}
    assert over_seeds([0.4, None]) == {"mean": 0.4, "ci95": None, "n": 1}


def test_an_nll_over_seeds_is_not_clipped_and_rounded_ends_never_cross_the_mean():
    nll = over_seeds([1.03, 1.10], rate=False)
    assert nll["ci95"][0] <= nll["mean"] <= nll["ci95"][1] and nll["ci95"][1] > 1.0
    same = over_seeds([0.123456789, 0.123456789])
    assert same["ci95"][0] <= same["mean"] <= same["ci95"][1]
