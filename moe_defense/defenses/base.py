"""Defense contract: a defense takes the original model and returns it defended.

A training defense changes weights (and writes its checkpoint files into the run directory); an
inference-time defense returns a route reviewer that stays attached while the defended model is
attacked. Defenses are addressed as `{name, args}` in recipes and grid rows, registered by name,
and discovered from this package like attacks and judges.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from moe_defense.attacks.fsour import FsourConfig
from moe_defense.data.prompts import Prompt
from moe_defense.judges import Judge
from moe_defense.models.loading import LoadedModel, LoadOptions
from moe_defense.registry import ComponentSpec, Registry
from moe_defense.routing.guard import RouteReviewer
from moe_defense.runner.generation import GenerationConfig
from moe_defense.runner.process import ProcessInfo


class DefenseConfig(BaseModel):
    """Base of every defense config; `extra="forbid"` turns recipe typos into errors."""

    model_config = ConfigDict(extra="forbid")


C = TypeVar("C", bound=BaseModel)


@dataclass
class DefenseContext:
    """What a defense may use: the run's training prompts, judge, budgets and its directory.

    `budget` is the forced-pair budget of the unsafe routes to defend against (the budget policy's
    training budget); `route_search` the suite's own F-SOUR settings; `out` the run directory, where a
    defense writes its files and from which `resume` continues.
    """

    harmful_train: Sequence[Prompt]
    benign_train: Sequence[Prompt]
    judge: Judge
    generation: GenerationConfig
    budget: int | None
    route_search: FsourConfig | None
    seed: int
    out: Path
    info: ProcessInfo
    load_options: LoadOptions = field(default_factory=LoadOptions)
    resume: bool = False
    deepspeed: str | None = None
    report_to: list[str] = field(default_factory=list)  # experiment trackers a training defense logs to


@dataclass
class Defended:
    """A defense's outcome: the (possibly retrained) model, facts for the summary, an optional reviewer."""

    loaded: LoadedModel
    facts: dict[str, Any] = field(default_factory=dict)
    reviewer: RouteReviewer | None = None


class Defense(ABC, Generic[C]):
    """Base class; subclasses declare `name`, `config_class` and `trains`, and implement `apply`.

    `trains`: the defense changes weights (at most one per recipe, so the tensor diff and the exported
    patch belong to it).
    """

    name: ClassVar[str]
    config_class: ClassVar[type[BaseModel]] = DefenseConfig
    trains: ClassVar[bool] = False

    def __init__(self, config: C | None = None) -> None:
        self.config: C = config or self.config_class()  # type: ignore[assignment]

    @abstractmethod
    def apply(self, loaded: LoadedModel, context: DefenseContext) -> Defended:
        """Defend `loaded` (a training defense may train it in place or return a reloaded model)."""

    @property
    def trainable(self) -> str:
        """The tensors this defense trains (`none` for an inference-time defense)."""
        return "none"


DEFENSES: Registry[type[Defense]] = Registry("defense", hint="Add one in moe_defense/defenses/ with @register_defense.")


def register_defense(cls: type[Defense]) -> type[Defense]:
    return DEFENSES.register(cls.name)(cls)


class DefenseSpec(ComponentSpec):
    """A defense by registry name with its config's fields."""

    @classmethod
    def registry(cls) -> Registry:
        return DEFENSES

    def build(self) -> Defense:
        return self.component_class()(self.config())


def check_composition(specs: Sequence[DefenseSpec]) -> None:
    """At most one training defense, and it comes first (later defenses act on the trained model)."""
    training = [i for i, spec in enumerate(specs) if spec.component_class().trains]
    if len(training) > 1:
        raise ValueError(f"at most one training defense per run (got {[specs[i].name for i in training]})")
    if training and training[0] != 0:
        raise ValueError(
            f"the training defense {specs[training[0]].name!r} must come first: later defenses act on the trained model"
        )


@register_defense
class NoDefense(Defense[DefenseConfig]):
    """The baseline: the model as it is (its "hardened" phase re-attacks the original model)."""

    name = "none"

    def apply(self, loaded: LoadedModel, context: DefenseContext) -> Defended:
        return Defended(loaded)
