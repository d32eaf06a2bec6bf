"""A third-party attack in one file, as a user would write it: nothing else in moe-defense is edited."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from moe_defense.attacks import Attack, AttackConfig, AttackContext, AttackResult, register_attack
from moe_defense.data import Prompt
from moe_defense.models import LoadedModel
from moe_defense.routing import Intervention, RouterMask


class BlockFirstRouterConfig(AttackConfig):
    """Mask the first MoE router with a random top-k choice of the given seed."""

    seed: int = Field(0, description="seed of the random choice")
    shots: int = Field(1, ge=1, description="a knob a sweep can vary")


@register_attack
class BlockFirstRouter(Attack[BlockFirstRouterConfig]):
    """Replace the first router's choice: a global attack, no search."""

    name = "test-block-first-router"
    config_class = BlockFirstRouterConfig

    def run(self, loaded: LoadedModel, prompts: Sequence[Prompt], context: AttackContext) -> list[AttackResult]:
        return [AttackResult(prompt_id=p.id, artifact=None, extra={"shots": self.config.shots}) for p in prompts]

    def interventions(self, loaded: LoadedModel, results: Sequence[AttackResult]) -> list[Intervention]:
        return [RouterMask(loaded.adapter.moe_layers()[:1], mode="random-k", seed=self.config.seed)]
