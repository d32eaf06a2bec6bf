"""Routing interventions: each turns into additive logit edits (-inf blocks an expert) per
(layer, sequence, real token). Tensors are addressed as (B, T, E) in real-token coordinates; B may be
1 to apply the same edit to every sequence, or the batch size so candidate routes for one prompt are
scored in one batched forward."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Literal

import torch

from moe_defense.errors import RoutingError
from moe_defense.models.adapters import RouterAdapter
from moe_defense.routing.step import StepInfo

Scope = Literal["prefill", "all"]
RouterMaskMode = Literal["random-k", "random-k-per-token", "invert"]
SCOPES: tuple[str, ...] = ("prefill", "all")


def _check_scope(scope: str) -> Scope:
    if scope not in SCOPES:
        raise RoutingError(f"scope {scope!r} is not one of {SCOPES} ('prefill' = prompt tokens only).")
    return scope  # type: ignore[return-value]


class Intervention:
    """Base class: an edit of router logits, bound to one model's adapter before use.

    Two optional deployment facts beside the logit edit: `top_k` (experts per token the router picks
    while this is active; None = the config's) and `reweight` (an edit of the chosen experts' weights
    after the choice, e.g. expert capacity dropping overflow assignments).
    """

    top_k: int | None = None

    def __init__(self, scope: Scope = "prefill", prompt_lengths: torch.Tensor | None = None) -> None:
        self.scope = _check_scope(scope)
        # Explicit prompt lengths matter when prompt + answer arrive in one pass (teacher forcing):
        # then 'prefill' must stop at the prompt, not at the end of the pass.
        self.prompt_lengths = prompt_lengths

    def bind(self, adapter: RouterAdapter) -> None:
        """Validate against the model's routing facts; raise RoutingError on any mismatch."""

    def logit_delta(self, layer: int, step: StepInfo, logits: torch.Tensor) -> torch.Tensor | None:
        """(B, T, E) additive edit for this layer and pass, or None for no edit."""
        raise NotImplementedError

    def reweight(self, layer: int, step: StepInfo, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
        """(B*T, k) weights replacing the chosen experts' weights, or None for no change."""
        return None

    def _applies(self, step: StepInfo) -> torch.Tensor:
        """(B, T) True where this intervention may act."""
        if self.scope == "all":
            return step.valid
        if self.prompt_lengths is None:
            return step.in_prompt
        lengths = self.prompt_lengths.to(step.token_index.device)
        return step.valid & (step.token_index < lengths.reshape(-1, 1))


class _TokenTableIntervention(Intervention):
    """Edits stored as per-layer tables (B or 1, T_edit, E) in real-token coordinates."""

    def __init__(self, tables: Mapping[int, torch.Tensor], scope: Scope, prompt_lengths: torch.Tensor | None):
        super().__init__(scope, prompt_lengths)
        self.tables = dict(tables)

    def bind(self, adapter: RouterAdapter) -> None:
        for layer, table in self.tables.items():
            adapter.layer_of(layer)
            if table.dim() != 3 or table.shape[-1] != adapter.num_experts:
                raise RoutingError(
                    f"layer {layer}: edit of shape {tuple(table.shape)} must be (batch, tokens, {adapter.num_experts}) "
                    f"or (tokens, {adapter.num_experts}) for this {adapter.model_type} model."
                )

    def logit_delta(self, layer: int, step: StepInfo, logits: torch.Tensor) -> torch.Tensor | None:
        table = self.tables.get(layer)
        if table is None:
            return None
        table = table.to(logits.device)
        if table.shape[0] not in (1, step.batch_size):
            raise RoutingError(
                f"layer {layer}: edit has {table.shape[0]} sequences but the batch has {step.batch_size}."
            )
        table = table.expand(step.batch_size, -1, -1)
        length = table.shape[1]
        index = step.token_index
        active = self._applies(step) & (index < length)
        rows = torch.arange(step.batch_size, device=logits.device).unsqueeze(1)
        gathered = table[rows, index.clamp(0, length - 1)]
        return torch.where(
            active.unsqueeze(-1), gathered, torch.zeros((), dtype=gathered.dtype, device=gathered.device)
        )


def _as_batched(name: str, layer: int, tensor: torch.Tensor) -> torch.Tensor:
    tensor = torch.as_tensor(tensor)
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 3:
        raise RoutingError(
            f"{name} for layer {layer} has shape {tuple(tensor.shape)}; expected (batch, tokens, ...) or (tokens, ...)."
        )
    return tensor


class ExpertMask(_TokenTableIntervention):
    """Block experts per (layer, sequence, token): `masks[layer]` is bool (B, T, E), True = never chosen."""

    def __init__(
        self, masks: Mapping[int, torch.Tensor], scope: Scope = "prefill", prompt_lengths: torch.Tensor | None = None
    ):
        tables = {}
        for layer, mask in masks.items():
            mask = _as_batched("expert mask", layer, mask)
            if mask.dtype != torch.bool:
                raise RoutingError(f"expert mask for layer {layer} must be bool (True = blocked), got {mask.dtype}.")
            tables[layer] = torch.zeros(mask.shape).masked_fill(mask, float("-inf"))
        super().__init__(tables, scope, prompt_lengths)


ForcedWeights = Literal["router", "uniform"]


class ForcedRoute(_TokenTableIntervention):
    """Force the top-k set per (layer, sequence, token): `routes[layer]` is long (B, T, k), -1 rows = unforced.

    All experts outside the forced set get -inf, so the architecture's own rule picks exactly the set
    and, with `weights="router"`, mixes it with the router's own weights (as the published F-SOUR attack
    does). `weights="uniform"` also levels the forced experts' logits, so the router no longer sets how
    they mix: the attacker of a stronger threat model, and the measure of how much of a router defense
    acts through the mixing weights alone.
    """

    def __init__(
        self,
        routes: Mapping[int, torch.Tensor],
        scope: Scope = "prefill",
        prompt_lengths: torch.Tensor | None = None,
        weights: ForcedWeights = "router",
    ):
        if weights not in ("router", "uniform"):
            raise RoutingError(f"forced route weights {weights!r} are not 'router' or 'uniform'.")
        self.routes = {
            layer: _as_batched("forced route", layer, torch.as_tensor(r)).long() for layer, r in routes.items()
        }
        self.weights = weights
        super().__init__({}, scope, prompt_lengths)

    def logit_delta(self, layer: int, step: StepInfo, logits: torch.Tensor) -> torch.Tensor | None:
        delta = super().logit_delta(layer, step, logits)
        if delta is None or self.weights == "router":
            return delta
        forced = torch.isinf(delta).any(-1, keepdim=True)  # positions where a set is forced (k < E)
        own = logits.detach().reshape(delta.shape)  # the router sees (B*T, E); edits are (B, T, E)
        return torch.where(forced, delta - own, delta)

    def bind(self, adapter: RouterAdapter) -> None:
        if self.weights == "uniform" and adapter.scoring.startswith("sparsemixer"):
            raise RoutingError(
                f"uniform forced weights level the forced experts' logits; {adapter.model_type}'s {adapter.scoring} "
                "weights are not a function of those alone, so they cannot be levelled this way."
            )
        tables = {}
        for layer, route in self.routes.items():
            adapter.layer_of(layer)
            if route.shape[-1] != adapter.top_k:
                raise RoutingError(
                    f"forced route for layer {layer} names {route.shape[-1]} experts per token; "
                    f"this {adapter.model_type} router picks top-{adapter.top_k}."
                )
            forced = (route >= 0).all(dim=-1)
            unforced = (route < 0).all(dim=-1)
            if not (forced | unforced).all():
                raise RoutingError(f"forced route for layer {layer} mixes -1 and expert ids within one token.")
            if (route >= adapter.num_experts).any():
                raise RoutingError(
                    f"forced route for layer {layer} names expert {int(route.max())}; "
                    f"experts are 0..{adapter.num_experts - 1}."
                )
            ordered = route.sort(dim=-1).values
            if ((ordered[..., 1:] == ordered[..., :-1]) & forced.unsqueeze(-1)).any():
                raise RoutingError(f"forced route for layer {layer} repeats an expert within one token.")
            allowed = torch.zeros(*route.shape[:-1], adapter.num_experts, dtype=torch.bool)
            allowed.scatter_(-1, route.clamp(min=0), True)
            blocked = ~allowed & forced.unsqueeze(-1)
            tables[layer] = torch.zeros(blocked.shape).masked_fill(blocked, float("-inf"))
        self.tables = tables
        super().bind(adapter)


class LogitBias(_TokenTableIntervention):
    """Add a finite bias to router logits: `biases[layer]` is (E,), (B, E) or (B, T, E)."""

    def __init__(
        self, biases: Mapping[int, torch.Tensor], scope: Scope = "all", prompt_lengths: torch.Tensor | None = None
    ):
        self.raw = {layer: torch.as_tensor(b, dtype=torch.float32) for layer, b in biases.items()}
        for layer, bias in self.raw.items():
            if not torch.isfinite(bias).all():
                raise RoutingError(f"logit bias for layer {layer} must be finite; use ExpertMask to block experts.")
        super().__init__({}, scope, prompt_lengths)

    def bind(self, adapter: RouterAdapter) -> None:
        for layer, bias in self.raw.items():
            adapter.layer_of(layer)
            if bias.shape[-1] != adapter.num_experts or bias.dim() > 3:
                raise RoutingError(
                    f"logit bias for layer {layer} has shape {tuple(bias.shape)}; expected (..., "
                    f"{adapter.num_experts})."
                )
        super().bind(adapter)

    def logit_delta(self, layer: int, step: StepInfo, logits: torch.Tensor) -> torch.Tensor | None:
        bias = self.raw.get(layer)
        if bias is None:
            return None
        if bias.dim() == 3:
            self.tables[layer] = bias
            return super().logit_delta(layer, step, logits)
        bias = bias.to(logits.device).reshape(-1, 1, bias.shape[-1])
        if bias.shape[0] not in (1, step.batch_size):
            raise RoutingError(
                f"logit bias for layer {layer} has {bias.shape[0]} rows but the batch has {step.batch_size}."
            )
        applies = self._applies(step).unsqueeze(-1)
        return torch.where(
            applies, bias.expand(step.batch_size, step.length, -1), torch.zeros((), device=logits.device)
        )


class RouterMask(Intervention):
    """Replace whole routers' decisions (the router-masking attack).

    `random-k` (default, as in the published work): -inf on all experts but a random k-subset, one
    subset per sequence and layer; `random-k-per-token`: a fresh subset per token; `invert`: negate
    the logits so the router picks the experts it likes least. k defaults to the router's top-k.
    """

    def __init__(
        self,
        layers: Iterable[int],
        mode: RouterMaskMode = "random-k",
        k: int | None = None,
        seed: int = 0,
        scope: Scope = "prefill",
        prompt_lengths: torch.Tensor | None = None,
    ) -> None:
        super().__init__(scope, prompt_lengths)
        if mode not in ("random-k", "random-k-per-token", "invert"):
            raise RoutingError(f"router mask mode {mode!r} is not one of random-k, random-k-per-token, invert.")
        self.layers = sorted(set(layers))
        self.mode = mode
        self.k = k
        self.seed = seed
        self._num_experts = 0
        self._subsets: dict[tuple[int, int], torch.Tensor] = {}

    def bind(self, adapter: RouterAdapter) -> None:
        for layer in self.layers:
            adapter.layer_of(layer)
        self.k = adapter.top_k if self.k is None else self.k
        if not adapter.top_k <= self.k <= adapter.num_experts:
            raise RoutingError(
                f"router mask keeps k={self.k} experts; it must be between top-k={adapter.top_k} and "
                f"{adapter.num_experts}."
            )
        self._num_experts = adapter.num_experts

    def _draw(self, layer: int, position: int, batch: int) -> torch.Tensor:
        """(batch, E) bool of blocked experts, reproducible from (seed, layer, position)."""
        cached = self._subsets.get((layer, position))
        if cached is None or cached.shape[0] < batch:
            key = hashlib.sha256(f"{self.seed}:{layer}:{position}".encode()).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") & (2**63 - 1))
            scores = torch.rand(batch, self._num_experts, generator=generator)
            keep = scores.topk(self.k, dim=-1).indices
            cached = torch.ones(batch, self._num_experts, dtype=torch.bool).scatter_(1, keep, False)
            self._subsets[(layer, position)] = cached
        return cached[:batch]

    def logit_delta(self, layer: int, step: StepInfo, logits: torch.Tensor) -> torch.Tensor | None:
        if layer not in self.layers:
            return None
        applies = self._applies(step).unsqueeze(-1)
        zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
        if self.mode == "invert":
            delta = (-2.0 * logits.detach()).reshape(step.batch_size, step.length, -1)
            return torch.where(applies, delta, zero)
        if self.mode == "random-k":
            blocked = self._draw(layer, -1, step.batch_size).unsqueeze(1).expand(-1, step.length, -1)
        else:
            positions = step.token_index.clamp(min=0)
            per_position = {p: self._draw(layer, p, step.batch_size) for p in positions.unique().tolist()}
            blocked = torch.stack(
                [torch.stack([per_position[p][row] for p in positions[row].tolist()]) for row in range(step.batch_size)]
            )
        blocked = blocked.to(logits.device) & applies
        return torch.zeros(blocked.shape, dtype=logits.dtype, device=logits.device).masked_fill(blocked, float("-inf"))


def _position_generator(*key: object) -> torch.Generator:
    digest = hashlib.sha256(":".join(map(str, key)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class TopK(Intervention):
    """Route every token to `k` experts instead of the config's top-k (a deployment that changes
    `num_experts_per_tok`), by the architecture's own rule and weight normalisation (`adapter.select`)."""

    def __init__(self, k: int) -> None:
        super().__init__("all")
        self.top_k = int(k)

    def bind(self, adapter: RouterAdapter) -> None:
        if not 1 <= self.top_k <= adapter.num_experts:
            raise RoutingError(f"top-k {self.top_k} must be between 1 and the {adapter.num_experts} experts.")
        if adapter.fixed_top_k and self.top_k != adapter.top_k:
            raise RoutingError(
                f"{adapter.model_type}'s {adapter.scoring} routing is defined for top-{adapter.top_k} only; "
                f"top-{self.top_k} cannot be reproduced faithfully."
            )

    def logit_delta(self, layer: int, step: StepInfo, logits: torch.Tensor) -> torch.Tensor | None:
        return None


class ExpertCapacity(Intervention):
    """Expert capacity as in GShard/Switch: per sequence and layer, each expert takes at most
    ceil(factor * tokens * k / E) of the assignments in scope (prompt tokens by default); the rest get
    weight 0 (dropped; the token keeps its other experts and the residual stream).

    Assignments queue choice-major as in GShard: every token's first choice (in token order), then
    every second choice, and so on. Surviving weights are not renormalised (GShard combines with the
    gates as they were), so a token that loses an expert gets a smaller MoE output. `dropped` and
    `assigned` count what was dropped, for the attack's summary.
    """

    def __init__(self, factor: float, scope: Scope = "prefill", prompt_lengths: torch.Tensor | None = None) -> None:
        super().__init__(scope, prompt_lengths)
        if not factor > 0:
            raise RoutingError(f"capacity factor must be > 0, got {factor}.")
        self.factor = float(factor)
        self._num_experts = 0
        self.dropped = 0
        self.assigned = 0

    def bind(self, adapter: RouterAdapter) -> None:
        self._num_experts = adapter.num_experts

    def logit_delta(self, layer: int, step: StepInfo, logits: torch.Tensor) -> torch.Tensor | None:
        return None

    def capacity(self, tokens: int, k: int) -> int:
        return math.ceil(self.factor * tokens * k / self._num_experts)

    def reweight(self, layer: int, step: StepInfo, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
        applies = self._applies(step)
        if not bool(applies.any()):
            return None
        batch, length, k = step.batch_size, step.length, indices.shape[-1]
        shaped_weights = weights.reshape(batch, length, k)
        order = shaped_weights.argsort(dim=-1, descending=True, stable=True)  # choice rank per token
        ranked = indices.reshape(batch, length, k).gather(-1, order)
        dropped = torch.zeros(batch, length, k, dtype=torch.bool, device=weights.device)
        for row in range(batch):
            tokens = applies[row].nonzero().squeeze(-1)
            if tokens.numel() == 0:
                continue
            queue = ranked[row, tokens].T.reshape(-1)  # choice-major, token order within a choice
            hits = torch.nn.functional.one_hot(queue, self._num_experts)
            slot = (hits.cumsum(0) * hits).sum(-1) - 1  # place of each assignment in its expert's queue
            over = (slot >= self.capacity(tokens.numel(), k)).reshape(k, -1).T
            dropped[row, tokens] = torch.zeros_like(over).scatter_(-1, order[row, tokens], over)
            self.assigned += queue.numel()
            self.dropped += int(over.sum())
        return shaped_weights.masked_fill(dropped, 0.0).reshape(weights.shape)


class RouterNoise(Intervention):
    """Gaussian noise of scale `sigma` on router logits, per (sequence, layer, token position).

    `seeds` gives one seed per batch row (or one for all rows); the draw at a position depends only
    on (seed, layer, position), so batching and the prefill/decode split never change it.
    """

    def __init__(self, sigma: float, seeds: Iterable[int] = (0,), scope: Scope = "all") -> None:
        super().__init__(scope)
        if not sigma >= 0:
            raise RoutingError(f"router noise sigma must be >= 0, got {sigma}.")
        self.sigma = float(sigma)
        self.seeds = list(seeds)
        self._num_experts = 0

    def bind(self, adapter: RouterAdapter) -> None:
        self._num_experts = adapter.num_experts

    def logit_delta(self, layer: int, step: StepInfo, logits: torch.Tensor) -> torch.Tensor | None:
        if self.sigma == 0:
            return None
        if len(self.seeds) not in (1, step.batch_size):
            raise RoutingError(f"router noise has {len(self.seeds)} seeds but the batch has {step.batch_size}.")
        applies = self._applies(step)
        noise = torch.zeros(step.batch_size, step.length, self._num_experts)
        for row in range(step.batch_size):
            seed = self.seeds[row if len(self.seeds) > 1 else 0]
            for column in applies[row].nonzero().squeeze(-1).tolist():
                position = int(step.token_index[row, column])
                generator = _position_generator(seed, layer, position)
                noise[row, column] = torch.randn(self._num_experts, generator=generator)
        return (noise * self.sigma).to(logits.device)
