"""`rasa`: Routing-Aware Safety Alignment (Liang et al., ICML 2026; arXiv 2602.04448), the anchor defense.

RASA repairs the experts jailbreaks lean on instead of retraining the routers alone:
1. detect: per (layer, expert), the activation rate over a jailbroken run minus over the refused run of the
   same request (the paper's risk difference); the `unsafe_experts` highest, above `min_risk_diff`, are
   the safety-critical experts;
2. per round, repair those experts only, routers frozen, under the jailbreak's own routing: refusal CE on the
   jailbroken input (`adversarial_refusal` with the routes fixed);
3. then train the routers only, experts frozen: each layer's mean router distribution on the jailbroken input
   is pulled to the refused run's (`routing_consistency`, a detached target).
The paper's jailbreaks are prompts (PAP, FlipAttack, DeepInception). This package's threat is the unsafe
route, so the jailbreaks RASA fits on are F-SOUR routes searched on TRAINING prompts of the model as it is
(the same search `route-disabling` fits on); the jailbroken run is the prompt and its refusal tokens under
the route, the refused run the same tokens under the model's own routing. Routes stay fixed over the rounds,
as RASA's data does. Each phase is one `train_routers` run (HF Trainer, DeepSpeed, checkpoints); a finished
phase is read back on --resume, never retrained.

Files (beside router-hardening's): `train/rasa_experts.json` (risk differences and the repaired experts),
`train/rasa_routes.jsonl` (the jailbreaks), `train/round{r}-{experts|routers}/` (a phase's Trainer run,
`trainable.safetensors` and `phase.json` once done).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import Field
from transformers import TrainerCallback

from moe_defense.attacks.artifacts import RouteArtifact, interventions_for, read_artifacts, write_artifacts
from moe_defense.attacks.fsour import FsourConfig
from moe_defense.defenses.base import DefenseConfig, DefenseContext, register_defense
from moe_defense.defenses.checkpoint import restore_trainable, save_trainable
from moe_defense.defenses.examples import TrainingSequence, collate, own_refusals
from moe_defense.defenses.hardening import RouterHardening
from moe_defense.defenses.objective import LossWeights
from moe_defense.defenses.routes import search_routes
from moe_defense.defenses.trainer import HardeningConfig, default_route_search, train_routers
from moe_defense.errors import ConfigError
from moe_defense.models.loading import LoadedModel
from moe_defense.models.params import TrainableScope, keep_only_experts, set_trainable
from moe_defense.routing import intervene, record_routing
from moe_defense.runner.rundir import atomic_write

RASA_EXPERTS = "rasa_experts.json"
RASA_ROUTES = "rasa_routes.jsonl"  # the jailbreaks, searched once (read back on --resume)
PHASE_DONE = "phase.json"  # written last in a phase's directory: the phase finished


class RasaConfig(DefenseConfig):
    """RASA's detection and alternating schedule (the paper's OLMoE setting: 3 rounds, 128 of 1,024 experts)."""

    unsafe_experts: int | None = Field(
        None, ge=1, description="(layer, expert) pairs repaired (None: one eighth of all routed experts)"
    )
    min_risk_diff: float = Field(0.0, description="an expert is repaired only if its risk difference exceeds this")
    rounds: int = Field(3, ge=1, description="alternating rounds (an expert phase, then a router phase)")
    expert_steps: int = Field(20, ge=1, description="optimiser steps of each expert phase")
    router_steps: int = Field(20, ge=0, description="optimiser steps of each router phase (0: no router phase)")
    expert_learning_rate: float = Field(1e-3, gt=0, description="peak learning rate of the expert phases")
    router_learning_rate: float = Field(1e-3, gt=0, description="peak learning rate of the router phases")
    batch_size: int = Field(8, ge=1, description="jailbroken sequences per device per step")
    fit_prompts: int = Field(16, ge=1, description="harmful training prompts searched for the jailbreaks")
    route_search: FsourConfig = Field(
        default_factory=default_route_search,
        description="F-SOUR settings of the jailbreak search (its budget is the training budget)",
    )
    max_response_tokens: int = Field(48, ge=1, description="refusal tokens trained per sequence")
    refusal_fallback: str | None = Field(
        None, description="refusal trained on harmful prompts the model does not refuse (None: drop them)"
    )
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps of a phase (for --resume)")
    seed: int = Field(0, description="seed of data order and the jailbreak search")


def risk_differences(
    loaded: LoadedModel, jailbreaks: Sequence[TrainingSequence], routes: Sequence[RouteArtifact], batch_size: int
) -> torch.Tensor:
    """(MoE layers, experts): each expert's activation rate over the jailbroken runs minus over the refused runs,
    counted over every real token (RASA's a_unsafe_n - a_safe_n)."""
    adapter = loaded.adapter
    layers = adapter.moe_layers()
    counts = {name: torch.zeros(len(layers), adapter.num_experts) for name in ("jailbroken", "refused")}
    tokens = {"jailbroken": 0, "refused": 0}
    pad = loaded.tokenizer.pad_token_id
    for start in range(0, len(jailbreaks), batch_size):
        batch = {k: v.to(loaded.device) for k, v in collate(jailbreaks[start : start + batch_size], pad).items()}
        forcing = interventions_for(
            routes[start : start + batch_size], adapter.top_k, adapter.num_experts, batch["prompt_lengths"]
        )
        for name, interventions in (("jailbroken", forcing), ("refused", [])):
            with torch.no_grad(), intervene(loaded, *interventions), record_routing(loaded, keep_logits=False) as rec:
                loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            trace = rec.trace()
            for row, layer in enumerate(layers):
                executed = trace[layer].indices[trace[layer].valid].flatten().cpu()
                counts[name][row] += torch.bincount(executed, minlength=adapter.num_experts).float()
            tokens[name] += int(trace[layers[0]].valid.sum())
    return counts["jailbroken"] / max(1, tokens["jailbroken"]) - counts["refused"] / max(1, tokens["refused"])


def select_unsafe_experts(
    risk: torch.Tensor, layers: Sequence[int], count: int, minimum: float
) -> dict[int, list[int]]:
    """The `count` (layer, expert) pairs of highest risk difference above `minimum`, as MoE layer -> experts."""
    order = risk.flatten().argsort(descending=True)[:count]
    chosen: dict[int, list[int]] = {}
    for flat in order.tolist():
        row, expert = divmod(flat, risk.shape[1])
        if float(risk[row, expert]) > minimum:
            chosen.setdefault(layers[row], []).append(expert)
    return {layer: sorted(experts) for layer, experts in sorted(chosen.items())}


class _KeepOnlyExperts(TrainerCallback):
    """Registers the expert gradient mask once the Trainer's parameters are set trainable; removes it after."""

    def __init__(self, loaded: LoadedModel, keep: Mapping[int, Sequence[int]]) -> None:
        self.loaded, self.keep, self.handles = loaded, keep, []

    def on_train_begin(self, args, state, control, **kwargs):
        self.handles = keep_only_experts(self.loaded.model, self.keep)

    def on_train_end(self, args, state, control, **kwargs):
        for handle in self.handles:
            handle.remove()
        self.handles = []


@register_defense
class Rasa(RouterHardening):
    """RASA on this package's jailbreaks (unsafe routes of training prompts), trained in alternating phases."""

    name = "rasa"
    config_class = RasaConfig

    @property
    def trainable(self) -> str:
        return "routers+experts"

    def _train(self, loaded: LoadedModel, context: DefenseContext) -> dict[str, Any]:
        config, out = self.config, context.out / "train"
        refusals = own_refusals(
            loaded,
            context.harmful_train[: config.fit_prompts],
            context.judge,
            context.generation,
            config.max_response_tokens,
            config.refusal_fallback,
        )
        started = time.perf_counter()
        routes = self._jailbreaks(loaded, context, refusals)
        search_seconds = time.perf_counter() - started
        risk = risk_differences(loaded, refusals, routes, config.batch_size)
        layers = loaded.adapter.moe_layers()
        count = config.unsafe_experts or max(1, risk.numel() // 8)
        unsafe = select_unsafe_experts(risk, layers, count, config.min_risk_diff)
        if not unsafe:
            raise ConfigError(
                f"rasa: no expert's risk difference exceeds min_risk_diff={config.min_risk_diff} (largest "
                f"{float(risk.max()):.4f}): the jailbreaks use the experts the refusals use; lower it."
            )
        detection = {
            "unsafe_experts": {str(layer): experts for layer, experts in unsafe.items()},
            "risk_difference": {
                str(layer): [round(v, 5) for v in row] for layer, row in zip(layers, risk.tolist(), strict=True)
            },
            "jailbreaks": len(routes),
        }
        if context.info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(out / RASA_EXPERTS, json.dumps(detection, indent=2) + "\n")
        phases = []
        for round_index in range(1, config.rounds + 1):
            phases.append(self._phase(loaded, context, refusals, routes, round_index, "experts", unsafe))
            if config.router_steps:
                phases.append(self._phase(loaded, context, refusals, routes, round_index, "routers", unsafe))
        return {
            "harmful_sequences": len(refusals),
            "train_budget": context.budget,
            "repaired_experts": sum(len(v) for v in unsafe.values()),
            "unsafe_experts": detection["unsafe_experts"],
            "steps": sum(p["steps"] for p in phases),
            "seconds": round(sum(p["seconds"] for p in phases), 1),  # the phases' training, without the search
            "initial_route_search_seconds": round(search_seconds, 1),
            "refreshes": 0,  # the jailbreaks stay fixed over the rounds, as RASA's data does
            "routes_in_pool": len(routes),
            "phases": phases,
        }

    def _jailbreaks(
        self, loaded: LoadedModel, context: DefenseContext, refusals: Sequence[TrainingSequence]
    ) -> list[RouteArtifact]:
        """One unsafe route per refused training prompt, searched on the model as it is (read back on --resume)."""
        path = context.out / "train" / RASA_ROUTES
        if context.resume and path.is_file():
            found = read_artifacts(path)
            if [r.prompt_id for r in found] == [s.prompt.id for s in refusals]:
                return found  # else an interrupted search: search again
        search = self.config.route_search.model_copy(update={"budget": context.budget, "seed": self.config.seed})
        routes = search_routes(loaded, [s.prompt for s in refusals], search, progress=context.info.is_main)
        if context.info.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            write_artifacts(path, routes)
        context.info.wait()
        return routes

    def _phase(
        self,
        loaded: LoadedModel,
        context: DefenseContext,
        jailbreaks: Sequence[TrainingSequence],
        routes: Sequence[RouteArtifact],
        round_index: int,
        scope: TrainableScope,
        unsafe: Mapping[int, Sequence[int]],
    ) -> dict[str, Any]:
        """One phase (the unsafe experts under the fixed routes, or the routers towards consistent routing);
        a finished phase's tensors are read back instead of retrained."""
        config, info = self.config, context.info
        directory = context.out / "train" / f"round{round_index}-{scope}"
        done = directory / PHASE_DONE
        if context.resume and done.is_file():
            _with_scope(loaded, scope, lambda: restore_trainable(loaded.model, directory))
            return json.loads(done.read_text())
        experts = scope == "experts"
        phase = HardeningConfig(
            trainable=scope,
            steps=config.expert_steps if experts else config.router_steps,
            batch_size=config.batch_size,
            learning_rate=config.expert_learning_rate if experts else config.router_learning_rate,
            loss=_phase_loss(experts),
            refresh_every=0,
            initial_routes="none",
            routes_per_prompt=1,
            max_response_tokens=config.max_response_tokens,
            save_steps=config.save_steps,
            seed=config.seed + round_index,
        )
        facts = train_routers(
            loaded,
            jailbreaks,
            [],
            phase,
            directory,
            info=info,
            deepspeed=context.deepspeed,
            resume=context.resume,
            callbacks=[_KeepOnlyExperts(loaded, unsafe)] if experts else (),
            report_to=context.report_to,
            routes=routes,
        )
        summary = {
            "round": round_index,
            "phase": scope,
            "steps": facts["steps"],
            "seconds": facts["seconds"],
            "final_loss": facts["log"][-1]["loss"] if facts["log"] else None,
        }
        if info.is_main:
            _with_scope(loaded, scope, lambda: save_trainable(loaded.model, directory))
            atomic_write(done, json.dumps(summary, indent=2) + "\n")
        info.wait()
        return summary


def _phase_loss(experts: bool) -> LossWeights:
    """The expert phase's refusal CE under the fixed routes, or the router phase's routing consistency; no other
    term (RASA keeps utility by touching few tensors, not by a retention loss)."""
    off = {name: 0.0 for name in LossWeights.model_fields}
    return LossWeights(**{**off, ("adversarial_refusal" if experts else "routing_consistency"): 1.0})


def _with_scope(loaded: LoadedModel, scope: TrainableScope, action) -> None:
    """Run `action` with exactly `scope` marked trainable (the checkpoint helpers save and restore those), then
    freeze the model again."""
    set_trainable(loaded.model, scope)
    try:
        action()
    finally:
        for parameter in loaded.model.parameters():
            parameter.requires_grad_(False)
