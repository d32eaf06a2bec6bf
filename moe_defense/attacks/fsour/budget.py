"""A mode under a pair budget: greedy within it, uncapped then pruned to it, or both (the better kept)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from moe_defense.attacks.fsour.search import RouteSearch


class BudgetedMode(Protocol):
    def run(self, budget: int | None) -> None:
        """Improve the route, adding forced pairs only while fewer than `budget` are forced (None: no cap)."""

    def prune(self, budget: int) -> None:
        """Un-force pairs until at most `budget` are forced."""


def run_budgeted(search: RouteSearch, mode: BudgetedMode) -> None:
    """`mode.run` within the budget (greedy), or without a cap then `mode.prune` to it (prune), or both (best).

    The uncapped route is searched once per (mode, seed, prompt, ...) in `search.uncapped` when given: a budget
    sweep prunes the same uncapped route to every budget."""
    budget = search.config.budget
    strategy = search.config.budget_strategy if budget is not None else "greedy"
    if strategy in ("greedy", "best"):
        mode.run(budget)
    if strategy == "greedy" or (strategy == "best" and search.success):
        return
    assert budget is not None
    kept = (search.route, search.value)
    search.reset_route()
    key = _uncapped_key(search)
    if search.uncapped is not None and key in search.uncapped:
        route, value = search.uncapped[key]
        search.replace({l: r.clone() for l, r in route.items()}, value)
    else:
        mode.run(None)
        if search.uncapped is not None:
            search.uncapped[key] = ({l: r.clone() for l, r in search.route.items()}, search.value)
    mode.prune(budget)
    if strategy == "best" and kept[1] > search.value:
        search.replace(*kept)


def _uncapped_key(search: RouteSearch) -> tuple:
    config = search.config
    return (
        config.mode,
        search.seed,
        config.force_decode,
        config.forced_weights,
        tuple(search.layers),
        tuple(search.ids[0].tolist()),
    )
