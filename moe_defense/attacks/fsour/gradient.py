"""`gradient`: a tenth of the compute, by predicting from one gradient what every re-route of every pair would do.

The prediction is `linear.linearise` (one relaxed forward + backward). A step re-routes the m best pairs at once
for m = 1, 2, 4, ... (and a few next pairs singly), all scored exactly in one batched forward, keeps the best row
if it raises the objective, and takes a new gradient; `rounds` caps the steps. Most of the gain comes from the
first step (on the organism ~+7 nats of the ~+10 a full search finds), where the reference needs hundreds of
single-pair forwards. Under a budget the steps stay within it (greedy), or an uncapped route is pruned by the
same linearisation: the predicted loss of un-forcing each pair, half the excess dropped per gradient (prune).
Seeds perturb the ranking (Gumbel noise), so judged restarts differ.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from moe_defense.attacks.fsour.linear import Linearised, linearise

if TYPE_CHECKING:
    from moe_defense.attacks.fsour.search import RouteSearch


class GradientSearch:
    """Linearised steps on the route, and linearised pruning to a budget."""

    def __init__(self, search: RouteSearch) -> None:
        self.search = search
        self._linear: tuple[int, Linearised] | None = None

    def linearised(self) -> Linearised:
        """The first-order model around the current route (one relaxed gradient per route; around a sweep's
        uncapped route, one for every budget pruned from it)."""
        search, entry = self.search, self.search.uncapped_entry
        if self._linear is None or self._linear[0] != search.version:
            shared = entry.linearised if entry is not None else None
            self._linear = (search.version, shared if shared is not None else linearise(search))
        if entry is not None:
            entry.linearised = self._linear[1]
        return self._linear[1]

    def run(self, budget: int | None, rounds: int | None = None) -> None:
        """Linearised steps: on a fresh gradient, re-route the m pairs of highest predicted gain (m = 1, 2, 4, ...)
        and, singly, the next `pairs_per_round` - 1, all in one batched forward; keep the best row if it raises the
        objective. A step that fails bars the pairs it tried and re-ranks on the same gradient (no new one)."""
        search, config = self.search, self.search.config
        barred: set[tuple[int, int]] = set()
        steps = failures = 0
        while not search.success and steps < (config.rounds if rounds is None else rounds):
            linear = self.linearised()  # a new gradient after a step, the same one after a failure
            ranked = self._ranked(linear, barred, budget)
            if not ranked:
                return
            sizes = sorted({min(2**i, len(ranked)) for i in range(len(ranked).bit_length() + 1)})
            singles = ranked[1 : config.pairs_per_round]
            candidates = {l: r.expand(len(sizes) + len(singles), -1, -1).clone() for l, r in search.route.items()}
            for row, pairs in enumerate([ranked[:size] for size in sizes] + [[pair] for pair in singles]):
                for li, token in pairs:
                    candidates[search.layers[li]][row, token] = linear.best[li, token]
            if search.accept(candidates, search.score_full(candidates)):
                barred.clear()
                steps += 1
                failures = 0
                continue
            barred.update((search.layers[li], token) for li, token in ranked[: config.pairs_per_round])
            failures += 1
            if failures >= 2:
                return

    def _ranked(self, linear: Linearised, barred: set[tuple[int, int]], budget: int | None) -> list[tuple[int, int]]:
        """(layer index, token) of the pairs worth re-routing, best predicted gain first (Gumbel-perturbed by the
        seed, so restarts differ), those already on their best set or barred left out, within the budget."""
        search = self.search
        noise = -torch.log(-torch.log(torch.rand(linear.gain.shape, generator=search.generator).clamp(1e-9, 1 - 1e-9)))
        positive = linear.gain[linear.gain > 0]
        key = linear.gain + (0.1 * positive.mean() * noise if positive.numel() else 0.0)
        left = math.inf if budget is None else budget - search.forced_pairs
        ranked, new = [], 0
        for flat in key.flatten().argsort(descending=True).tolist():
            li, token = divmod(flat, search.span)
            layer = search.layers[li]
            current = search.route[layer][0, token]
            if linear.gain[li, token] <= 0 or (layer, token) in barred or torch.equal(current, linear.best[li, token]):
                continue
            unforced = bool(current[0] < 0)
            if unforced and new >= left:
                continue
            new += unforced
            ranked.append((li, token))
        return ranked

    def prune(self, budget: int) -> None:
        """Un-force the pairs the linearised objective misses least: half the excess on one gradient, the rest on a
        second (each checked with one forward), then one linearised step re-routes the kept pairs."""
        search = self.search
        first = True
        while search.forced_pairs > budget:
            excess = search.forced_pairs - budget
            linear = self.linearised()
            pairs = [
                (li, t)
                for li, l in enumerate(search.layers)
                for t in range(search.span)
                if search.route[l][0, t, 0] >= 0
            ]
            pairs.sort(key=lambda pair: float(linear.unforce[pair]), reverse=True)
            route = {l: r.clone() for l, r in search.route.items()}
            for li, token in pairs[: math.ceil(excess / 2) if first and excess > 2 else excess]:
                route[search.layers[li]][0, token] = -1
            first = False
            search.replace(route, float(search.score_full(route)[0]))
        self.run(budget, rounds=1)  # one linearised step re-routes the kept pairs
