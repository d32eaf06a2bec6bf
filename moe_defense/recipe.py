"""Recipes: one YAML file says what to harden, on which data, how, and how to verify it.

Validated by pydantic (`extra="forbid"`), so a typo, an unknown judge, attack or defense, an argument
its config does not have, a wrong type or a missing file fails with the field's name before any model
loads. Attacks, judges and defenses are `{name, args}` specs over their registries.

Where a recipe is found: a path to an existing file is read as it is; anything else names a recipe packaged
in `moe_defense/recipes/` (`demo`, `models/olmoe`, `ablations/router-defense`; a leading `recipes/` and the
`.yaml` suffix are optional, so the repository's `recipes/demo.yaml` keeps working from any directory).
Files a recipe names (`deepspeed`, local prompt files) are looked up next to the recipe, then among the
packaged files (`ds/zero2.json`), not in the working directory, and stored resolved (absolute); a prompt-set
name found in neither place is a hub id.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from moe_defense.attacks import AttackSpec
from moe_defense.choices import DtypeName, ReasoningChoice
from moe_defense.data import PROMPT_SETS, PromptSet, load_prompts
from moe_defense.defenses import DefenseSpec
from moe_defense.defenses.base import check_composition
from moe_defense.defenses.zero3 import check_zero3_config
from moe_defense.errors import ConfigError, require_extra
from moe_defense.judges.defaults import default_judges
from moe_defense.judges.factory import JudgeSpec
from moe_defense.registry import validated
from moe_defense.runner.generation import GenerationConfig
from moe_defense.target import HardeningTarget
from moe_defense.tracking import check_report_to

# packaged recipes, ablation grids and DeepSpeed configs (package data; a wheel installs them as plain files)
RECIPES = Path(str(importlib.resources.files("moe_defense") / "recipes"))
GRIDS = "ablations"  # the packaged ablation grids' folder; every other packaged YAML is a recipe


def packaged_recipes(what: str = "recipe") -> list[str]:
    """Names of the packaged recipes (`demo`, `models/olmoe`, ...) or, with what="grid", grids."""
    names = (p.relative_to(RECIPES).with_suffix("").as_posix() for p in RECIPES.rglob("*.yaml"))
    return sorted(name for name in names if name.startswith(f"{GRIDS}/") == (what == "grid"))


def find_recipe(ref: str | Path, base: Path | None = None, what: str = "recipe") -> Path:
    """`ref` as a file (relative to `base`, default the working directory) if there is one, else the packaged
    recipe (or grid) of that name."""
    path = (base or Path.cwd()) / ref
    if path.is_file():
        return path
    name = Path(ref).as_posix().removeprefix("recipes/")
    for candidate in (RECIPES / name, RECIPES / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"{what} {str(ref)!r} is neither a file nor a packaged {what} (packaged: {', '.join(packaged_recipes(what))})."
    )


def resolve_reference(value: str, info: ValidationInfo) -> Path | None:
    """A file a recipe names: absolute as it is; relative: next to the recipe (the validation context's
    `recipe_dir`), else packaged. None when neither exists."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path if path.exists() else None
    recipe_dir = (info.context or {}).get("recipe_dir")
    roots = [Path(recipe_dir)] if recipe_dir is not None else []
    return next(((root / path).resolve() for root in [*roots, RECIPES] if (root / path).exists()), None)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataRef(Strict):
    """A prompt set: registered name, local file or hub id, with split and a seeded limit."""

    name: str = Field(description="registered set, local CSV/JSON/Parquet file or hub id")
    split: str | None = Field(None, description="train|test for the demo sets; the hub split otherwise")
    limit: int | None = Field(None, ge=1, description="seeded random subset of N prompts")
    data_file: str | None = Field(None, description="local copy of a registered set")
    prompt_column: str | None = Field(None, description="prompt column of a file (default: detected)")
    where: dict[str, str] = Field(
        default_factory=dict, description="keep prompts whose metadata has these values (e.g. label: safe)"
    )

    @field_validator("name")
    @classmethod
    def _known(cls, name: str, info: ValidationInfo) -> str:
        if name in PROMPT_SETS.names():
            return name
        if "/" in name or Path(name).suffix:
            local = resolve_reference(name, info)
            return str(local) if local is not None and local.is_file() else name  # else a hub id
        raise ValueError(
            f"{name!r} is not a registered prompt set ({', '.join(PROMPT_SETS.names())}), a file or a hub id"
        )

    @field_validator("data_file")
    @classmethod
    def _local_copy(cls, data_file: str | None, info: ValidationInfo) -> str | None:
        local = resolve_reference(data_file, info) if data_file is not None else None
        return str(local) if local is not None else data_file  # a missing file: load_prompts names it

    def load(self, seed: int) -> PromptSet:
        return load_prompts(
            self.name,
            split=self.split,
            limit=self.limit,
            seed=seed,
            prompt_column=self.prompt_column,
            data_file=self.data_file,
            where=self.where,
        )


class RecipeData(Strict):
    """Training data (train splits) and evaluation data (held-out splits)."""

    EVAL_SETS: ClassVar[tuple[str, ...]] = ("harmful_eval", "benign_eval", "over_refusal")  # what --limit cuts

    harmful_train: DataRef = Field(description="harmful prompts whose refusals are hardened")
    benign_train: list[DataRef] = Field(min_length=1, description="benign prompts whose answers are kept")
    harmful_eval: DataRef = Field(description="held-out harmful prompts the attack suite runs on")
    benign_eval: DataRef = Field(description="held-out benign prompts: compliance and NLL")
    over_refusal: DataRef = Field(description="benign look-alikes (XSTest-style): over-refusal")


def default_suite() -> list[AttackSpec]:
    """The unattacked baseline, adaptive F-SOUR over budgets, RoSais router masking and the transfer replay."""
    return [
        AttackSpec(name="none"),
        AttackSpec(
            name="fsour",
            args={"candidates": 32, "force_decode": True, "restarts": 0},
            sweep={"budget": [1, 2, 4, 8, 16, None]},
        ),
        AttackSpec(name="router-mask", args={"selection": "rosais"}, sweep={"n": [1, 2]}),
        AttackSpec(name="route-replay"),
    ]


class VerifyConfig(Strict):
    """The attack suite run before and after hardening (adaptive: re-optimised on each model)."""

    attacks: list[AttackSpec] = Field(
        default_factory=default_suite,
        min_length=1,
        description="attacks of the suite as {name, args, label, sweep}; the first sweep over an attack's budget field "
        "(F-SOUR's `budget`) is the ASR-vs-budget curve B80 is read from; seeds derive from the recipe's seed",
    )
    asr_threshold: float = Field(
        0.8, gt=0, le=1, description="B80: smallest budget whose ASR on the original model reaches this"
    )
    benign_nll_tokens: int = Field(
        48, ge=1, description="tokens of the original model's benign answers scored by benign NLL"
    )
    rosais_prompts: int | None = Field(
        None,
        ge=0,
        description="harmful eval prompts RoSais ranks the routers on for the report's plot (null: all; 0: none). "
        "It costs 16 masked passes per router and prompt: minutes a phase on a 30-layer model",
    )
    utility_tasks: list[str] = Field(
        default_factory=list,
        description="lm-evaluation-harness tasks (mmlu, gsm8k, ifeval, ... or your own) scored on the original and "
        "the hardened model beside safety; needs the `lm-eval` extra",
    )
    utility_task_path: str | None = Field(
        None, description="folder of your own lm-eval task YAMLs (relative to the recipe), beside the built-in ones"
    )
    utility_limit: int | None = Field(None, ge=1, description="examples per utility task (null: all)")

    @field_validator("utility_tasks")
    @classmethod
    def _harness(cls, tasks: list[str]) -> list[str]:
        if tasks:
            require_extra("lm_eval", "lm-eval", "scoring lm-eval tasks")
        return tasks

    @field_validator("utility_task_path")
    @classmethod
    def _task_folder(cls, value: str | None, info: ValidationInfo) -> str | None:
        path = resolve_reference(value, info) if value is not None else None
        if value is not None and (path is None or not path.is_dir()):
            raise ValueError(f"{value!r} is not a folder next to the recipe")
        return str(path) if path is not None else None

    @field_validator("attacks")
    @classmethod
    def _suite(cls, attacks: list[AttackSpec]) -> list[AttackSpec]:
        for spec in attacks:
            if "seed" in spec.args or "seed" in spec.sweep:
                raise ValueError(
                    f"attack {spec.name!r}: seeds derive from the recipe's seed (new ones on the hardened model); "
                    "drop its seed"
                )
        curves = [spec for spec in attacks if spec.is_curve]
        for curve in curves:  # the ASR-vs-budget curve; other strength sweeps (sigma, capacity factor) are free
            budgets = curve.sweep[curve.component_class().budget_field]
            capped = [b for b in budgets if b is not None]
            if (
                any(not isinstance(b, int) or b < 1 for b in capped)
                or capped != sorted(set(capped))
                or (None in budgets and budgets[-1] is not None)
            ):
                raise ValueError(
                    f"attack {curve.name!r}: budgets must be ascending integers >= 1, optionally ending with null "
                    "(no cap)"
                )
        if len({tuple(curve.sweep[curve.component_class().budget_field]) for curve in curves}) > 1:
            raise ValueError(
                "attacks sweeping forced-pair budgets must sweep the same ones: the curve's point at each budget is "
                f"the worst of them (got {[curve.sweep for curve in curves]})"
            )
        labels = [label for spec in attacks for label, _ in spec.build()]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"attack labels {repeated} appear twice; give one of them a label")
        return attacks

    @property
    def curve(self) -> AttackSpec | None:
        """The first attack sweeping forced-pair budgets: the training's route search (None: the suite has none).
        With several, the curve's points are their worst case (`Suite.curve`)."""
        return next((spec for spec in self.attacks if spec.is_curve), None)


class Recipe(Strict):
    """Everything `moe-defense harden` needs; written resolved into the run's config.yaml."""

    model: str = Field(description="hub id, local path, organism[:arch] or tiny:<model_type>")
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="options of the model's chat template, passed to every rendering (e.g. {enable_thinking: false} "
        "for Qwen3, {reasoning_effort: low} for gpt-oss); a key the template never reads is warned about",
    )
    reasoning: ReasoningChoice = Field(
        "auto",
        description="how a reply splits into reasoning and the final answer judges and targets read: think "
        "(<think>...</think>, also DeepSeek-R1), gpt-oss (harmony channels), none; auto: read off the chat template",
    )
    seed: int = Field(0, description="seed of sampling, searches and training")
    dtype: DtypeName = Field(
        "auto",
        description="weights dtype (auto: the checkpoint's own). Frozen weights stay in it; trained tensors and "
        "their optimizer state are fp32 (master weights) under autocast",
    )
    judges: list[JudgeSpec] = Field(
        default_factory=list,  # unset: filled in by `_default_judges` from the held-out harmful set
        min_length=1,
        description="judges as {name, args} (url, model, api_key_env, concurrency, timeout_s, device, ignore_case, "
        "...); the first is the headline; unset: `default_judges` of data.harmful_eval (an organism corpus's own "
        "judge, else organism-smol for real English), then keyword",
    )
    over_refusal_judge: str = Field(
        "keyword", description="judge (one of `judges`) whose refusals on benign prompts give over-refusal"
    )
    generation: GenerationConfig = Field(
        default_factory=lambda: GenerationConfig(max_new_tokens=48, batch_size=64),
        description="how every answer is generated",
    )
    data: RecipeData = Field(description="training and held-out evaluation prompt sets")
    defenses: list[DefenseSpec] = Field(
        default_factory=lambda: [DefenseSpec(name="router-hardening")],
        description="defenses as {name, args}, applied in order (a training defense first); [] or [none]: the baseline",
    )
    train_budget: int | Literal["b80"] = Field(
        "b80", description="budget of the routes trained against (b80: the measured B80)"
    )
    verify: VerifyConfig = Field(default_factory=VerifyConfig, description="the attack suite, before and after")
    target: HardeningTarget | None = Field(
        None,
        description="harden to a target: climb target.rungs (smallest patch first) until the adaptive verification "
        "meets it; null: apply `defenses` once",
    )
    deepspeed: str | None = Field(
        None,
        description="DeepSpeed config JSON, relative to the recipe or packaged (ds/zero0.json, ds/zero2.json); "
        "null: plain Trainer. Needs the `deepspeed` extra",
    )
    report_to: list[str] = Field(
        default_factory=list,
        description="experiment trackers (tensorboard, wandb, mlflow, trackio) the training logs to, as HF "
        "TrainingArguments.report_to; tensorboard also gets the verified ASR vs budget, B80 and utility; []: none",
    )
    trust_remote_code: bool = Field(False, description="allow the checkpoint's own Python code")
    revision: str | None = Field(
        None, description="the hub revision of `model` (branch, tag or commit; pin a commit for a release); null: main"
    )
    device_map: str | None = Field(
        None,
        description="transformers device_map (e.g. auto: shard a model too large for one GPU); null: one device per "
        "process",
    )

    @field_validator("report_to")
    @classmethod
    def _trackers(cls, names: list[str]) -> list[str]:
        return check_report_to(names)  # an unknown or uninstalled tracker fails before any model loads

    @field_validator("deepspeed")
    @classmethod
    def _deepspeed_config(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        require_extra("deepspeed", "deepspeed", f"a DeepSpeed config ({value!r})")
        path = resolve_reference(value, info)
        if path is None or not path.is_file():
            packaged = ", ".join(p.relative_to(RECIPES).as_posix() for p in sorted((RECIPES / "ds").glob("*.json")))
            raise ValueError(f"DeepSpeed config {value!r} is neither next to the recipe nor packaged ({packaged})")
        return str(path)

    @model_validator(mode="after")
    def _default_judges(self) -> Recipe:
        """No `judges:`: the judges that score answers to data.harmful_eval (before `_consistent` reads them)."""
        if "judges" not in self.model_fields_set:
            self.judges = [JudgeSpec(name=name) for name in default_judges(self.data.harmful_eval.name)]
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.device_map is not None and self.deepspeed is not None:
            raise ValueError("device_map (model sharding) and deepspeed (data parallel) exclude each other; set one")
        names = [judge.name for judge in self.judges]
        if len(set(names)) != len(names):
            raise ValueError(f"judges: each judge once (got {names})")
        if self.over_refusal_judge not in names:
            raise ValueError(f"over_refusal_judge {self.over_refusal_judge!r} is not one of the judges {names}")
        check_composition(self.defenses)
        if self.target is not None:
            if self.verify.curve is None:
                raise ValueError("target needs a budget sweep in verify.attacks (its ASR is read off the curve)")
            for name, rung in self.target.rungs.items():
                try:
                    check_composition(rung)
                except ValueError as error:
                    raise ValueError(f"target.rungs.{name}: {error}") from error
        if self.verify.curve is None:
            if self.train_budget == "b80":
                raise ValueError(
                    "train_budget b80 needs a budget sweep in verify.attacks (e.g. fsour with sweep: {budget: [...]})"
                )
            replays = [s.name for s in self.verify.attacks for _, a in s.build() if a.needs_supplied_routes]
            if replays:
                raise ValueError(
                    f"verify.attacks: {replays} replay the curve attack's routes, but the suite sweeps no budget"
                )
        if self.deepspeed is not None:  # a path by now (resolved and checked by its field validator)
            specs = [*self.defenses, *(s for rung in (self.target.rungs if self.target else {}).values() for s in rung)]
            scopes = [getattr(s.config(), "trainable", "routers") for s in specs if s.component_class().trains]
            check_zero3_config(Path(self.deepspeed), scopes)
        return self

    @property
    def training_defense(self) -> DefenseSpec | None:
        return next((spec for spec in self.defenses if spec.component_class().trains), None)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; override wins, lists are replaced."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def compose_defenses(row: DefenseSpec | list[DefenseSpec], base: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A grid row's or ladder rung's defenses, each one's args merged over the base recipe's args for the same
    defense (so a row states only what it changes)."""
    inherited = {spec["name"]: spec["args"] for spec in base}
    specs = row if isinstance(row, list) else [row]
    return [{"name": spec.name, "args": merge(inherited.get(spec.name, {}), spec.args)} for spec in specs]


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None, base: Path | None = None) -> Recipe:
    """Read and validate a recipe (a file, else a packaged name: `find_recipe`); `overrides` (e.g.
    {"model": ...}) replace top-level fields, a mapping (e.g. chat_template_kwargs) key by key; None overrides
    nothing."""
    path = find_recipe(path, base)
    try:
        payload = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"recipe {path} is not valid YAML: {error}") from error
    if not isinstance(payload, dict):
        raise ConfigError(f"recipe {path} must be a mapping of fields, got {type(payload).__name__}.")
    payload = merge(payload, {k: v for k, v in (overrides or {}).items() if v is not None})
    return validated(Recipe, payload, f"recipe {path}", context={"recipe_dir": path.parent})
