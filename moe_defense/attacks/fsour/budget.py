"""A mode under a pair budget: greedy within it, uncapped then pruned to it, or both (the better kept)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from moe_defense.attacks.fsour.config import UncappedRoute

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
    sweep prunes the same uncapped route to every budget, and its no-cap point is that route (the search's cost
    is counted where it ran, at the first budget that needed it)."""
    budget = search.config.budget
    if budget is None:
        _uncapped(search, mode)
        return
    strategy = search.config.budget_strategy
    if strategy in ("greedy", "best"):
        mode.run(budget)
    if strategy == "greedy" or (strategy == "best" and search.success):
        return
    kept = (search.route, search.value)
    search.reset_route()
    _uncapped(search, mode)
    mode.prune(budget)
    if strategy == "best" and kept[1] > search.value:
        search.replace(*kept)


def _uncapped(search: RouteSearch, mode: BudgetedMode) -> None:
    """The uncapped route from the empty one: read from `search.uncapped` if searched before, else searched
    from the seed's own draws (and kept there), so the sweep's shared route is the no-cap search's whichever
    budget asked first; `search.at_uncapped` marks the route as that entry until it moves."""
    key = _uncapped_key(search)
    if search.uncapped is not None and key in search.uncapped:
        entry = search.uncapped[key]
        search.replace({l: r.clone() for l, r in entry.route.items()}, entry.value)
    else:
        search.generator.manual_seed(search.seed)  # as a no-cap search starts: whatever ran at a budget before
        mode.run(None)
        if search.uncapped is None:
            return
        entry = UncappedRoute({l: r.clone() for l, r in search.route.items()}, search.value)
        search.uncapped[key] = entry
    search.at_uncapped = (search.version, entry)


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
