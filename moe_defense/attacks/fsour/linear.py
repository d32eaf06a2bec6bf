"""Gradient mode's first-order model of the objective around the current route, from one relaxed gradient.

Through a sparse top-k router the gradient w.r.t. an unchosen expert's logit is zero (it is not run), so the
gradient pass relaxes the current route: every expert runs, those outside the route's set at a pair with their
logit lowered by a margin, so the pass computes the route's own output (to ~e^-10) while
d objective / d logit_j = w_j (s_j - s_bar), where s_j = <d objective / d MoE output, expert j's output> is the
first-order gain of mixing expert j in. The value of any expert set S at a pair is then sum_j w_S(j) s_j with w_S
the weights the route would give S (the architecture's own rule, or uniform), so one forward + backward ranks
every (token, layer) pair by its best set's predicted gain. The relaxed pass runs every expert; `SearchCost`
counts it at its FLOP share (`RouteScorer.dense_cost`). Not for fixed-top-k routers (PhiMoE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from moe_defense.errors import RoutingError
from moe_defense.routing import Intervention, LayerRoute, StepInfo, TopK

if TYPE_CHECKING:
    from moe_defense.attacks.fsour.search import RouteSearch
    from moe_defense.models.adapters.base import RouterAdapter


class RelaxedRoute(Intervention):
    """The current route with every expert running (beside `TopK(num_experts)`): at each position the experts of
    the route's set keep their logits and all others get -`margin`, so the pass computes the route's own output
    (their weights are ~e^-margin) while d objective / d logit of an outside expert j is nonzero: it is
    w_j (s_j - s_bar), with s_j the first-order gain of mixing in expert j's output. Forced pairs keep their forced
    set (levelled for uniform weights); the others the router's top-k logits."""

    margin = 10.0

    def __init__(self, route: dict[int, torch.Tensor], top_k: int, uniform: bool) -> None:
        super().__init__("all")
        self.route, self.k, self.uniform = route, top_k, uniform

    def logit_delta(self, layer: int, step: StepInfo, logits: torch.Tensor) -> torch.Tensor | None:
        own = logits.detach().float().reshape(step.batch_size, step.length, -1)
        keep = own.topk(self.k, dim=-1).indices
        forced = self.route.get(layer)
        level = torch.zeros_like(own)
        if forced is not None:
            index = step.token_index.clamp(min=0).clamp(max=forced.shape[1] - 1)
            at = forced[0, index]  # (B, T, k)
            pinned = (at[..., 0] >= 0) & (step.token_index >= 0) & (step.token_index < forced.shape[1])
            keep = torch.where(pinned.unsqueeze(-1), at, keep)
            if self.uniform:
                level = torch.where(pinned.unsqueeze(-1), -own, level)
        delta = torch.full_like(own, -self.margin).scatter(-1, keep, 0.0)
        return delta + level


@dataclass(frozen=True)
class Linearised:
    """First-order model of the objective around the current route, per (layer, span position).

    `gain[l, t]` / `best[l, t]`: the predicted change and the expert set of the best re-route of the pair;
    `unforce[l, t]`: the predicted change when a forced pair goes back to the router's own choice."""

    gain: torch.Tensor  # (L, T)
    best: torch.Tensor  # (L, T, k)
    unforce: torch.Tensor  # (L, T)


def linearise(search: RouteSearch) -> Linearised:
    """One relaxed forward + backward (every expert runs, the route's own output is kept) gives, for every
    (layer, token, expert), s_j: the first-order gain of mixing expert j in; every pair's best set, its predicted
    gain and the cost of unforcing it follow from this one gradient."""
    adapter, experts, k = search.adapter, search.adapter.num_experts, search.adapter.top_k
    if adapter.fixed_top_k:
        raise RoutingError(
            f"gradient mode runs every expert per token to linearise the route; {adapter.model_type}'s "
            f"{adapter.scoring} routing is defined for top-{k} only. Use mode fast or reference."
        )
    uniform = search.config.forced_weights == "uniform"
    relaxed = [TopK(experts), RelaxedRoute(search.route, k, uniform)]
    gradient, trace = search.scorer.logit_gradient(
        relaxed, search.layers, search.span, keep_logits=True, weight=search.scorer.dense_cost
    )
    routers = adapter.routers(search.loaded.model)
    pairs = [
        _layer_model(adapter, routers[layer], trace[layer], gradient[li], search.route[layer][0], uniform)
        for li, layer in enumerate(search.layers)
    ]
    gains, bests, unforces = zip(*pairs, strict=True)
    return Linearised(torch.stack(gains), torch.stack(bests), torch.stack(unforces))


def _layer_model(
    adapter: RouterAdapter,
    router: torch.nn.Module,
    route: LayerRoute,
    gradient: torch.Tensor,
    forced: torch.Tensor,
    uniform: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's (gain, best set, unforce) per span position, from its relaxed gradient (T, E) and trace."""
    span, experts, k = forced.shape[0], adapter.num_experts, adapter.top_k
    own = route.logits[0, :span]  # type: ignore[index]
    weights = torch.zeros(span, experts).scatter(-1, route.indices[0, :span], route.weights[0, :span])
    gain_of = gradient / weights.clamp(min=1e-30)  # s_j - s_bar
    natural = own.topk(k, dim=-1).indices
    current = torch.where(forced[:, :1] >= 0, forced, natural)
    candidates = candidate_sets(adapter, gain_of, own)
    values = set_values(adapter, router, own, gain_of, candidates, uniform)
    back = set_values(adapter, router, own, gain_of, natural[:, None], False)[:, 0]
    # forced pairs mix as the route mixes them; the others as the router does
    mixed = set_values(adapter, router, own, gain_of, current[:, None], uniform)[:, 0]
    now = torch.where(forced[:, 0] >= 0, mixed, back)
    same = (candidates.sort(-1).values == current.sort(-1).values[:, None]).all(-1)
    values = values.masked_fill(same, -math.inf)
    best = values.argmax(-1)
    return values.gather(-1, best[:, None])[:, 0] - now, candidates[torch.arange(span), best], back - now


def candidate_sets(adapter: RouterAdapter, gain_of: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """(T, S, k) expert sets worth valuing per position: all of them when there are few (the organism's 28),
    else the top-k of the gain blended with the router's preference at a few mixes, and single swaps of the
    router's own set toward the best experts."""
    experts, k, span = adapter.num_experts, adapter.top_k, own.shape[0]
    if math.comb(experts, k) <= 256:
        every = torch.combinations(torch.arange(experts), k)
        return every.expand(span, -1, -1)
    scale = gain_of.std(-1, keepdim=True) / own.std(-1, keepdim=True).clamp(min=1e-6)
    blends = [(gain_of + a * scale * own).topk(k, dim=-1).indices for a in (0.0, 0.5, 1.0, 2.0, 4.0)]
    natural = own.topk(k, dim=-1).indices
    outside = gain_of.scatter(-1, natural, -math.inf).topk(k, dim=-1).indices  # best experts not in the set
    weakest = gain_of.gather(-1, natural).argsort(-1)  # the set's members, least useful first
    swaps = []
    for rank in range(min(k, 3)):
        for member in range(min(k, 3)):
            swap = natural.clone()
            swap.scatter_(-1, weakest[:, member : member + 1], outside[:, rank : rank + 1])
            swaps.append(swap)
    return torch.stack(blends + swaps, dim=1)


def set_values(
    adapter: RouterAdapter,
    router: torch.nn.Module,
    own: torch.Tensor,
    gain_of: torch.Tensor,
    sets: torch.Tensor,
    uniform: bool,
) -> torch.Tensor:
    """(T, S) linearised value sum_j w_S(j) s_j of each expert set, weighted as the route would weight it."""
    positions, count, k = sets.shape
    if uniform:
        return gain_of.gather(-1, sets.reshape(positions, -1)).reshape(positions, count, k).mean(-1)
    allowed = torch.zeros(positions, count, own.shape[-1], dtype=torch.bool).scatter(-1, sets, True)
    logits = own[:, None].expand(-1, count, -1).reshape(positions * count, -1)
    weights, indices = adapter.select(router, logits, ~allowed.reshape(positions * count, -1), torch.float32)
    chosen = gain_of[:, None].expand(-1, count, -1).reshape(positions * count, -1).gather(-1, indices)
    return (weights.float() * chosen).sum(-1).reshape(positions, count)
