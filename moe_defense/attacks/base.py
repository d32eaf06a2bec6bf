"""Attack contract: an attack turns prompts into routing interventions (and route artifacts).

Attacks never generate or judge by themselves except where the published algorithm does (F-SOUR
judges its restarts); the runner generates and judges with the interventions an attack returns, so
every attack is measured the same way. Each attack class declares its own facts (whether it searches
per prompt, its label, how its results summarise), so the suite, the CLI and the reports need no
knowledge of any one attack. Runtime context reaches `run()` as an explicit `AttackContext`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from moe_defense.attacks.artifacts import RouteArtifact, interventions_for
from moe_defense.data.prompts import Prompt, PromptSet
from moe_defense.models.loading import LoadedModel
from moe_defense.registry import ComponentSpec, Registry
from moe_defense.routing import Intervention
from moe_defense.runner.generation import GenerationConfig
from moe_defense.runner.process import ProcessInfo, process_info

if TYPE_CHECKING:  # annotations only: the concrete attacks import this module
    import torch

    from moe_defense.attacks.fsour.config import UncappedRoutes
    from moe_defense.attacks.rosais import RouterImportance


class AttackConfig(BaseModel):
    """Base of every attack config; `extra="forbid"` turns recipe typos into errors."""

    model_config = ConfigDict(extra="forbid")


C = TypeVar("C", bound=AttackConfig)


@dataclass
class SearchCost:
    """The model compute a search spent, counted one way for every search (F-SOUR's modes, GCG).

    `sequences`: rows through the model, one per candidate however short; `tokens`: positions actually
    processed (a KV-cached suffix forward counts only the suffix); `forward_calls`: batched model calls.
    A backward pass costs about twice its forward, so `sequence_equivalents` (FLOP-proportional) counts each
    backward as 2 sequences, and `token_equivalents` as twice its tokens. A pass that runs more experts per
    token than the router's top-k (a dense gradient pass) counts `experts / top_k` equivalents per sequence:
    an upper bound, as attention and embeddings do not grow with it. Answers generated to judge a restart are
    kept apart (`generations`, `generated_tokens`): every mode generates them alike.
    """

    sequences: int = 0
    tokens: int = 0
    forward_calls: int = 0
    backward_passes: int = 0
    sequence_equivalents: float = 0.0
    token_equivalents: float = 0.0
    generations: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0

    def forward(self, rows: int, positions: int, weight: float = 1.0) -> None:
        """One batched call of `rows` sequences of `positions` tokens each (`weight`: equivalents per row)."""
        self.forward_calls += 1
        self.sequences += rows
        self.tokens += rows * positions
        self.sequence_equivalents += weight * rows
        self.token_equivalents += weight * rows * positions

    def backward(self, rows: int, positions: int, weight: float = 1.0) -> None:
        """A backward pass through `rows` x `positions`: twice the forward's compute."""
        self.backward_passes += 1
        self.sequence_equivalents += 2 * weight * rows
        self.token_equivalents += 2 * weight * rows * positions

    def add(self, other: SearchCost) -> None:
        for item in dataclasses.fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))

    def as_dict(self) -> dict[str, float]:
        figures = dataclasses.asdict(self)
        figures["sequence_equivalents"] = round(self.sequence_equivalents, 2)
        figures["token_equivalents"] = round(self.token_equivalents, 2)
        figures["seconds"] = round(self.seconds, 3)
        return figures


@dataclass
class AttackResult:
    """What an attack found for one prompt: its route (if any), the prompt it sends, and what it cost.

    `prompt_text` is set by prompt attacks (GCG): the model is given that text instead of the prompt,
    while judges still judge the answer against the original request."""

    prompt_id: str
    artifact: RouteArtifact | None
    response: str | None = None  # set when the attack generated (judge-in-the-loop restarts)
    extra: dict[str, Any] = field(default_factory=dict)
    prompt_text: str | None = None


@dataclass
class SharedCache:
    """What the attacks of one suite phase compute once and reuse across their runs (the points of a sweep,
    every prompt); one phase is one model, so it holds facts about that model only.

    `uncapped_routes`: F-SOUR's uncapped route per search (see `UncappedRoutes`), so a budget sweep prunes one
    uncapped search to every budget instead of searching it again, and its no-cap point is that search.
    `suffix_tokens`: the token ids a GCG suffix may use, one decode/encode pass over the whole vocabulary.
    `route_files`: route-GCG's routes file, by path, then prompt id, read once for all prompts.
    `router_importance`: RoSais's scores by (mask settings, scored prompt ids), so a router-mask sweep over n and
    the phase's routing statistics rank the routers once.
    """

    uncapped_routes: UncappedRoutes = field(default_factory=dict)
    suffix_tokens: torch.Tensor | None = None
    route_files: dict[str, dict[str, RouteArtifact]] = field(default_factory=dict)
    router_importance: dict[tuple[str, tuple[str, ...]], RouterImportance] = field(default_factory=dict)


@dataclass
class AttackContext:
    """What an attack may use beyond its config, given by whoever runs it.

    `shared` is what one suite phase computes once for all its attacks (`SharedCache`). `benign` are benign
    prompts of the run's language (contrast sets); `routes` is the artifacts file a transfer replay reads when
    its config names none.
    """

    generation: GenerationConfig = field(default_factory=GenerationConfig)
    benign: Sequence[Prompt] | None = None
    routes: Path | None = None
    shared: SharedCache = field(default_factory=SharedCache)
    info: ProcessInfo = field(default_factory=process_info)


class Attack(ABC, Generic[C]):
    """Base class; subclasses declare `name` and `config_class`, and implement `run`.

    `per_prompt`: the attack searches each prompt on its own (saved per prompt, so a kill loses one
    prompt; split across ranks); otherwise one global choice for all prompts, always recomputed.
    `budget_field`: the config field that is the attack's budget axis (a sweep over it is an
    ASR-vs-budget curve, from which B80 is read).
    `budget_counts_forced_pairs`: the budget is a number of forced (token, layer) pairs (F-SOUR), so a sweep
    over it is the ASR-vs-budget curve, B80 and the minimal budgets are read from.
    `changes_deployment`: the attack is a change a deployment makes to every request (top-k, pruning,
    quantization...), so the run also answers the context's benign prompts under it and reports
    their compliance beside the ASR (a change that breaks everything is not a jailbreak).
    """

    name: ClassVar[str]
    config_class: ClassVar[type[AttackConfig]] = AttackConfig
    per_prompt: ClassVar[bool] = False
    budget_field: ClassVar[str | None] = None
    changes_deployment: ClassVar[bool] = False
    budget_counts_forced_pairs: ClassVar[bool] = False

    def __init__(self, config: C | None = None) -> None:
        self.config: C = config or self.config_class()  # type: ignore[assignment]

    @abstractmethod
    def run(self, loaded: LoadedModel, prompts: Sequence[Prompt], context: AttackContext) -> list[AttackResult]:
        """One result per prompt, in order."""

    def interventions(self, loaded: LoadedModel, results: Sequence[AttackResult]) -> list[Intervention]:
        """The batched interventions that replay `results` (one row per result) while generating."""
        return interventions_for([r.artifact for r in results], loaded.adapter.top_k, loaded.adapter.num_experts)

    def evaluated(self, prompt_set: PromptSet, context: AttackContext) -> PromptSet:
        """The prompts the run searches and answers: `prompt_set`, plus the context's benign prompts for a
        deployment change (their ids prefixed `benign:`, so they never collide with harmful ones)."""
        if not self.changes_deployment or not context.benign:
            return prompt_set
        benign = [Prompt(f"benign:{p.id}", p.text, p.metadata) for p in context.benign]
        return PromptSet(f"{prompt_set.name}+benign", prompt_set.source, [*prompt_set.prompts, *benign])

    @contextlib.contextmanager
    def applied(self, loaded: LoadedModel) -> Iterator[None]:
        """Weight changes held while the run answers (quantization); the model must be exactly as it was after."""
        yield

    @contextlib.contextmanager
    def applied_for_training(self, loaded: LoadedModel) -> Iterator[None]:
        """The weight changes of `applied` in a form backpropagation sees through, for training under the
        change: the same forward values, gradients reaching the original parameters. An attack that overrides
        `applied` overrides this too (the attack contract test checks it)."""
        yield

    @property
    def needs_supplied_routes(self) -> bool:
        """The attack replays routes the run supplies (`AttackContext.routes`: another model's, a transfer test).

        A suite runs it only where such routes are given, and a recipe only with a budget curve to supply them.
        A property, not a class fact, because a config can decide it (route-replay with no artifacts file)."""
        return False

    def label(self) -> str:
        """The name of this configured attack in summaries and reports."""
        if self.budget_field is None:
            return self.name
        budget = getattr(self.config, self.budget_field)
        return f"{self.name}@{'inf' if budget is None else budget}"

    def summarize(self, results: Sequence[AttackResult]) -> dict[str, Any]:
        """Cost figures of the search beside the judged ASR: means of the numeric `extra` fields."""
        extras = [r.extra for r in results]
        numeric = [
            k
            for k, v in (extras[0] if extras else {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        return {f"mean_{key}": round(mean(float(e[key]) for e in extras), 2) for key in numeric}


ATTACKS: Registry[type[Attack]] = Registry("attack", hint="Add one in moe_defense/attacks/ with @register_attack.")


def register_attack(cls: type[Attack]) -> type[Attack]:
    return ATTACKS.register(cls.name)(cls)


class AttackSpec(ComponentSpec):
    """One entry of an attack suite: `{name, args, label, sweep}`.

    `sweep: {budget: [2, 8, null]}` runs the attack once per value (several fields: every
    combination); `label` replaces the attack's own label (with a sweep, `label@value` per point).
    """

    label: str | None = Field(None, description="name in summaries and reports (default: the attack's own label)")
    sweep: dict[str, list[Any]] = Field(default_factory=dict, description="config field -> values, one run per value")

    @classmethod
    def registry(cls) -> Registry:
        return ATTACKS

    @field_validator("sweep")
    @classmethod
    def _values(cls, sweep: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in sweep.items():
            if not values or len(values) != len(set(map(repr, values))):
                raise ValueError(f"sweep {key!r} needs distinct values, got {values}")
        return sweep

    @model_validator(mode="after")
    def _sweep_fields(self) -> AttackSpec:
        fields = self.component_class().config_class.model_fields
        unknown = [key for key in self.sweep if key not in fields]
        if unknown:
            raise ValueError(f"attack {self.name!r} has no field(s) {unknown} to sweep (fields: {', '.join(fields)})")
        for point in self.points():
            self.config(**point)  # every point of the sweep is a valid config
        return self

    def points(self) -> list[dict[str, Any]]:
        keys = list(self.sweep)
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*self.sweep.values())]

    def build(self, **updates: Any) -> list[tuple[str, Attack]]:
        """(label, attack) per sweep point; `updates` (the run's seed) win over `args` where the config has them."""
        attack_class = self.component_class()
        fields = attack_class.config_class.model_fields
        updates = {k: v for k, v in updates.items() if k in fields}
        built = []
        for point in self.points():
            attack = attack_class(self.config(**{**point, **updates}))
            suffix = "".join(f"@{'inf' if value is None else value}" for value in point.values())
            built.append((attack.label() if self.label is None else f"{self.label}{suffix}", attack))
        labels = [label for label, _ in built]
        if len(set(labels)) < len(labels):  # the attack's own label does not show the swept field: name the point
            built = [
                (f"{label}@" + ",".join(f"{k}={v}" for k, v in point.items()), attack)
                for (label, attack), point in zip(built, self.points(), strict=True)
            ]
        return built

    @property
    def is_curve(self) -> bool:
        """A sweep over a budget of forced (token, layer) pairs: the ASR-vs-budget curve B80 is read from
        (a sweep over another strength, e.g. top-k's k or GCG's queries, is just several points)."""
        attack = self.component_class()
        return attack.budget_counts_forced_pairs and list(self.sweep) == [attack.budget_field]
