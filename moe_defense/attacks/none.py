"""`none`: no attack, the unattacked baseline measured through the same path as every attack."""

from __future__ import annotations

from collections.abc import Sequence

from moe_defense.attacks.base import Attack, AttackConfig, AttackContext, AttackResult, register_attack
from moe_defense.data.prompts import Prompt
from moe_defense.models.loading import LoadedModel
from moe_defense.routing import Intervention


@register_attack
class NoAttack(Attack[AttackConfig]):
    """The model's own routing: the refusal baseline every attack is compared with."""

    name = "none"

    def run(self, loaded: LoadedModel, prompts: Sequence[Prompt], context: AttackContext) -> list[AttackResult]:
        return [AttackResult(prompt_id=p.id, artifact=None) for p in prompts]

    def interventions(self, loaded: LoadedModel, results: Sequence[AttackResult]) -> list[Intervention]:
        return []
