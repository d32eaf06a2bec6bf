"""Router masking: replace the decisions of n routers, chosen by RoSais (top-n) or at random (control)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, field_validator

from moe_defense.attacks.base import Attack, AttackConfig, AttackContext, AttackResult, register_attack
from moe_defense.attacks.rosais import RosaisConfig, shared_rosais
from moe_defense.data.prompts import Prompt
from moe_defense.models.loading import LoadedModel
from moe_defense.routing import Intervention, RouterMask, RouterMaskMode


class RouterMaskConfig(AttackConfig):
    """Mask n routers: their choice is replaced by a random top-k subset (the published attack)."""

    n: int | Literal["all"] = Field(
        1, description="how many routers are masked (all: every router, i.e. random routes)"
    )
    selection: Literal["rosais", "random"] = Field(
        "rosais", description="top-n by RoSais, or n random routers (control)"
    )
    layers: list[int] | None = Field(None, description="explicit routers to mask (overrides selection)")
    mode: RouterMaskMode = Field("random-k", description="how a masked router chooses (see routing.RouterMask)")
    rosais: RosaisConfig = Field(default_factory=RosaisConfig, description="RoSais settings for selection=rosais")
    seed: int = Field(0, description="seed of the random subsets and of the random router draw")

    @field_validator("n")
    @classmethod
    def _positive(cls, n: int | str) -> int | str:
        if isinstance(n, int) and n < 1:
            raise ValueError(f"n must be >= 1 or 'all', got {n}")
        return n


@register_attack
class RouterMaskAttack(Attack[RouterMaskConfig]):
    """Mask the decisions of the n most safety-important (or n random) routers on prompt tokens."""

    name = "router-mask"
    config_class = RouterMaskConfig

    def label(self) -> str:
        if self.config.layers is not None:
            return f"router-mask-layers{'-'.join(map(str, self.config.layers))}"
        if self.config.n == "all":
            return "random-routes"
        return f"router-mask-{'top' if self.config.selection == 'rosais' else 'random'}{self.config.n}"

    def choose_layers(self, loaded: LoadedModel, prompts: Sequence[Prompt], context: AttackContext) -> list[int]:
        layers = loaded.adapter.moe_layers()
        if self.config.layers is not None:
            return [loaded.adapter.layer_of(layer) for layer in self.config.layers]
        if self.config.n == "all":
            return layers
        n = min(self.config.n, len(layers))
        if self.config.selection == "random":
            return sorted(random.Random(self.config.seed).sample(layers, n))
        importance = shared_rosais(
            loaded, prompts, self.config.rosais, context.shared.router_importance, progress=context.info.is_main
        )
        return sorted(importance.ranking()[:n])

    def run(self, loaded: LoadedModel, prompts: Sequence[Prompt], context: AttackContext) -> list[AttackResult]:
        layers = self.choose_layers(loaded, prompts, context)
        return [AttackResult(prompt_id=p.id, artifact=None, extra={"masked_layers": layers}) for p in prompts]

    def interventions(self, loaded: LoadedModel, results: Sequence[AttackResult]) -> list[Intervention]:
        layers = sorted({layer for result in results for layer in result.extra["masked_layers"]})
        return [RouterMask(layers, mode=self.config.mode, seed=self.config.seed)]

    def summarize(self, results: Sequence[AttackResult]) -> dict[str, Any]:
        return {"masked_layers": results[0].extra["masked_layers"]} if results else {}
