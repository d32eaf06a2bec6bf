"""The budget policy as pure functions over the original model's curve."""

from __future__ import annotations

from moe_defense.budget import CurvePoint, b80, headline, policy, train_budget

CURVE = [CurvePoint(2, "fsour@2", 0.25), CurvePoint(8, "fsour@8", 0.75), CurvePoint(None, "fsour@inf", 0.94)]


def test_b80_is_the_smallest_budget_reaching_the_threshold():
    assert b80(CURVE, 0.8) == (None, True)  # reached, at no cap
    assert b80(CURVE, 0.7) == (8, True)
    assert b80(CURVE, 0.95) == (None, False)
    assert b80([CurvePoint(2, "x", None), CurvePoint(4, "y", 0.9)], 0.8) == (4, True)  # nothing scored never reaches it


def test_training_budget_and_headline_when_b80_is_not_reached():
    assert train_budget(4, CURVE, 0.95) == 4
    assert train_budget("b80", CURVE, 0.7) == 8
    assert train_budget("b80", CURVE, 0.95) == 8  # the largest capped verified budget
    assert headline(CURVE, 0.95, 8).label == "fsour@8"  # the training budget, verified
    assert headline(CURVE, 0.95, 4).label == "fsour@2"  # else the largest verified budget below it
    assert headline(CURVE, 0.95, 1).label == "fsour@2"  # else the smallest one
    assert headline([CurvePoint(None, "fsour@inf", 0.1)], 0.8, None).label == "fsour@inf"


def test_policy_bundles_the_rules():
    decided = policy(CURVE, 0.7, "b80")
    assert (decided.b80, decided.b80_reached, decided.train_budget, decided.headline.label) == (8, True, 8, "fsour@8")
    assert decided.note(0.7) is None
    # the recipe's budget, not "trained at": a curriculum or a refresh trains at other budgets too (train.json)
    assert policy(CURVE, 0.95, "b80").note(0.95).endswith("headline at fsour@8, the recipe's train_budget 8")
    assert policy(CURVE[2:], 0.95, "b80").note(0.95).endswith("headline at fsour@inf, the recipe's train_budget no cap")
