"""Attack contract: an attack turns prompts into routing interventions (and route artifacts).

Attacks never generate or judge by themselves except where the published algorithm does (F-SOUR
judges its restarts); the runner generates and judges with the interventions an attack returns, so
every attack is measured the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from moe_defense.attacks.artifacts import RouteArtifact, interventions_for
from moe_defense.data.prompts import Prompt
from moe_defense.models.loading import LoadedModel
from moe_defense.registry import Registry
from moe_defense.routing import Intervention


class AttackConfig(BaseModel):
    """Base of every attack config; `extra="forbid"` turns recipe typos into errors."""

    model_config = ConfigDict(extra="forbid")


C = TypeVar("C", bound=AttackConfig)


@dataclass
class AttackResult:
    """What an attack found for one prompt: its route (if any) and what it cost."""

    prompt_id: str
    artifact: RouteArtifact | None
    response: str | None = None  # set when the attack generated (judge-in-the-loop restarts)
    extra: dict[str, Any] = field(default_factory=dict)


class Attack(ABC, Generic[C]):
    """Base class; subclasses declare `name` and `config_class`, and implement `run`."""

    name: ClassVar[str]
    config_class: ClassVar[type[AttackConfig]] = AttackConfig

    def __init__(self, config: C | None = None) -> None:
        self.config: C = config or self.config_class()  # type: ignore[assignment]

    @abstractmethod
    def run(self, loaded: LoadedModel, prompts: Sequence[Prompt]) -> list[AttackResult]:
        """One result per prompt, in order."""

    def interventions(self, loaded: LoadedModel, results: Sequence[AttackResult]) -> list[Intervention]:
        """The batched interventions that replay `results` (one row per result) while generating."""
        return interventions_for([r.artifact for r in results], loaded.adapter.top_k, loaded.adapter.num_experts)

    def budget(self) -> dict[str, Any]:
        """The budget knobs recorded beside every ASR this attack produces."""
        return self.config.model_dump()


ATTACKS: Registry[type[Attack]] = Registry("attack", hint="Add one in moe_defense/attacks/ with @register_attack.")


def register_attack(cls: type[Attack]) -> type[Attack]:
    return ATTACKS.register(cls.name)(cls)
