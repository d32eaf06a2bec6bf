"""How a report's table cell prints a figure: a rate with its interval and n, a budget, a seed mean.

Two empty cells, never a 0: `NOT_RUN` (no such row: the attack, task or run is absent) and `MISSING`
(it ran and nothing was scored).
"""

from __future__ import annotations

from typing import Any

from moe_defense.stats import MISSING, fmt

NOT_RUN = "-"


def rate(value: Any, ci95: list[float] | None, n: int | None) -> str:
    """`0.250 [0.102, 0.495] n=16`: a rate with its 95% interval and the n it rests on."""
    if value is None:
        return f"{MISSING} (n={n or 0})"
    interval = f" [{ci95[0]:.2f}, {ci95[1]:.2f}]" if ci95 else ""
    return f"{value:.2f}{interval} n={n}"


def asr_rate(point: dict[str, Any]) -> str:
    """The rate of an ASR point of summary.json (`summary.asr_point`)."""
    return rate(point["asr"], point["asr_ci95"], point["n_scored"])


def budget_tick(budget: int | None) -> str:
    """An attack budget as an axis tick or a table names it (None: the search had no cap)."""
    return "no cap" if budget is None else str(budget)


def budget_value(budget: float | None) -> str:
    """A minimal budget (None: no flipping route found at any verified budget)."""
    return "inf" if budget is None else f"{budget:g}"


def median_interval(minimal: dict[str, Any]) -> str:
    """The median minimal budget of a `robustness()` result with its order-statistic 95% interval."""
    ci = minimal["median_ci95"]
    interval = f" [{budget_value(ci[0])}, {budget_value(ci[1])}]" if ci else ""
    return f"{budget_value(minimal['median'])}{interval}"


def seed_mean(stat: dict[str, Any] | None) -> str:
    """A grid cell: mean over seeds, its 95% interval and the seeds it rests on."""
    if not stat:
        return NOT_RUN
    if stat["mean"] is None:
        return MISSING
    interval = f" [{stat['ci95'][0]:.2f}, {stat['ci95'][1]:.2f}]" if stat.get("ci95") else ""
    return f"{stat['mean']:.2f}{interval} ({stat['n']} seed{'s' if stat['n'] != 1 else ''})"


def criterion(criterion: dict[str, Any]) -> str:
    """One figure of a ladder rung against its target limit (`target.assess`)."""
    mark = "yes" if criterion["met"] else "no"
    return f"{fmt(criterion['value'])} (<= {criterion['limit']}: {mark})"
