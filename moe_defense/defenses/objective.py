"""The hardening objective: refusal under unsafe routes, plus utility retention; every term switchable.

    loss = w_adv   * CE(refusal | harmful prompt, routes from the pool)          adversarial refusal
         + w_rec   * CE(refusal | harmful prompt + target, routes from the pool)  recovery after a forced opening
         + w_spr   * CE(refusal | harmful prompt, random experts forced at n pairs) spread refusal
         + w_mask  * CE(refusal | harmful prompt, top-RoSais routers masked)     router-mask refusal
         + w_ref   * CE(refusal | harmful prompt, own routing)                   refusal kept
         + w_rep   * router mass on the experts the unsafe routes forced         route repulsion
         + w_out   * KL(original || current) next-token, benign answers          output retention
         + w_pout  * the same KL, both models under the same random forced routes  utility under perturbation
         + w_route * KL(original || current) router distributions, benign        routing drift (SafeMoE-style)
         + w_dep   * CE(refusal | harmful prompt, a sampled deployment change)   refusal a server keeps
         + w_dout  * the output KL, both models under the same deployment change utility a server keeps
         + w_cons  * KL(own || under route), each layer's mean router distribution, harmful   RASA's consistency

Why recovery: an unsafe route forces the prompt and the target's first ~10 answer positions; later
positions are routed by the router again, which is the router's lever to return to a refusal. Why the
perturbed output KL: trained with refusal alone under forced routes, routers learn "forced route ->
refuse" and refuse benign requests too; the same perturbation on benign answers must change nothing.

Why the deployment terms: forced routes need code-level access, while every serving team changes routing
(fewer experts per token, pruned experts, quantized weights, capacity limits); see `deployment_changes`.

The reference for the KL terms is the original model: when only routers train, it is the same
network with the original router tensors swapped in (no second copy of the weights).
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from moe_defense.attacks.artifacts import RouteArtifact
from moe_defense.defenses.deployment_changes import DeploymentChange
from moe_defense.defenses.examples import IGNORE, TrainingSequence, collate
from moe_defense.defenses.zero3 import gathered
from moe_defense.models.loading import LoadedModel
from moe_defense.models.params import TrainableScope
from moe_defense.routing import ForcedRoute, Intervention, RouterMask, intervene, record_routing

SPREAD_ANSWER_TOKENS = 12  # answer positions random forcing may reach: where unsafe routes force (the target)


class LossWeights(BaseModel):
    """Weight of each term of the hardening objective; 0 switches a term off (and skips its forward)."""

    model_config = ConfigDict(extra="forbid")

    adversarial_refusal: float = Field(1.0, ge=0, description="refusal CE under unsafe routes from the pool")
    recovery: float = Field(
        0.0, ge=0, description="refusal CE after the affirmative target, under the pool's route (recover from it)"
    )
    spread_refusal: float = Field(
        0.0, ge=0, description="refusal CE under random experts forced at spread_pairs random (token, layer) pairs"
    )
    mask_refusal: float = Field(0.0, ge=0, description="refusal CE with the top-RoSais routers randomly masked")
    refusal: float = Field(1.0, ge=0, description="refusal CE under the model's own routing")
    route_repulsion: float = Field(0.0, ge=0, description="router probability on the experts unsafe routes forced")
    output_kl: float = Field(1.0, ge=0, description="benign next-token KL to the original model")
    perturbed_output_kl: float = Field(
        0.0, ge=0, description="benign next-token KL to the original model, both under the same random forced routes"
    )
    routing_kl: float = Field(0.1, ge=0, description="benign router-distribution KL to the original model")
    deployment_refusal: float = Field(
        0.0, ge=0, description="refusal CE under a deployment change sampled per step (deployment_changes)"
    )
    deployment_output_kl: float = Field(
        0.0, ge=0, description="benign next-token KL to the original model, both under the same sampled change"
    )
    routing_consistency: float = Field(
        0.0,
        ge=0,
        description="KL from the harmful batch's mean router distribution per layer under its own routing to the "
        "same under the pool's routes (RASA's router step)",
    )


def response_ce(logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over response tokens (of `rows` only, when given)."""
    shifted, targets = logits[:, :-1].float(), labels[:, 1:]
    if rows is not None:
        shifted, targets = shifted[rows], targets[rows]
    return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)


def answer_kl(logits: torch.Tensor, reference_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean KL(reference || current) of the next-token distributions over answer tokens."""
    answer = labels[:, 1:] != IGNORE
    kl = F.kl_div(
        logits[:, :-1].float().log_softmax(-1),
        reference_logits[:, :-1].log_softmax(-1),
        log_target=True,
        reduction="none",
    ).sum(-1)
    return (kl * answer).sum() / answer.sum().clamp(min=1)


class Reference:
    """The original model's outputs, for the KL terms."""

    def __init__(self, loaded: LoadedModel, scope: TrainableScope) -> None:
        self.loaded = loaded
        self.scope = scope
        if scope == "routers":
            self.router_tensors = {
                n: p.detach().clone() for n, p in loaded.adapter.router_parameters(loaded.model).items()
            }
            self.copy = None
        else:  # other tensors train too: keep a frozen copy of the whole original model
            self.router_tensors = {}
            self.copy = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model).eval().requires_grad_(False))

    @contextmanager
    def _original(self) -> Iterator[LoadedModel]:
        if self.copy is not None:
            yield self.copy
            return
        current = self.loaded.adapter.router_parameters(self.loaded.model)
        with gathered(current.values()):  # ZeRO-3: whole (persistent) routers, so the swap is what forward reads
            saved = {n: p.data for n, p in current.items()}
            try:
                for name, parameter in current.items():
                    parameter.data = self.router_tensors[name].to(parameter.device, parameter.dtype)
                yield self.loaded
            finally:
                for name, parameter in current.items():
                    parameter.data = saved[name]

    @torch.no_grad()
    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        need_routing: bool,
        under: Callable[[LoadedModel], AbstractContextManager[Any]] = nullcontext,
    ) -> tuple[torch.Tensor, dict]:
        """The original's logits (and routing), under the change `under(original)` holds: the same forcing or
        deployment change the trained model meets, applied to the original."""
        with (
            self._original() as original,
            under(original),
            record_routing(original, keep_logits=need_routing) as recorder,
        ):
            was_training = original.model.training
            original.model.eval()
            try:
                logits = original.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            finally:
                original.model.train(was_training)
        return logits.float(), (recorder.trace() if need_routing else {})


def random_forcing(
    loaded: LoadedModel, batch: Mapping[str, torch.Tensor], pairs: int, generator: torch.Generator
) -> ForcedRoute:
    """Random experts forced at `pairs` random (token, layer) pairs of every row, over its prompt and
    first answer tokens: a perturbation shaped like an unsafe route but aimed nowhere."""
    adapter = loaded.adapter
    layers = adapter.moe_layers()
    lengths = batch["attention_mask"].sum(-1).tolist()
    prompt_lengths = batch["prompt_lengths"].tolist()
    width = int(batch["input_ids"].shape[1])
    routes = {layer: torch.full((len(lengths), width, adapter.top_k), -1, dtype=torch.long) for layer in layers}
    for row, (length, prompt_length) in enumerate(zip(lengths, prompt_lengths, strict=True)):
        span = min(int(length), int(prompt_length) + SPREAD_ANSWER_TOKENS)
        for cell in torch.randperm(span * len(layers), generator=generator)[:pairs].tolist():
            experts = torch.randperm(adapter.num_experts, generator=generator)[: adapter.top_k]
            routes[layers[cell % len(layers)]][row, cell // len(layers)] = experts
    return ForcedRoute(routes, scope="all")


@torch.no_grad()
def benign_nll(loaded: LoadedModel, sequences: list[TrainingSequence], batch_size: int = 32) -> float:
    """Mean per-token NLL of the original model's benign answers under `loaded` (lower: closer)."""
    total, count = 0.0, 0
    pad = loaded.tokenizer.pad_token_id
    for start in range(0, len(sequences), batch_size):
        batch = {k: v.to(loaded.device) for k, v in collate(sequences[start : start + batch_size], pad).items()}
        logits = loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        tokens = int((batch["labels"][:, 1:] != IGNORE).sum())
        if tokens:
            # the training loss's mean, re-weighted to a sum
            total += float(response_ce(logits, batch["labels"])) * tokens
            count += tokens
    return total / max(count, 1)


@dataclass
class HarmfulBatch:
    """A harmful batch with the unsafe route (or None) each row trains against, and the same rows as
    recoveries (the target, then the refusal) when the recovery term is on."""

    tensors: Mapping[str, torch.Tensor]
    routes: Sequence[RouteArtifact | None]
    route_interventions: list[Intervention]
    recovery: Mapping[str, torch.Tensor] | None = None


class HardeningObjective:
    """Computes the switched-on terms for one (harmful, benign) batch pair."""

    def __init__(
        self,
        loaded: LoadedModel,
        weights: LossWeights,
        reference: Reference,
        mask_layers: Sequence[int] = (),
        spread_pairs: int = 32,
        changes: Sequence[DeploymentChange] = (),
    ) -> None:
        self.loaded = loaded
        self.weights = weights
        self.reference = reference
        self.mask_layers = list(mask_layers)
        self.spread_pairs = spread_pairs
        self.changes = list(changes)

    def __call__(
        self, model: nn.Module, harmful: HarmfulBatch, benign: Mapping[str, torch.Tensor], rng: random.Random
    ) -> dict[str, torch.Tensor]:
        w = self.weights
        terms: dict[str, torch.Tensor] = {}
        h = harmful.tensors
        routed = torch.tensor([r is not None for r in harmful.routes], device=h["input_ids"].device)
        if w.adversarial_refusal and routed.any():
            with intervene(self.loaded, *harmful.route_interventions):
                logits = model(input_ids=h["input_ids"], attention_mask=h["attention_mask"]).logits
            terms["adversarial_refusal"] = response_ce(logits, h["labels"], routed)
        if w.recovery and harmful.recovery is not None:
            r = harmful.recovery
            with intervene(self.loaded, *harmful.route_interventions):
                logits = model(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits
            terms["recovery"] = response_ce(logits, r["labels"])
        generator = (
            torch.Generator().manual_seed(rng.randrange(2**31)) if w.spread_refusal or w.perturbed_output_kl else None
        )
        if w.spread_refusal:
            with intervene(self.loaded, random_forcing(self.loaded, h, self.spread_pairs, generator)):
                logits = model(input_ids=h["input_ids"], attention_mask=h["attention_mask"]).logits
            terms["spread_refusal"] = response_ce(logits, h["labels"])
        if w.mask_refusal and self.mask_layers:
            mask = RouterMask(self.mask_layers, mode="random-k-per-token", seed=rng.randrange(2**31))
            with intervene(self.loaded, mask):
                logits = model(input_ids=h["input_ids"], attention_mask=h["attention_mask"]).logits
            terms["mask_refusal"] = response_ce(logits, h["labels"])
        if w.routing_consistency and routed.any():
            terms["routing_consistency"] = self._routing_consistency(model, h, harmful.route_interventions, routed)
        if w.refusal or w.route_repulsion:
            with record_routing(self.loaded, keep_logits=True, detach=False) as recorder:
                logits = model(input_ids=h["input_ids"], attention_mask=h["attention_mask"]).logits
            if w.refusal:
                terms["refusal"] = response_ce(logits, h["labels"])
            if w.route_repulsion and routed.any():
                terms["route_repulsion"] = self._repulsion(recorder.trace(), harmful.routes)
        if w.output_kl or w.routing_kl:
            with record_routing(self.loaded, keep_logits=bool(w.routing_kl), detach=False) as recorder:
                logits = model(input_ids=benign["input_ids"], attention_mask=benign["attention_mask"]).logits
            ref_logits, ref_routing = self.reference.forward(benign, need_routing=bool(w.routing_kl))
            if w.output_kl:
                terms["output_kl"] = answer_kl(logits, ref_logits, benign["labels"])
            if w.routing_kl:
                terms["routing_kl"] = self._routing_kl(recorder.trace(), ref_routing)
        if w.perturbed_output_kl:
            forcing = random_forcing(self.loaded, benign, self.spread_pairs, generator)
            with intervene(self.loaded, forcing):
                logits = model(input_ids=benign["input_ids"], attention_mask=benign["attention_mask"]).logits
            ref_logits, _ = self.reference.forward(
                benign, need_routing=False, under=lambda original: intervene(original, forcing)
            )
            terms["perturbed_output_kl"] = answer_kl(logits, ref_logits, benign["labels"])
        if (w.deployment_refusal or w.deployment_output_kl) and self.changes:
            terms |= self._under_deployment(model, h, benign, rng.choice(self.changes), rng)
        weight_of = w.model_dump()
        terms["loss"] = sum(weight_of[name] * value for name, value in terms.items())
        return terms

    def _under_deployment(
        self,
        model: nn.Module,
        harmful: Mapping[str, torch.Tensor],
        benign: Mapping[str, torch.Tensor],
        change: DeploymentChange,
        rng: random.Random,
    ) -> dict[str, torch.Tensor]:
        """The deployment terms under one change: refusal kept on harmful rows, benign outputs kept as the
        original model gives them under the same change (not as it gives them unchanged)."""
        w, terms = self.weights, {}
        if w.deployment_refusal:
            with change.applied(self.loaded, len(harmful["input_ids"]), rng):
                logits = model(input_ids=harmful["input_ids"], attention_mask=harmful["attention_mask"]).logits
            terms["deployment_refusal"] = response_ce(logits, harmful["labels"])
        if w.deployment_output_kl:
            rows = len(benign["input_ids"])
            state = rng.getstate()  # the reference draws the same per-row noise as the model
            with change.applied(self.loaded, rows, rng):
                logits = model(input_ids=benign["input_ids"], attention_mask=benign["attention_mask"]).logits
            rng.setstate(state)
            ref_logits, _ = self.reference.forward(
                benign, need_routing=False, under=lambda original: change.applied(original, rows, rng)
            )
            terms["deployment_output_kl"] = answer_kl(logits, ref_logits, benign["labels"])
        return terms

    def _routing_consistency(
        self, model: nn.Module, harmful: Mapping[str, torch.Tensor], routes: Sequence[Intervention], rows: torch.Tensor
    ) -> torch.Tensor:
        """RASA's router loss: per layer, the routed rows' mean router distribution under the unsafe route is
        pulled to the same rows' mean under their own routing (the detached target), averaged over layers.
        Means, not per-token distributions, as RASA compares a jailbreak with a differently worded plain prompt."""
        inputs = {"input_ids": harmful["input_ids"], "attention_mask": harmful["attention_mask"]}
        with torch.no_grad(), record_routing(self.loaded, keep_logits=True) as own:
            model(**inputs)
        with intervene(self.loaded, *routes), record_routing(self.loaded, keep_logits=True, detach=False) as routed:
            model(**inputs)
        target, current = own.trace(), routed.trace()
        values = []
        for layer, route in current.items():
            valid = (route.valid & rows[:, None]).unsqueeze(-1)
            mean = (route.logits.softmax(-1) * valid).sum((0, 1)) / valid.sum().clamp(min=1)
            goal = (target[layer].logits.softmax(-1) * valid).sum((0, 1)) / valid.sum().clamp(min=1)
            values.append(F.kl_div((mean + 1e-8).log(), goal + 1e-8, reduction="sum"))
        return torch.stack(values).mean()

    @staticmethod
    def _routing_kl(current: Mapping[int, object], reference: Mapping[int, object]) -> torch.Tensor:
        values = []
        for layer, route in current.items():
            ref = reference[layer]
            valid = route.valid & ref.valid
            kl = F.kl_div(
                route.logits.log_softmax(-1), ref.logits.log_softmax(-1), log_target=True, reduction="none"
            ).sum(-1)
            values.append((kl * valid).sum() / valid.sum().clamp(min=1))
        return torch.stack(values).mean()

    @staticmethod
    def _repulsion(current: Mapping[int, object], routes: Sequence[RouteArtifact | None]) -> torch.Tensor:
        """Mean router probability (own routing) on the experts each unsafe route forced, per forced pair."""
        masses = []
        for row, artifact in enumerate(routes):
            if artifact is None:
                continue
            for layer, tokens in artifact.forced.items():
                probs = current[layer].logits[row].softmax(-1)
                for token, experts in tokens.items():
                    if token < probs.shape[0] and bool(current[layer].valid[row, token]):
                        masses.append(probs[token, experts].sum())
        if not masses:
            return torch.zeros((), requires_grad=True)
        return torch.stack(masses).mean()
