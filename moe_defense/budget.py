"""The budget policy of a harden run: B80, the headline budget and the training budget.

Pure functions over the curve attack's points on the original model (budget, label, ASR), in the
order the recipe sweeps them (ascending, `None` = no cap last), so each rule is unit-tested alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from moe_defense.report.cells import budget_tick


@dataclass(frozen=True)
class CurvePoint:
    """One verified budget of the curve: its forced-pair budget (None: no cap), label and ASR.

    `routes_from`: the attack whose routes at this budget a transfer replay replays (default: `label`; a
    worst-case point's label names no single attack)."""

    budget: int | None
    label: str
    asr: float | None
    routes_from: str | None = None

    @property
    def routes_label(self) -> str:
        return self.routes_from or self.label


@dataclass(frozen=True)
class BudgetPolicy:
    """What the original model's curve decides: B80, the budget trained against, the headline point."""

    b80: int | None
    b80_reached: bool
    train_budget: int | None
    headline: CurvePoint

    def note(self, threshold: float) -> str | None:
        if self.b80_reached:
            return None
        return (
            f"no verified budget reached ASR {threshold} on the original model; headline at {self.headline.label}, "
            f"the recipe's train_budget {budget_tick(self.train_budget)}"
        )


def b80(curve: Sequence[CurvePoint], threshold: float) -> tuple[int | None, bool]:
    """The smallest verified budget whose original ASR reaches `threshold`; (budget, reached).

    A point with no ASR (nothing scored) never reaches it."""
    for point in curve:
        if point.asr is not None and point.asr >= threshold:
            return point.budget, True
    return None, False


def train_budget(setting: int | Literal["b80"], curve: Sequence[CurvePoint], threshold: float) -> int | None:
    """`b80`: B80 when reached, else the largest verified capped budget (no cap when none is capped)."""
    if setting != "b80":
        return setting
    budget, reached = b80(curve, threshold)
    if reached:
        return budget
    capped = [p.budget for p in curve if p.budget is not None]
    return capped[-1] if capped else None


def headline(curve: Sequence[CurvePoint], threshold: float, trained_at: int | None) -> CurvePoint:
    """The point the headline (and the transfer replay) uses: B80 when reached, else the training budget
    when it was verified, else the largest verified budget below it (the smallest one if none is)."""
    budget, reached = b80(curve, threshold)
    by_budget = {p.budget: p for p in curve}
    if reached:
        return by_budget[budget]
    if trained_at in by_budget:
        return by_budget[trained_at]
    capped = [p for p in curve if p.budget is not None]
    if not capped:
        return curve[-1]
    below = [p for p in capped if trained_at is not None and p.budget <= trained_at]
    return below[-1] if below else capped[0]


def policy(curve: Sequence[CurvePoint], threshold: float, setting: int | Literal["b80"]) -> BudgetPolicy:
    budget, reached = b80(curve, threshold)
    trained_at = train_budget(setting, curve, threshold)
    return BudgetPolicy(
        b80=budget, b80_reached=reached, train_budget=trained_at, headline=headline(curve, threshold, trained_at)
    )
