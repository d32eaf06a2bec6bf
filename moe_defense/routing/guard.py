"""Route guards: an inference-time defense that reviews the experts a token is about to execute.

A guard runs after every intervention (an attacker's included) and reverts a token's routing to the
router's own choice when the executed expert set is one it bans (route disabling: expert
combinations over-represented in unsafe routes) or lies far below the router's own preference
(route consistency: an executed expert outside the router's own top-`max_rank`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch

from moe_defense.errors import RoutingError
from moe_defense.models.loading import LoadedModel
from moe_defense.routing.controller import controller_for


class RouteGuard:
    """Banned expert sets per MoE layer, and/or a rank limit on executed experts."""

    def __init__(self, banned: Mapping[int, Sequence[Sequence[int]]] | None = None, max_rank: int | None = None) -> None:
        self.banned = {int(layer): torch.tensor(sorted(sorted(s) for s in sets), dtype=torch.long) for layer, sets in (banned or {}).items() if sets}
        self.max_rank = max_rank

    def bind(self, top_k: int, num_experts: int, layers: Sequence[int]) -> None:
        for layer, sets in self.banned.items():
            if layer not in layers:
                raise RoutingError(f"route guard bans expert sets at layer {layer}, which is not a MoE layer ({list(layers)}).")
            if sets.shape[1] != top_k or int(sets.max()) >= num_experts or int(sets.min()) < 0:
                raise RoutingError(f"route guard: banned sets at layer {layer} must hold {top_k} experts in [0, {num_experts}).")
        if self.max_rank is not None and not top_k <= self.max_rank <= num_experts:
            raise RoutingError(f"route guard: max_rank {self.max_rank} must lie in [top_k={top_k}, {num_experts}].")

    def revert(self, layer: int, logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
        """(N,) True for tokens whose executed set (indices, (N, k)) the guard rejects."""
        reject = None
        sets = self.banned.get(layer)
        if sets is not None:
            executed = indices.sort(dim=-1).values
            reject = (executed[:, None, :] == sets.to(indices.device)[None]).all(-1).any(-1)
        if self.max_rank is not None:
            allowed = logits.topk(self.max_rank, dim=-1).indices
            outside = ~(indices[:, :, None] == allowed[:, None, :]).any(-1).all(-1)
            reject = outside if reject is None else reject | outside
        return reject


@contextmanager
def guarded(loaded: LoadedModel, guard: RouteGuard) -> Iterator[None]:
    """Keep `guard` active on every forward pass of `loaded` inside the block (under any intervention)."""
    adapter = loaded.adapter
    guard.bind(adapter.top_k, adapter.num_experts, adapter.moe_layers())
    with controller_for(loaded.model, adapter).attach("guard", guard):
        yield
