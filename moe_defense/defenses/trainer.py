"""Router-only adversarial fine-tuning on HF `Trainer` (DeepSpeed, accelerate, checkpoints, --resume).

`HardeningTrainer` only replaces `compute_loss` (the objective in `objective.py`); `RouteRefresh`
re-searches unsafe routes against the current routers every `refresh_every` steps, each rank
searching its share of prompts, so the adversarial signal follows the model as it changes.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
from datasets import Dataset
from pydantic import Field, field_validator, model_validator
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import TensorBoardCallback, is_deepspeed_zero3_enabled
from transformers.integrations.deepspeed import deepspeed_load_checkpoint
from transformers.trainer import SCHEDULER_NAME
from transformers.trainer_utils import get_last_checkpoint

from moe_defense.attacks.artifacts import RouteArtifact
from moe_defense.attacks.base import AttackSpec
from moe_defense.attacks.fsour import FsourConfig
from moe_defense.defenses.base import DefenseConfig
from moe_defense.defenses.checkpoint import (
    directory_bytes,
    restore_trainable,
    save_trainable,
    saved_trainable,
    state_bytes,
    tensor_digest,
    trained_parameters,
)
from moe_defense.defenses.deployment_changes import DeploymentChange, check_trainable_changes
from moe_defense.defenses.examples import TrainingSequence, collate, recovery_sequences
from moe_defense.defenses.lora import (
    EXPERT_LORA,
    adapter_numbers,
    attach_expert_lora,
    merge_expert_lora,
)
from moe_defense.defenses.objective import HardeningObjective, HarmfulBatch, LossWeights, Reference
from moe_defense.defenses.routes import RoutePool, search_routes
from moe_defense.defenses.zero3 import PersistentRouters, local_forwards, unpartition
from moe_defense.errors import ConfigError
from moe_defense.models.loading import LoadedModel, weights_dtype
from moe_defense.models.params import TrainableScope, set_trainable
from moe_defense.models.training import cast_to, check_precision, master_weights, mixed_precision, trainer_defaults
from moe_defense.runner.process import ProcessInfo

ROUTE_POOL = "route_pool.jsonl"
HARDENING_STATE = "hardening_state.rank{rank}.json"  # in every Trainer checkpoint: what HF Trainer does not save


def default_route_search() -> FsourConfig:
    return FsourConfig(candidates=32, force_decode=True, budget=8, restarts=0, budget_strategy="prune")


class HardeningConfig(DefenseConfig):
    """How the routers are trained: steps, batch, which tensors, loss terms, adversarial refresh."""

    trainable: TrainableScope = Field(
        "routers",
        description="tensors that train: routers (the product), routers+expert-lora (PEFT LoRA on the routed "
        "experts), routers+experts, all",
    )
    lora_rank: int = Field(8, ge=1, description="rank of the expert LoRA factors (trainable: routers+expert-lora)")
    steps: int = Field(120, ge=1, description="optimiser steps")
    batch_size: int = Field(16, ge=1, description="harmful and benign sequences per device per step (each)")
    learning_rate: float = Field(1e-2, gt=0, description="peak learning rate (cosine decay, 5% warm-up)")
    loss: LossWeights = Field(default_factory=LossWeights, description="weight of each objective term")
    route_search: FsourConfig = Field(
        default_factory=default_route_search,
        description="F-SOUR settings of the routes trained against (its budget is the training budget)",
    )
    refresh_every: int = Field(
        10, ge=0, description="re-search routes against the current routers every N steps (0: never)"
    )
    refresh_prompts: int = Field(
        16, ge=1, description="harmful prompts re-searched per refresh (rotating through the set)"
    )
    initial_routes: Literal["search", "none"] = Field(
        "search", description="search routes for the first refresh_prompts prompts on the original model before step 1"
    )
    routes_per_prompt: int = Field(4, ge=1, description="routes kept per prompt in the pool (newest first)")
    mask_routers: int = Field(2, ge=0, description="top-RoSais routers masked by the mask_refusal term")
    spread_pairs: int = Field(
        32, ge=1, description="random (token, layer) pairs forced by the spread_refusal and perturbed_output_kl terms"
    )
    budget_curriculum: list[int | None] | None = Field(
        None,
        description="budgets of the refreshed routes, in order over training (None = no cap), e.g. [2, 4, 8, 16, "
        "null]; unset: every refresh searches at the training budget",
    )
    deployment_changes: list[AttackSpec] = Field(
        default_factory=list,
        description="deployment changes the deployment_refusal and deployment_output_kl terms sample one of per "
        "step: the threat suite's {name, args, sweep} (top-k, expert-prune, quantize, capacity-drop, router-noise)",
    )
    max_response_tokens: int = Field(48, ge=1, description="response tokens trained per sequence")
    refusal_fallback: str | None = Field(
        None, description="refusal trained on harmful prompts the model does not refuse (None: drop them)"
    )
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps (for --resume)")
    seed: int = Field(0, description="seed of data order, route sampling and searches")

    @field_validator("deployment_changes")
    @classmethod
    def _trainable_changes(cls, specs: list[AttackSpec]) -> list[AttackSpec]:
        check_trainable_changes(specs)
        return specs

    @model_validator(mode="after")
    def _changes_used(self) -> HardeningConfig:
        """Changes without a deployment term (or a term without changes) would be silently ignored."""
        terms = bool(self.loss.deployment_refusal or self.loss.deployment_output_kl)
        if terms != bool(self.deployment_changes):
            raise ValueError(
                "deployment_changes and the loss terms deployment_refusal / deployment_output_kl go together: "
                + ("set deployment_changes" if terms else "give one of those terms a weight")
            )
        return self

    @model_validator(mode="after")
    def _curriculum_refreshed(self) -> HardeningConfig:
        """The curriculum advances at refreshes only: without them training would stay on its first budget."""
        if self.budget_curriculum and len(self.budget_curriculum) > 1 and self.refresh_every <= 0:
            raise ValueError(
                f"budget_curriculum {self.budget_curriculum} moves to its next budget at each route refresh: "
                "set refresh_every > 0 (e.g. steps / len(budget_curriculum))"
            )
        return self


class HardeningTrainer(Trainer):
    """`Trainer` whose loss is the hardening objective over a harmful and a benign batch per step."""

    def __init__(
        self,
        *,
        loaded: LoadedModel,
        objective: HardeningObjective,
        harmful: Sequence[TrainingSequence],
        benign: Sequence[TrainingSequence],
        pool: RoutePool,
        seed: int,
        recovery: Sequence[TrainingSequence] = (),
        precision: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.precision = precision
        self.loaded = loaded
        self.objective = objective
        self.harmful = list(harmful)
        self.recovery = list(recovery)  # recovery[i] is harmful[i] behind its affirmative target
        self.benign = list(benign)
        self.pool = pool
        self.rng = random.Random(seed)
        self._term_sums: dict[str, float] = defaultdict(float)
        self._term_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rows = inputs["row"].tolist()
        pad = self.loaded.tokenizer.pad_token_id
        device = self.loaded.device
        harmful = [self.harmful[r % len(self.harmful)] for r in rows]
        h = {k: v.to(device) for k, v in collate(harmful, pad).items()}
        b = {}  # no benign sequences: no benign term is on (train_routers checks)
        if self.benign:
            b = {k: v.to(device) for k, v in collate([self.benign[r % len(self.benign)] for r in rows], pad).items()}
        routes = self.pool.sample([s.prompt.id for s in harmful], self.rng)
        recovery = (
            {k: v.to(device) for k, v in collate([self.recovery[r % len(self.recovery)] for r in rows], pad).items()}
            if self.recovery
            else None
        )
        batch = HarmfulBatch(h, routes, self.pool.interventions(self.loaded, routes, h["prompt_lengths"]), recovery)
        with mixed_precision(device, self.precision):
            terms = self.objective(model, batch, b, self.rng)
        for name, value in terms.items():
            self._term_sums[name] += float(value.detach())
        self._term_count += 1
        return (terms["loss"], None) if return_outputs else terms["loss"]

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Checkpoints (internal calls) hold only the trained tensors; optimizer, scheduler and RNG state
        are saved beside them by the Trainer as usual. A user's own `save_model` call saves the model."""
        if not _internal_call:
            super().save_model(output_dir, _internal_call)
        elif self.args.should_save:
            save_trainable(self.model, Path(output_dir or self.args.output_dir))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        restore_trainable(self.model, Path(resume_from_checkpoint))

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Under DeepSpeed, the engine's checkpoint without the frozen weights (transformers excludes them only
        for PEFT models): the trained tensors, their ZeRO optimizer state, the engine's own; the Trainer's
        scheduler, which the engine does not hold, beside it as the Trainer saves it."""
        if not self.is_deepspeed_enabled:
            super()._save_optimizer_and_scheduler(output_dir)
            return
        from accelerate.utils import DeepSpeedSchedulerWrapper

        self.model_wrapped.save_checkpoint(output_dir, exclude_frozen_parameters=True)
        if self.args.should_save and not isinstance(self.lr_scheduler, DeepSpeedSchedulerWrapper):
            torch.save(self.lr_scheduler.state_dict(), Path(output_dir) / SCHEDULER_NAME)

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        """Under DeepSpeed, resumes the engine from that router-sized checkpoint with a lenient module load (the
        frozen weights are the freshly loaded model's own; transformers loads strictly except for PEFT models),
        once its `trainable.safetensors` shows it trained exactly this run's tensors."""
        if not (self.is_deepspeed_enabled and resume_from_checkpoint):
            return super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        prepared = super()._prepare_for_training(max_steps, train_dataloader, None)
        saved_trainable(self.model, Path(resume_from_checkpoint))  # raises where it trained other tensors
        deepspeed_load_checkpoint(self.model_wrapped, resume_from_checkpoint, load_module_strict=False)
        self._load_optimizer_and_scheduler(resume_from_checkpoint)
        self._load_scaler(resume_from_checkpoint)
        return prepared

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._term_count:
            logs.update(
                {f"term/{k}": round(v / self._term_count, 4) for k, v in self._term_sums.items() if k != "loss"}
            )
            self._term_sums.clear()
            self._term_count = 0
        super().log(logs, *args, **kwargs)


class RouteRefresh(TrainerCallback):
    """Every `every` steps: F-SOUR against the current routers on the next prompts, into the pool."""

    def __init__(
        self,
        loaded: LoadedModel,
        harmful: Sequence[TrainingSequence],
        pool: RoutePool,
        config: FsourConfig,
        every: int,
        prompts: int,
        info: ProcessInfo,
        curriculum: Sequence[int | None] | None = None,
        total_refreshes: int = 0,
        precision: torch.dtype = torch.float32,
    ) -> None:
        self.precision = precision
        self.curriculum = list(curriculum) if curriculum else None
        self.total_refreshes = total_refreshes
        self.loaded = loaded
        self.info = info
        self.prompts = [s.prompt for s in harmful]
        self.pool = pool
        self.config = config
        self.every = every
        self.count = prompts
        self.seconds = 0.0
        self.refreshes = 0
        # where the searches run: under ZeRO-3, outside its per-forward collectives (each rank searches its own
        # prompts and stops early on success, so the ranks make different numbers of forwards)
        self.isolation: Callable[[], AbstractContextManager] = nullcontext

    def on_step_end(self, args, state, control, **kwargs):
        if not self.every or state.global_step % self.every or state.global_step >= state.max_steps:
            return
        started = time.perf_counter()
        self.search(state.global_step // self.every)
        self.seconds += time.perf_counter() - started
        self.refreshes += 1

    def budget(self, index: int) -> int | None:
        """The budget of refresh `index` (0 = before step 1): the curriculum's stage for this point of
        training, else the training budget."""
        if self.curriculum is None:
            return self.config.budget
        stage = min(len(self.curriculum) - 1, index * len(self.curriculum) // (self.total_refreshes + 1))
        return self.curriculum[stage]

    def schedule(self, initial: bool) -> list[int | None]:
        """The budgets of all searches of the training, in order (refresh 0 only with an `initial` search): what
        the routers trained against, known from the config, so a resumed training reports the earlier ones too."""
        refreshes = self.total_refreshes if self.every else 0
        return [self.budget(index) for index in range(0 if initial else 1, refreshes + 1)]

    def search(self, index: int) -> None:
        """Search the index-th chunk of prompts (rotating through the set); each rank takes its share."""
        chunk = [
            self.prompts[(index * self.count + i) % len(self.prompts)]
            for i in range(min(self.count, len(self.prompts)))
        ]
        config = self.config.model_copy(update={"seed": self.config.seed + index, "budget": self.budget(index)})
        with self.isolation(), mixed_precision(self.loaded.device, self.precision):
            found = search_routes(self.loaded, chunk[self.info.rank :: self.info.world], config, self.info.is_main)
        self.pool.add(
            [
                artifact
                for shard in self.info.gather([a.to_json() for a in found])
                for artifact in map(RouteArtifact.from_json, shard)
            ]
        )


class HardeningState(TrainerCallback):
    """Saves into every checkpoint what HF Trainer does not: the route-sampling RNG and the pool's size,
    so a training resumed from a checkpoint continues exactly as the uninterrupted one would have."""

    def __init__(self, trainer: HardeningTrainer, pool: RoutePool, info: ProcessInfo) -> None:
        self.trainer = trainer
        self.pool = pool
        self.info = info

    def on_save(self, args, state, control, **kwargs):
        version, internal, gauss = self.trainer.rng.getstate()
        payload = {"rng": [version, list(internal), gauss], "pool_records": self.pool.records}
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        (checkpoint / HARDENING_STATE.format(rank=self.info.rank)).write_text(json.dumps(payload))

    def restore(self, checkpoint: str) -> None:
        path = Path(checkpoint) / HARDENING_STATE.format(rank=self.info.rank)
        if not path.is_file():
            raise ConfigError(
                f"checkpoint {checkpoint} has no {path.name}: it cannot be resumed exactly. Start a new run directory."
            )
        payload = json.loads(path.read_text())
        version, internal, gauss = payload["rng"]
        self.trainer.rng.setstate((version, tuple(internal), gauss))
        self.pool.truncate(payload["pool_records"])


def router_digest(loaded: LoadedModel) -> str:
    """sha256 over the router tensors (names and bytes)."""
    digests = {name: tensor_digest(tensor) for name, tensor in loaded.adapter.router_tensors(loaded.model).items()}
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]


def training_arguments(
    config: HardeningConfig,
    out_dir: Path,
    deepspeed: str | dict | None,
    *,
    precision: torch.dtype = torch.float32,
    report_to: Sequence[str] = (),
) -> TrainingArguments:
    """The shared Trainer defaults at the weights' precision, reporting to the recipe's `report_to` trackers."""
    defaults = trainer_defaults(
        steps=config.steps,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=config.seed,
        precision=precision,
    )
    return TrainingArguments(
        output_dir=str(out_dir),
        **{**defaults, "report_to": list(report_to)},
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=1,
        remove_unused_columns=False,
        deepspeed=deepspeed,
    )


def _trainable_model(loaded: LoadedModel, config: HardeningConfig) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    """The model the Trainer trains (`loaded.model`, or its expert-LoRA wrapper, initialised from `config.seed`)
    and its trained tensors, held in fp32 master weights."""
    set_trainable(loaded.model, config.trainable)
    model = loaded.model
    if config.trainable == "routers+expert-lora":
        devices = sorted({p.device.index for p in model.parameters() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(config.seed)  # the factors' random init: the same in every process, a resumed one too
            model = attach_expert_lora(loaded, config.lora_rank)
    trained = list(trained_parameters(model).values())
    master_weights(trained)
    return model, trained


def _resume_point(out_dir: Path, resume: bool, info: ProcessInfo) -> str | None:
    """The last Trainer checkpoint to continue from (`resume` only); without one the route pool starts empty,
    since routes found after step 0 of an earlier run would change this one."""
    trainer_dir = out_dir / "trainer"
    checkpoint = get_last_checkpoint(str(trainer_dir)) if resume and trainer_dir.exists() else None
    if checkpoint is None and info.is_main:
        (out_dir / ROUTE_POOL).unlink(missing_ok=True)
    info.wait()
    return checkpoint


def _uses_routes(config: HardeningConfig) -> bool:
    """Whether a loss term trains against unsafe routes (otherwise no route is searched)."""
    return bool(config.loss.adversarial_refusal or config.loss.recovery or config.loss.routing_consistency)


def _route_refresh(
    loaded: LoadedModel,
    harmful: Sequence[TrainingSequence],
    pool: RoutePool,
    config: HardeningConfig,
    info: ProcessInfo,
    precision: torch.dtype,
) -> RouteRefresh:
    """The refresh callback of `config` (every 0: never, where no term uses routes)."""
    every = config.refresh_every if _uses_routes(config) else 0
    return RouteRefresh(
        loaded,
        harmful,
        pool,
        config.route_search,
        every,
        config.refresh_prompts,
        info,
        curriculum=config.budget_curriculum,
        total_refreshes=(config.steps - 1) // every if every else 0,
        precision=precision,
    )


def _hardening_trainer(
    model: torch.nn.Module,
    loaded: LoadedModel,
    harmful: Sequence[TrainingSequence],
    benign: Sequence[TrainingSequence],
    config: HardeningConfig,
    args: TrainingArguments,
    objective: HardeningObjective,
    pool: RoutePool,
    refresh: RouteRefresh,
    precision: torch.dtype,
) -> HardeningTrainer:
    """The Trainer over row indices (one row: a harmful and a benign sequence), refreshing routes as it goes."""
    rows = Dataset.from_dict({"row": list(range(max(len(harmful), len(benign))))})
    return HardeningTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=lambda features: {"row": torch.tensor([f["row"] for f in features])},
        callbacks=[refresh],
        loaded=loaded,
        objective=objective,
        harmful=harmful,
        benign=benign,
        pool=pool,
        seed=config.seed,
        recovery=recovery_sequences(loaded, harmful) if config.loss.recovery else (),
        precision=precision,
    )


def _add_callbacks(
    trainer: HardeningTrainer,
    config: HardeningConfig,
    refresh: RouteRefresh,
    info: ProcessInfo,
    callbacks: Sequence[TrainerCallback],
    zero3: bool,
) -> HardeningState:
    """The checkpointed hardening state, ZeRO-3's router checks and isolated refreshes, then the caller's
    callbacks; returns the state, to restore before a resumed run."""
    loaded = trainer.loaded
    if zero3 and config.trainable != "routers":
        raise ConfigError(f"ZeRO-3 supports trainable: routers only (got {config.trainable!r}); use ZeRO-2")
    state = HardeningState(trainer, trainer.pool, info)
    if zero3:
        trainer.add_callback(PersistentRouters(loaded.adapter.router_parameters(loaded.model)))
        refresh.isolation = lambda: local_forwards(trainer.model_wrapped, loaded.model)  # the engine, once training
    for callback in (state, *callbacks):
        trainer.add_callback(callback)
    return state


def _finish_training(
    trainer: HardeningTrainer,
    model: torch.nn.Module,
    trained: Sequence[torch.nn.Parameter],
    config: HardeningConfig,
    out_dir: Path,
    *,
    info: ProcessInfo,
    zero3: bool,
) -> int:
    """`loaded.model` back to a plain, frozen model in eval mode with the trained tensors in the weights' dtype
    (stored and verified as it ships); returns the trained LoRA factor entries (0 without expert LoRA)."""
    loaded = trainer.loaded
    if zero3:
        unpartition(trainer.model_wrapped, loaded.model)
    cast_to(trained, trainer.precision)
    lora = config.trainable == "routers+expert-lora"
    lora_numbers = adapter_numbers(model) if lora else 0
    if lora:  # the factors merge into the expert weights: loaded.model is a plain model again
        merge_expert_lora(model, out_dir / EXPERT_LORA if info.is_main else None)
    loaded.model.eval()
    for parameter in loaded.model.parameters():
        parameter.requires_grad_(False)
    return lora_numbers


def _training_facts(
    trainer: HardeningTrainer,
    out_dir: Path,
    refresh: RouteRefresh,
    info: ProcessInfo,
    *,
    resumed_from: str | None,
    initial_search: bool,
    seconds: float,
    initial_seconds: float,
    lora_numbers: int,
) -> dict[str, Any]:
    """What `train_routers` returns (and hardening writes to train.json); gathers the router digests of all ranks."""
    loaded = trainer.loaded
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    last_checkpoint = get_last_checkpoint(str(out_dir / "trainer"))
    digests = info.gather(router_digest(loaded))
    return {
        "steps": trainer.state.global_step,
        "resumed_from": resumed_from,
        "seconds": round(seconds, 1),
        "initial_route_search_seconds": round(initial_seconds, 1),
        "refreshes": refresh.refreshes,
        "route_budgets": refresh.schedule(initial_search),  # None = no cap; several under a budget curriculum
        "refresh_seconds": round(refresh.seconds, 1),
        "routes_in_pool": len(trainer.pool),
        "expert_lora_numbers": lora_numbers,  # trained LoRA factor entries (0 without expert LoRA)
        "world_size": info.world,
        # a Trainer checkpoint holds the trained tensors + optimizer/scheduler/RNG state, never the frozen model
        "checkpoint_bytes": directory_bytes(Path(last_checkpoint)) if last_checkpoint else 0,
        "model_bytes": state_bytes(loaded.model),
        # the training's tensorboard run (report_to tensorboard), where the verified figures are added
        "tensorboard_dir": next(
            (c.logging_dir for c in trainer.callback_handler.callbacks if isinstance(c, TensorBoardCallback)), None
        ),
        "router_digest_per_rank": digests,  # equal on every rank: data-parallel replicas stayed in sync
        "log": history,
    }


def train_routers(
    loaded: LoadedModel,
    harmful: Sequence[TrainingSequence],
    benign: Sequence[TrainingSequence],
    config: HardeningConfig,
    out_dir: Path,
    *,
    info: ProcessInfo,
    mask_layers: Sequence[int] = (),
    changes: Sequence[DeploymentChange] = (),
    deepspeed: str | dict | None = None,
    resume: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
    report_to: Sequence[str] = (),
    routes: Sequence[RouteArtifact] = (),
) -> dict[str, Any]:
    """Train `loaded.model` in place; returns training facts (losses, refreshes, seconds).

    `changes`: the deployment changes the deployment terms sample (`deployment_changes`), chosen on the
    original model. `routes`: unsafe routes the caller found already; the pool starts with them (no initial
    search). `benign` may be empty when no benign term is weighted.

    `resume` continues from the last checkpoint under `out_dir` with the RNG and route pool it saved,
    so the trained tensors equal an uninterrupted run's bit for bit."""
    benign_terms = ("output_kl", "routing_kl", "perturbed_output_kl", "deployment_output_kl")
    if not benign and any(getattr(config.loss, term) for term in benign_terms):
        raise ConfigError(f"the benign terms {benign_terms} need benign training sequences; none were given")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    precision = weights_dtype(loaded.model)  # the frozen weights stay in it; trained tensors train in fp32
    check_precision(precision)
    reference = Reference(loaded, config.trainable)  # the original routers, before anything trains
    model, trained = _trainable_model(loaded, config)
    checkpoint = _resume_point(out_dir, resume, info)
    pool = RoutePool(config.routes_per_prompt, out_dir / ROUTE_POOL, write=info.is_main)
    if routes and not len(pool):
        pool.add(routes)
    objective = HardeningObjective(loaded, config.loss, reference, mask_layers, config.spread_pairs, changes)
    refresh = _route_refresh(loaded, harmful, pool, config, info, precision)
    initial_search = config.initial_routes == "search" and not routes and _uses_routes(config)
    if initial_search and not len(pool):
        refresh.search(0)  # step 0: routes found on the original model, for the first chunk of prompts
    initial_seconds = time.perf_counter() - started
    args = training_arguments(config, out_dir / "trainer", deepspeed, precision=precision, report_to=report_to)
    trainer = _hardening_trainer(model, loaded, harmful, benign, config, args, objective, pool, refresh, precision)
    zero3 = is_deepspeed_zero3_enabled()  # set by the TrainingArguments above; partitioned from the first step
    state = _add_callbacks(trainer, config, refresh, info, callbacks, zero3)
    if checkpoint is not None:
        state.restore(checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    lora_numbers = _finish_training(trainer, model, trained, config, out_dir, info=info, zero3=zero3)
    return _training_facts(
        trainer,
        out_dir,
        refresh,
        info,
        resumed_from=checkpoint,
        initial_search=initial_search,
        seconds=time.perf_counter() - started,
        initial_seconds=initial_seconds,
        lora_numbers=lora_numbers,
    )
