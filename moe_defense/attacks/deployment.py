"""Deployment changes: what downstream users do to a released checkpoint that changes its routes.

None of these is an optimised attack; each is a change applied to every request (fewer or more
experts per token, pruned experts, quantized weights, expert capacity, router noise). They declare
`changes_deployment`, so a run also answers the context's benign prompts under the same change and
reports their compliance beside the ASR: a change that breaks every answer is not a jailbreak.

Strength limits that depend on the model (k' against the expert count, experts left after pruning)
are checked when the run starts, before any forward pass; the rest when the config is built.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from moe_defense.attacks.base import Attack, AttackConfig, AttackContext, AttackResult, register_attack
from moe_defense.attacks.expert_silence import benign_prompts, expert_usage
from moe_defense.data.prompts import Prompt, PromptSet
from moe_defense.errors import ConfigError
from moe_defense.models.loading import LoadedModel
from moe_defense.routing import ExpertCapacity, ExpertMask, Intervention, RouterNoise, TopK, intervene
from moe_defense.runner.generation import encode_prompts

# Long enough for any prompt plus answer the runner generates (as expert-silence).
_MAX_POSITIONS = 8192


def _placeholders(prompts: Sequence[Prompt], **extra: Any) -> list[AttackResult]:
    """One result per prompt: a deployment change is one global choice, not a per-prompt search."""
    return [AttackResult(prompt_id=p.id, artifact=None, extra=dict(extra)) for p in prompts]


class _Deployment(Attack):
    changes_deployment = True

    def run(self, loaded: LoadedModel, prompts: Sequence[Prompt], context: AttackContext) -> list[AttackResult]:
        self.check(loaded)
        return _placeholders(prompts)

    def check(self, loaded: LoadedModel) -> None:
        """Refuse a strength this model cannot take (a ConfigError naming the field)."""


# --- top-k ------------------------------------------------------------------------------------
class TopKConfig(AttackConfig):
    """Route every token to k experts (llama.cpp's `expert_used_count`, a lowered `num_experts_per_tok`)."""

    k: int = Field(1, ge=1, description="experts per token (the model's own top-k: no change)")


@register_attack
class TopKDeployment(_Deployment):
    """Inference with k' experts per token, chosen and normalised by the architecture's own rule."""

    name = "top-k"
    config_class = TopKConfig
    budget_field = "k"

    def check(self, loaded: LoadedModel) -> None:
        adapter = loaded.adapter
        if self.config.k > adapter.num_experts:
            raise ConfigError(f"top-k: k={self.config.k} exceeds this model's {adapter.num_experts} experts.")
        if adapter.fixed_top_k and self.config.k != adapter.top_k:
            raise ConfigError(
                f"top-k: {adapter.model_type}'s {adapter.scoring} routing is defined for top-{adapter.top_k} only, "
                f"so k={self.config.k} cannot be reproduced faithfully."
            )

    def interventions(self, loaded: LoadedModel, results: Sequence[AttackResult]) -> list[Intervention]:
        return [TopK(self.config.k)]


# --- expert pruning ---------------------------------------------------------------------------
class ExpertPruneConfig(AttackConfig):
    """Drop `n` (or `fraction` of the) experts of every MoE layer, lowest usage or saliency first."""

    n: int = Field(1, ge=1, description="experts dropped per layer")
    fraction: float | None = Field(
        None, gt=0, lt=1, description="share of experts dropped per layer, rounded down (overrides n)"
    )
    criterion: Literal["frequency", "reap"] = Field(
        "frequency",
        description="frequency: least-routed on the calibration prompts; reap: lowest mean router weight x "
        "expert output norm over the tokens routed to the expert (REAP)",
    )
    benign_set: str | None = Field(
        None, description="registered set or file of calibration prompts (None: the run's benign prompts)"
    )
    benign_limit: int = Field(64, ge=1, description="calibration prompts used")
    benign_data_file: str | None = Field(None, description="local copy of a registered calibration set")


def reap_saliency(loaded: LoadedModel, texts: Sequence[str]) -> dict[int, torch.Tensor]:
    """Per layer and expert, the mean over the tokens routed to it of router weight x ||expert output||.

    Each expert's output is computed by the model's own experts module, called on the routed tokens
    with that expert alone at weight 1 (the experts modules take any number of choices per token).
    """
    experts = loaded.adapter.experts(loaded.model)
    num_experts = loaded.adapter.num_experts
    total = {layer: torch.zeros(num_experts) for layer in experts}
    count = {layer: torch.zeros(num_experts) for layer in experts}
    scoring = False

    def hook(layer: int):
        def measure(module: torch.nn.Module, args: tuple) -> None:
            nonlocal scoring
            if scoring:
                return
            hidden, indices, weights = args[:3]
            scoring = True
            try:
                for expert in indices.unique().tolist():
                    token, slot = (indices == expert).nonzero(as_tuple=True)
                    ones = torch.ones(token.numel(), 1, dtype=weights.dtype, device=weights.device)
                    out = module(hidden[token], torch.full_like(token, expert)[:, None], ones)
                    total[layer][expert] += float((weights[token, slot].float() * out.float().norm(dim=-1)).sum())
                    count[layer][expert] += token.numel()
            finally:
                scoring = False

        return measure

    handles = [module.register_forward_pre_hook(hook(layer)) for layer, module in experts.items()]
    try:
        for row in encode_prompts(loaded, texts, None):
            with torch.no_grad():
                loaded.model(input_ids=torch.tensor(row, device=loaded.device)[None])
    finally:
        for handle in handles:
            handle.remove()
    return {layer: total[layer] / count[layer].clamp(min=1) for layer in experts}


@register_attack
class ExpertPrune(_Deployment):
    """REAP-style expert pruning: pruned experts are blocked (-inf) at every token, so every router
    renormalises over the survivors exactly as a checkpoint with those experts removed would
    (softmax-then-top-k routers take the softmax over survivors; top-k-then-softmax and sigmoid
    routers never score the removed experts)."""

    name = "expert-prune"
    config_class = ExpertPruneConfig
    budget_field = "n"

    def label(self) -> str:
        amount = self.config.n if self.config.fraction is None else f"{self.config.fraction:g}x"
        return f"{self.name}-{self.config.criterion}@{amount}"

    def count(self, loaded: LoadedModel) -> int:
        experts = loaded.adapter.num_experts
        return self.config.n if self.config.fraction is None else int(self.config.fraction * experts)

    def check(self, loaded: LoadedModel) -> None:
        adapter, count = loaded.adapter, self.count(loaded)
        field = "n" if self.config.fraction is None else "fraction"
        if count < 1 or adapter.num_experts - count < adapter.top_k:
            raise ConfigError(
                f"expert-prune: {field}={getattr(self.config, field)} drops {count} of {adapter.num_experts} experts; "
                f"it must drop at least 1 and leave at least top-k={adapter.top_k}."
            )

    def run(self, loaded: LoadedModel, prompts: Sequence[Prompt], context: AttackContext) -> list[AttackResult]:
        self.check(loaded)
        calibration = [
            p.text
            for p in benign_prompts(
                "expert-prune",
                self.config.benign_set,
                self.config.benign_limit,
                self.config.benign_data_file,
                context,
            )
        ]
        if self.config.criterion == "frequency":
            scores = expert_usage(loaded, calibration, loaded.adapter.moe_layers())
        else:
            scores = reap_saliency(loaded, calibration)
        count = self.count(loaded)
        # lowest score first; ties broken by expert id (stable sort), so the choice is deterministic
        pruned = {layer: sorted(score.argsort(stable=True)[:count].tolist()) for layer, score in scores.items()}
        return _placeholders(prompts, pruned=pruned)

    def interventions(self, loaded: LoadedModel, results: Sequence[AttackResult]) -> list[Intervention]:
        masks = {}
        for layer, experts in results[0].extra["pruned"].items():
            mask = torch.zeros(1, _MAX_POSITIONS, loaded.adapter.num_experts, dtype=torch.bool)
            mask[..., experts] = True
            masks[int(layer)] = mask
        return [ExpertMask(masks, scope="all")]

    def summarize(self, results: Sequence[AttackResult]) -> dict[str, Any]:
        return {"pruned": results[0].extra["pruned"]} if results else {}


# --- quantization -----------------------------------------------------------------------------
class QuantizeConfig(AttackConfig):
    """Round-to-nearest symmetric per-output-channel fake quantization of router and/or expert weights."""

    bits: Literal[4, 8] = Field(8, description="integer width (int8 or int4)")
    targets: Literal["routers", "experts", "both"] = Field("both", description="which weights are quantized")


def fake_quantize(weight: torch.Tensor, bits: int, input_axis: int = -1) -> torch.Tensor:
    """Symmetric round-to-nearest: one scale per output channel (amax over `input_axis` / (2^(bits-1)-1))."""
    levels = 2 ** (bits - 1) - 1
    values = weight.float()
    scale = values.abs().amax(dim=input_axis, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny) / levels
    return ((values / scale).round().clamp(-levels, levels) * scale).to(weight.dtype)


class _StraightThrough(torch.autograd.Function):
    """`fake_quantize` forward, identity backward: the straight-through estimator of quantization-aware
    training, so the forward values are exactly the deployed (rounded) ones and the gradient reaches the
    original tensor (rounding's own gradient is 0 almost everywhere)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, bits: int, input_axis: int) -> torch.Tensor:
        return fake_quantize(weight, bits, input_axis)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad, None, None


@register_attack
class Quantize(_Deployment):
    """Quantized deployment, simulated on any device by fake quantization: while the change is applied,
    each quantized tensor's module reads a rounded copy in place of its parameter.

    bitsandbytes' real int8/nf4 kernels need a GPU and are not used here: this measures the rounding
    of round-to-nearest int8/int4, not a particular kernel's arithmetic. `experts` are the routed
    experts' matrices; shared experts, attention, biases and norms stay exact.

    Why a copy read in place of the parameter (an instance attribute, which attribute lookup finds before
    `nn.Module`'s registered parameters) and not a rounding in place: the parameter is never written, so
    it is bit for bit itself afterwards, the tensors autograd saved stay valid, and one form serves both
    answering and training under the change (`applied_for_training`): the copy is straight-through, so
    a loss reaches the original tensors. `torch.nn.utils.parametrize` would do the same but `set_`s each
    tensor when registered, which invalidates autograd's saved tensors between two forwards of a step.
    The rounded copies cost one extra copy of the quantized tensors while applied.
    """

    name = "quantize"
    config_class = QuantizeConfig
    budget_field = "bits"

    def label(self) -> str:
        return f"{self.name}-{self.config.targets}@int{self.config.bits}"

    def targets(self, loaded: LoadedModel) -> list[tuple[nn.Module, str, int]]:
        """(module, parameter name, input axis) of every quantized tensor."""
        adapter, model = loaded.adapter, loaded.model
        chosen: list[tuple[nn.Module, str, int]] = []
        if self.config.targets in ("routers", "both"):
            chosen += [(router, "weight", -1) for router in adapter.routers(model).values()]  # nn.Linear layout
        if self.config.targets in ("experts", "both"):
            for experts in adapter.experts(model).values():
                for name, parameter in experts.named_parameters():
                    if parameter.dim() >= 2:
                        owner, _, leaf = name.rpartition(".")
                        chosen.append((experts.get_submodule(owner), leaf, adapter.expert_input_axis))
        return chosen

    @contextlib.contextmanager
    def applied(self, loaded: LoadedModel) -> Iterator[None]:
        targets = self.targets(loaded)
        if any(hasattr(getattr(module, name), "ds_id") for module, name, _ in targets):
            raise ConfigError(
                "quantize runs under ZeRO 0-2 only: ZeRO-3 partitions the tensors it rounds (use ds/zero2.json)"
            )
        try:
            for module, name, axis in targets:
                rounded = _StraightThrough.apply(getattr(module, name), self.config.bits, axis)
                object.__setattr__(module, name, rounded)  # bypasses nn.Module: the parameter stays registered
            yield
        finally:
            for module, name, _ in targets:
                module.__dict__.pop(name, None)

    applied_for_training = applied  # the rounded copies are straight-through: one form for both

    def interventions(self, loaded: LoadedModel, results: Sequence[AttackResult]) -> list[Intervention]:
        return []


# --- expert capacity --------------------------------------------------------------------------
class CapacityDropConfig(AttackConfig):
    """Expert capacity factor C: per expert and layer at most ceil(C * tokens * k / E) prompt tokens."""

    factor: float = Field(1.0, gt=0, description="capacity factor C (1.0: an even share per expert)")


@register_attack
class CapacityDrop(_Deployment):
    """Token dropping as in Switch/GShard on the prompt (prefill) pass: assignments beyond an expert's
    capacity get weight 0, the token's other experts unchanged (see routing.ExpertCapacity). Decoding
    passes hold one token per sequence, which never overflows, so they are not limited."""

    name = "capacity-drop"
    config_class = CapacityDropConfig
    budget_field = "factor"

    def run(self, loaded: LoadedModel, prompts: Sequence[Prompt], context: AttackContext) -> list[AttackResult]:
        """Each prompt's pass under the capacity, counting what it drops into its result's `extra`.

        The summary is read from those results, which a run directory keeps, so a resumed run reports the
        same figures as one that answered every prompt. Capacity is per sequence, so the count is the one the
        prompt pass of generation sees, whatever the batch."""
        self.check(loaded)
        rows = encode_prompts(loaded, [p.text for p in prompts], context.generation.system_prompt)
        results = []
        for prompt, row in zip(prompts, rows, strict=True):
            capacity = ExpertCapacity(self.config.factor)
            with torch.no_grad(), intervene(loaded, capacity):
                loaded.model(input_ids=torch.tensor(row, device=loaded.device)[None])
            counts = {"dropped_assignments": capacity.dropped, "prompt_assignments": capacity.assigned}
            results.append(AttackResult(prompt_id=prompt.id, artifact=None, extra=counts))
        return results

    def interventions(self, loaded: LoadedModel, results: Sequence[AttackResult]) -> list[Intervention]:
        return [ExpertCapacity(self.config.factor)]

    def summarize(self, results: Sequence[AttackResult]) -> dict[str, Any]:
        """The share of prompt-pass assignments dropped, over every prompt this attack answered."""
        assigned = sum(r.extra["prompt_assignments"] for r in results)
        dropped = sum(r.extra["dropped_assignments"] for r in results)
        return {"dropped_fraction": round(dropped / assigned, 4)} if assigned else {}


# --- router noise -----------------------------------------------------------------------------
class RouterNoiseConfig(AttackConfig):
    """Gaussian router-logit noise of scale sigma at every token, `draws` independent draws per prompt."""

    sigma: float = Field(0.5, ge=0, description="standard deviation of the logit noise")
    draws: int = Field(1, ge=1, description="independent noise draws per prompt (each answered and judged)")
    seed: int = Field(0, description="seed of the noise")


@register_attack
class RouterNoiseDeployment(_Deployment):
    """Router noise, averaged over draws by repeating every prompt `draws` times (ids `<id>#draw<d>`),
    each with its own noise: the row's ASR (and compliance) is then the mean over draws of each draw's
    rate. Its interval treats the n x draws answers as independent, so it is narrower than an interval
    over prompts would be."""

    name = "router-noise"
    config_class = RouterNoiseConfig
    budget_field = "sigma"

    def evaluated(self, prompt_set: PromptSet, context: AttackContext) -> PromptSet:
        prompt_set = super().evaluated(prompt_set, context)
        if self.config.draws == 1:
            return prompt_set
        repeated = [
            Prompt(f"{p.id}#draw{draw}", p.text, p.metadata)
            for p in prompt_set.prompts
            for draw in range(self.config.draws)
        ]
        return PromptSet(f"{prompt_set.name}x{self.config.draws}", prompt_set.source, repeated)

    def interventions(self, loaded: LoadedModel, results: Sequence[AttackResult]) -> list[Intervention]:
        seeds = [zlib.crc32(f"{self.config.seed}:{r.prompt_id}".encode()) for r in results]
        return [RouterNoise(self.config.sigma, seeds)]
