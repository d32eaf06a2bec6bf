"""Safety-aware route disabling: ban the expert combinations that unsafe routes over-use.

Fitted from route artifacts found on TRAINING prompts: per MoE layer, the expert sets that unsafe
routes force most often relative to how often the model itself picks them on benign prompts. At
inference a `RouteGuard` reverts any token whose executed set is banned to the router's own choice,
so natural routing (and so benign behaviour) is untouched unless the router itself picks a banned
set, which the guard lets through. Written as `route_guard.json`; a runtime hook, not weights: a
router bias can only block single experts, not combinations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from moe_defense.attacks.artifacts import RouteArtifact
from moe_defense.data.prompts import Prompt
from moe_defense.models.loading import LoadedModel
from moe_defense.routing import record_routing
from moe_defense.routing.guard import RouteGuard
from moe_defense.runner.generation import encode_prompts


class RouteDisablingConfig(BaseModel):
    """How many expert sets to ban per layer, and the optional route-consistency limit."""

    model_config = ConfigDict(extra="forbid")

    sets_per_layer: int = Field(4, ge=0, description="expert combinations banned per MoE layer")
    min_count: int = Field(2, ge=1, description="a set must appear in at least this many unsafe (layer, token) pairs")
    max_rank: int | None = Field(None, ge=1, description="also revert executed experts outside the router's own top-max_rank (route consistency)")
    fit_prompts: int = Field(16, ge=1, description="harmful training prompts searched for unsafe routes to fit on")


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
        ratio = {s: (n / total_unsafe) / (benign.get(layer, Counter())[s] / total_benign + 1e-3) for s, n in counter.items() if n >= config.min_count}
        chosen = sorted(ratio, key=ratio.get, reverse=True)[: config.sets_per_layer]
        if chosen:
            banned[layer] = [list(s) for s in chosen]
    facts = {"banned": {str(l): sets for l, sets in banned.items()}, "max_rank": config.max_rank, "artifacts": len(artifacts)}
    return RouteGuard(banned, config.max_rank), facts
