"""`fast`: the reference's objective under the same budget in far fewer batched model calls.

It scores about as many sequences (candidate routes) as `reference` (0.8-0.9x on the organism): all N candidates
of a pair share one batched forward over the positions from the forced token on, which starts from the current
route's KV cache cropped before that token (`RouteScorer.score_from`); candidates are proposed from the gradient
of the objective w.r.t. the router logits, and pairs are visited in order of that gradient's promise. With a pair
budget it adds the single best pair per round (best-improvement greedy). Its win is batching and KV reuse (wall
time), not less compute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from moe_defense.attacks.fsour.scorer import Route

if TYPE_CHECKING:
    from moe_defense.attacks.fsour.search import RouteSearch

Pair = tuple[int, int]  # (layer, token)


class FastSearch:
    """Gradient-ranked, KV-cached sweeps over the (token, layer) pairs, and backward elimination to a budget."""

    def __init__(self, search: RouteSearch) -> None:
        self.search = search
        self._saliency: tuple[int, tuple[torch.Tensor, dict[int, torch.Tensor]]] | None = None

    def run(self, budget: int | None) -> None:
        """Sweeps over the pairs while the last one improved (at most `config.sweeps`)."""
        search = self.search
        for _ in range(search.config.sweeps):
            start = search.value
            self._sweep(budget)
            if search.success or not search.budget_left(budget) or search.value <= start:
                return

    def _sweep(self, budget: int | None) -> None:
        """Visit every unforced pair once, most promising first, until success or the budget is spent."""
        search = self.search
        tried: set[Pair] = set()
        while not search.success and search.budget_left(budget):
            gradient, executed = self.saliency()
            gain = self._promise(gradient, executed, tried)
            if not gain:
                return
            ranked = sorted(gain, key=gain.get, reverse=True)[: search.config.pairs_per_round]
            best: tuple[Route, torch.Tensor] | None = None
            for layer, token in ranked:
                tried.add((layer, token))
                candidates = self._candidates(layer, token, gradient)
                scores = search.score_from(token, candidates)
                if budget is None:
                    if search.accept(candidates, scores) and search.success:
                        return
                elif best is None or float(scores.max()) > float(best[1].max()):
                    best = (candidates, scores)
            if best is not None:
                search.accept(*best)

    def _promise(
        self, gradient: torch.Tensor, executed: dict[int, torch.Tensor], tried: set[Pair]
    ) -> dict[Pair, float]:
        """Per unforced, untried pair: the gradient's first-order gain of its best set over the executed one."""
        search, k = self.search, self.search.adapter.top_k
        gain = {}
        for li, layer in enumerate(search.layers):
            for token in range(search.span):
                if (layer, token) in tried or search.route[layer][0, token, 0] >= 0:
                    continue
                g = gradient[li, token]
                gain[(layer, token)] = float(g.topk(k).values.sum() - g[executed[layer][token]].sum())
        return gain

    def _candidates(self, layer: int, token: int, gradient: torch.Tensor) -> Route:
        """N candidates at the pair: about half guided by the gradient, the rest uniformly random."""
        search, count = self.search, self.search.config.candidates
        guided = self._guided(gradient[search.layers.index(layer), token], max(1, count - count // 2))
        return search.with_sets(layer, token, torch.cat([guided, search.uniform_sets(count // 2)]))

    def _guided(self, gradient: torch.Tensor, count: int) -> torch.Tensor:
        """Gumbel-top-k around the gradient: the first candidate is its top-k, the rest explore near it."""
        scale = gradient.std().clamp(min=1e-6)
        uniform = torch.rand(count, gradient.numel(), generator=self.search.generator).clamp(1e-9, 1 - 1e-9)
        gumbel = -torch.log(-torch.log(uniform))
        scores = gradient / scale + gumbel
        scores[0] = gradient
        return scores.topk(self.search.adapter.top_k, dim=-1).indices

    def saliency(self) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """d objective / d router logits per (layer, token, expert), and the experts each pair executes.

        Both depend on the route only, so a round that accepted nothing reuses the last ones."""
        search = self.search
        if self._saliency is not None and self._saliency[0] == search.version:
            return self._saliency[1]
        gradient, trace = search.scorer.logit_gradient(
            search.scorer.interventions(search.route, 1), search.layers, search.span, keep_logits=False
        )
        executed = {l: route.indices[0, : search.span] for l, route in trace.items()}
        self._saliency = (search.version, (gradient, executed))
        return gradient, executed

    def prune(self, budget: int) -> None:
        """Backward elimination: un-force the pairs whose removal lowers the objective least.

        All single removals of a round are scored in one batched forward pass (one row per forced pair);
        far above the budget a round drops several of the cheapest at once, near it one at a time."""
        search = self.search
        while search.forced_pairs > budget:
            pairs = [(l, t) for l, r in search.route.items() for t in range(search.span) if r[0, t, 0] >= 0]
            candidates = {l: r.expand(len(pairs), -1, -1).clone() for l, r in search.route.items()}
            for row, (layer, token) in enumerate(pairs):
                candidates[layer][row, token] = -1
            scores = search.score_full(candidates)
            drop = max(1, (len(pairs) - budget) // 4)
            cheapest = scores.topk(drop).indices.tolist()
            route = {l: r.clone() for l, r in search.route.items()}
            for row in cheapest:
                layer, token = pairs[row]
                route[layer][0, token] = -1
            search.replace(route, float(scores[cheapest[0]]) if drop == 1 else float(search.score_full(route)[0]))
