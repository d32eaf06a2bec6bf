"""Safety-aware route disabling: ban the expert combinations that unsafe routes over-use.

Fitted from route artifacts found on TRAINING prompts: per MoE layer, the expert sets that unsafe
routes force most often relative to how often the model itself picks them on benign prompts. At
inference a `RouteGuard` reverts any token whose executed set is banned to the router's own choice,
so natural routing (and so benign behaviour) is untouched unless the router itself picks a banned
set, which the guard lets through. Written as `route_guard.json`; a runtime hook, not weights: a
router bias can only block single experts, not combinations.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import Field

from moe_defense.attacks.artifacts import RouteArtifact
from moe_defense.attacks.fsour import FsourConfig
from moe_defense.data.prompts import Prompt
from moe_defense.defenses.base import Defended, Defense, DefenseConfig, DefenseContext, register_defense
from moe_defense.defenses.routes import search_routes
from moe_defense.errors import ConfigError, RoutingError
from moe_defense.models.loading import LoadedModel
from moe_defense.routing import record_routing
from moe_defense.runner.generation import encode_prompts
from moe_defense.runner.rundir import atomic_write

ROUTE_GUARD = "route_guard.json"  # the fitted guard (banned expert sets per layer), in the run directory
BENIGN_FIT_PROMPTS = 64  # benign training prompts whose own routing the unsafe sets are contrasted with


class RouteGuard:
    """Banned expert sets per MoE layer, and/or a rank limit on executed experts (a `RouteReviewer`)."""

    def __init__(
        self, banned: Mapping[int, Sequence[Sequence[int]]] | None = None, max_rank: int | None = None
    ) -> None:
        self.banned = {
            int(layer): torch.tensor(sorted(sorted(s) for s in sets), dtype=torch.long)
            for layer, sets in (banned or {}).items()
            if sets
        }
        self.max_rank = max_rank

    def bind(self, top_k: int, num_experts: int, layers: Sequence[int]) -> None:
        for layer, sets in self.banned.items():
            if layer not in layers:
                raise RoutingError(
                    f"route guard bans expert sets at layer {layer}, which is not a MoE layer ({list(layers)})."
                )
            if sets.shape[1] != top_k or int(sets.max()) >= num_experts or int(sets.min()) < 0:
                raise RoutingError(
                    f"route guard: banned sets at layer {layer} must hold {top_k} experts in [0, {num_experts})."
                )
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


class RouteDisablingConfig(DefenseConfig):
    """How many expert sets to ban per layer, and the optional route-consistency limit."""

    sets_per_layer: int = Field(4, ge=0, description="expert combinations banned per MoE layer")
    min_count: int = Field(2, ge=1, description="a set must appear in at least this many unsafe (layer, token) pairs")
    max_rank: int | None = Field(
        None, ge=1, description="also revert executed experts outside the router's own top-max_rank (route consistency)"
    )
    fit_prompts: int = Field(16, ge=1, description="harmful training prompts searched for unsafe routes to fit on")
    route_search: FsourConfig | None = Field(
        None, description="F-SOUR settings of the fitting search (None: the suite's own, single search)"
    )


def benign_set_counts(loaded: LoadedModel, prompts: Sequence[Prompt]) -> dict[int, Counter]:
    """How often the router itself picks each expert set, per layer, on benign prompt tokens."""
    counts: dict[int, Counter] = {layer: Counter() for layer in loaded.adapter.moe_layers()}
    for row in encode_prompts(loaded, [p.text for p in prompts], None):
        with torch.no_grad(), record_routing(loaded, keep_logits=False) as recorder:
            loaded.model(input_ids=torch.tensor(row, device=loaded.device)[None])
        for layer, route in recorder.trace().items():
            for experts in route.indices[route.valid].sort(dim=-1).values.tolist():
                counts[layer][tuple(experts)] += 1
    return counts


def fit_route_guard(
    artifacts: Sequence[RouteArtifact], benign: dict[int, Counter], config: RouteDisablingConfig
) -> tuple[RouteGuard, dict[str, Any]]:
    """The guard banning, per layer, the sets with the highest unsafe-to-benign frequency ratio."""
    unsafe: dict[int, Counter] = {}
    for artifact in artifacts:
        for layer, tokens in artifact.forced.items():
            for experts in tokens.values():
                unsafe.setdefault(layer, Counter())[tuple(sorted(experts))] += 1
    banned: dict[int, list[list[int]]] = {}
    for layer, counter in unsafe.items():
        total_unsafe = sum(counter.values())
        total_benign = sum(benign.get(layer, Counter()).values()) or 1
        ratio = {
            s: (n / total_unsafe) / (benign.get(layer, Counter())[s] / total_benign + 1e-3)
            for s, n in counter.items()
            if n >= config.min_count
        }
        chosen = sorted(ratio, key=ratio.get, reverse=True)[: config.sets_per_layer]
        if chosen:
            banned[layer] = [list(s) for s in chosen]
    facts = {
        "banned": {str(l): sets for l, sets in banned.items()},
        "max_rank": config.max_rank,
        "artifacts": len(artifacts),
    }
    return RouteGuard(banned, config.max_rank), facts


@register_defense
class RouteDisabling(Defense[RouteDisablingConfig]):
    """Inference-time route guard fitted on unsafe routes of TRAINING prompts, searched on the model as it is."""

    name = "route-disabling"
    config_class = RouteDisablingConfig

    def apply(self, loaded: LoadedModel, context: DefenseContext) -> Defended:
        base = self.config.route_search or context.route_search
        if base is None:
            raise ConfigError(
                "route-disabling fits on F-SOUR routes: set its route_search, or sweep fsour budgets in the suite."
            )
        search = base.model_copy(update={"budget": context.budget, "restarts": 0, "judge": None, "seed": context.seed})
        artifacts = search_routes(
            loaded, context.harmful_train[: self.config.fit_prompts], search, progress=context.info.is_main
        )
        guard, facts = fit_route_guard(
            artifacts, benign_set_counts(loaded, context.benign_train[:BENIGN_FIT_PROMPTS]), self.config
        )
        if context.info.is_main:
            atomic_write(context.out / ROUTE_GUARD, json.dumps(facts, indent=2) + "\n")
        return Defended(loaded, {"route_guard": facts}, reviewer=guard)
