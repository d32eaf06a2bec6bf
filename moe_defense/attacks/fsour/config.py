"""F-SOUR's config, and the uncapped routes a budget sweep shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from moe_defense.attacks.base import AttackConfig
from moe_defense.judges.factory import JudgeSpec

if TYPE_CHECKING:
    from moe_defense.attacks.fsour.linear import Linearised


@dataclass
class UncappedRoute:
    """An uncapped search's route and objective, and gradient mode's first-order model around it once a prune
    took it: every budget of a sweep is pruned from this route, starting from this gradient."""

    route: dict[int, torch.Tensor]
    value: float
    linearised: Linearised | None = None


# (mode, seed, force_decode, forced_weights, layers, token ids) -> the uncapped route: a budget sweep prunes the
# same uncapped route to every budget instead of searching it again (valid for one model only)
UncappedRoutes = dict[tuple, UncappedRoute]


class FsourConfig(AttackConfig):
    """Token-layer-wise stochastic unsafe-route search (F-SOUR); budget knobs are explicit."""

    mode: Literal["fast", "reference", "gradient"] = Field(
        "fast", description="fast (default), the released reference search, or the gradient-guided route search"
    )
    candidates: int = Field(10, ge=1, description="random top-k subsets tried per (token, layer) pair (N)")
    restarts: int = Field(5, ge=0, description="extra searches with a new seed when the judge says the route failed")
    success_prob: float = Field(0.8, gt=0, le=1, description="stop a search once P(target) reaches this")
    budget: int | None = Field(None, ge=1, description="max forced (token, layer) pairs; None = no cap")
    layers: list[int] | None = Field(None, description="MoE layers the attacker may force; None = all")
    force_decode: bool = Field(False, description="also force routes at answer positions (searched on the target)")
    target_suffix: str = Field(
        "",
        description="appended to every prompt's target (e.g. ' : step one ,'): with force_decode the route also covers "
        "the answer positions after the affirmative opening, where a model could still recover into a refusal",
    )
    forced_weights: Literal["router", "uniform"] = Field(
        "router",
        description="who mixes the forced experts: the router (the published attack) or uniform weights (an "
        "attacker who also sets the mixing weights; measures a defense's reliance on them)",
    )
    pairs_per_round: int = Field(6, ge=1, description="fast mode: most promising pairs evaluated per round")
    max_rows: int = Field(256, ge=1, description="most candidate routes scored in one forward (memory cap)")
    budget_strategy: Literal["greedy", "prune", "best"] = Field(
        "best",
        description="fast and gradient modes under a budget: greedy adds pairs within the budget; prune searches "
        "without a cap, then drops the pairs whose removal costs the objective least until the budget holds; best "
        "runs both, keeps the higher",
    )
    sweeps: int = Field(
        1, ge=1, description="fast mode: passes over the pairs while the last one improved (reference: 1)"
    )
    rounds: int = Field(3, ge=1, description="gradient mode: most linearised steps (one gradient each) per search")
    judge: JudgeSpec | None = Field(
        None, description="judge in the loop for restarts, {name, args} or a name (None: P(target) decides)"
    )
    seed: int = Field(0, description="seed of the first search; restart r uses seed + r")
