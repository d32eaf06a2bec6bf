"""Minimal budgets per prompt, their median interval and the survival curve (pure functions)."""

from moe_defense.robustness import Outcome, median_ratio, median_with_ci, minimal_budgets, robustness, survival


def test_minimal_budget_is_the_smallest_flipping_route_over_all_searches():
    outcomes = [
        Outcome("a", False, 2),
        Outcome("a", True, 7),  # found at cap 8 with 7 pairs
        Outcome("a", True, 12),  # the uncapped search found a larger one
        Outcome("b", False, 2),
        Outcome("b", False, 40),
        Outcome("c", None, 3),  # unscored: no evidence
        Outcome("d", None, 3),
        Outcome("d", True, 30),
    ]
    assert minimal_budgets(outcomes) == {"a": 7, "b": None, "d": 30}


def test_median_counts_never_flipped_as_infinite():
    assert median_with_ci([4, None, 8])["median"] == 8
    assert median_with_ci([None, None, 8])["median"] is None
    assert median_with_ci([2, 4, 8, 16])["median"] == 6
    assert median_with_ci([2, 4, 8, None])["median"] == 6  # (4 + 8) / 2: the upper half holds the infinity
    assert median_with_ci([])["n"] == 0


def test_median_interval_is_the_binomial_order_statistics():
    values = list(range(1, 33))  # n = 32: the 95% interval of the median is [x_(10), x_(23)]
    result = median_with_ci(values)
    assert result["median"] == 16.5
    assert result["median_ci95"] == [10, 23]
    assert median_with_ci([1, 2, 3, 4, 5])["median_ci95"] is None  # n = 5 is too few for a 95% interval
    assert median_with_ci([1, 2, 3, 4, 5, 6])["median_ci95"] == [1, 6]


def test_survival_is_the_fraction_above_each_budget():
    minimal = {"a": 1, "b": 4, "c": 16, "d": None}
    points = survival(minimal, [1, 2, 4, 8, 16])
    assert [p["budget"] for p in points] == [1, 2, 4, 8, 16, None]
    assert [p["safe"] for p in points] == [0.75, 0.75, 0.5, 0.5, 0.25, 0.25]
    assert all(p["n"] == 4 and p["ci95"][0] <= p["safe"] <= p["ci95"][1] for p in points)


def test_robustness_and_ratio():
    before = robustness([Outcome(str(i), True, 2) for i in range(8)], [2, 8])
    after = robustness([Outcome(str(i), i < 4, 8) for i in range(8)], [2, 8])
    assert before["median"] == 2 and before["unflipped"] == 0
    assert after["median"] is None and after["unflipped"] == 4  # median of 8, 8, 8, 8, inf x 4 -> inf
    assert median_ratio(before, after) == "inf"
    assert median_ratio(before, before) == 1.0
    assert median_ratio(after, before) is None
