"""`RouterAdapter`: everything moe-defense needs to know about one MoE architecture.

An adapter reads experts, top-k and MoE layers from the config (never from a checkpoint table),
finds the router modules, and re-implements the router's expert choice so interventions act before
top-k. Every transformers 5 router returns `(router_logits, weights, indices)` with raw pre-selection
logits first; the routing layer relies on that contract and the tests check it per architecture.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from moe_defense.errors import RegistryError, RoutingError, UnsupportedArchitectureError
from moe_defense.registry import Registry

ADAPTERS: Registry[type[RouterAdapter]] = Registry(
    "router adapter for model_type", hint="Add one in moe_defense/models/adapters/."
)

# A config key like these with a non-zero value reveals a Mixture-of-Experts model (at any nesting
# depth: DBRX keeps it under `ffn_config`); used to tell "dense" from "unsupported MoE".
_MOE_KEY = re.compile(r"experts")


def _looks_moe(values: Any) -> bool:
    if isinstance(values, dict):
        return any(
            (_MOE_KEY.search(str(k)) and v and not isinstance(v, dict)) or _looks_moe(v) for k, v in values.items()
        )
    return False


TINY_COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}


def register_adapter(cls: type[RouterAdapter]) -> type[RouterAdapter]:
    """Register an adapter class under its `model_type`."""
    return ADAPTERS.register(cls.model_type)(cls)


@dataclass(frozen=True)
class RouterFacts:
    """What `moe-defense inspect` prints: the routing facts of one loaded model."""

    model_type: str
    num_layers: int
    moe_layers: list[int]
    num_experts: int
    top_k: int
    scoring: str
    router_modules: list[str]
    router_parameters: list[str]
    router_buffers: list[str]
    num_router_parameters: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RouterAdapter:
    """Describes one MoE architecture, keyed by `config.model_type`."""

    model_type: ClassVar[str]
    scoring: ClassVar[str]
    num_experts_key: ClassVar[str] = "num_local_experts"
    block_attr: ClassVar[str] = "mlp"
    router_attr: ClassVar[str] = "gate"
    router_buffer_names: ClassVar[tuple[str, ...]] = ()
    tiny_overrides: ClassVar[dict[str, Any]] = {}
    # True where the selection rule is defined for the config's top-k only (PhiMoE's sparsemixer).
    fixed_top_k: ClassVar[bool] = False
    experts_attr: ClassVar[str] = "experts"  # the MoE block's routed-experts module
    # Axis of an expert weight matrix that holds its input features: -1 where experts apply
    # `F.linear(x, W)` (W is out x in), -2 where they compute `x @ W` (gpt-oss).
    expert_input_axis: ClassVar[int] = -1

    def __init__(self, config: Any) -> None:
        self.config = config

    # --- facts from the config -------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def num_experts(self) -> int:
        return int(getattr(self.config, self.num_experts_key))

    @property
    def top_k(self) -> int:
        return int(self.config.num_experts_per_tok)

    def moe_layers(self) -> list[int]:
        """Decoder layers whose MLP is a routed MoE block (default: all of them)."""
        return list(range(self.num_layers))

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        """Config overrides for a random-init model small enough for CPU tests."""
        return {**TINY_COMMON, **cls.tiny_overrides}

    # --- modules -------------------------------------------------------------------------
    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        base = model.get_decoder() if hasattr(model, "get_decoder") else model
        layers = getattr(base, "layers", None)
        if not isinstance(layers, nn.ModuleList):
            raise UnsupportedArchitectureError(
                f"cannot find the decoder layers of {type(model).__name__} (expected `.layers`)."
            )
        return layers

    def routers(self, model: nn.Module) -> dict[int, nn.Module]:
        """MoE layer index -> router module, checked against the config's MoE layers."""
        layers = self.decoder_layers(model)
        found: dict[int, nn.Module] = {}
        for index, layer in enumerate(layers):
            block = getattr(layer, self.block_attr, None)
            router = getattr(block, self.router_attr, None) if block is not None else None
            if router is not None and isinstance(getattr(router, "weight", None), torch.Tensor):
                found[index] = router
        expected = self.moe_layers()
        if sorted(found) != expected:
            raise UnsupportedArchitectureError(
                f"{self.model_type}: routers found in layers {sorted(found)} but the config says MoE layers "
                f"are {expected}; the adapter in moe_defense/models/adapters/ does not match this model."
            )
        return found

    def experts(self, model: nn.Module) -> dict[int, nn.Module]:
        """MoE layer index -> routed-experts module (called as `experts(hidden, indices, weights)`)."""
        layers = self.decoder_layers(model)
        found = {
            index: getattr(getattr(layers[index], self.block_attr), self.experts_attr, None)
            for index in self.moe_layers()
        }
        missing = [index for index, module in found.items() if not isinstance(module, nn.Module)]
        if missing:
            raise UnsupportedArchitectureError(
                f"{self.model_type}: no `{self.block_attr}.{self.experts_attr}` experts module in layers {missing}."
            )
        return found

    def router_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Trainable router tensors (`weight`, and `bias` where the router has one), by full name."""
        names = {id(p): n for n, p in model.named_parameters()}
        return {names[id(p)]: p for router in self.routers(model).values() for p in router.parameters(recurse=False)}

    def router_tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Every router tensor, trainable or not (e.g. DeepSeek-V3's `e_score_correction_bias` buffer)."""
        tensors: dict[str, torch.Tensor] = dict(self.router_parameters(model))
        buffer_names = {id(b): n for n, b in model.named_buffers()}
        for router in self.routers(model).values():
            for name in self.router_buffer_names:
                buffer = getattr(router, name)
                tensors[buffer_names[id(buffer)]] = buffer
        return tensors

    def layer_of(self, layer: int) -> int:
        """Validate that `layer` is a MoE layer and return it."""
        if layer not in self.moe_layers():
            raise RoutingError(
                f"layer {layer} of {self.model_type} is not a MoE layer (MoE layers: {self.moe_layers()})."
            )
        return layer

    # --- selection -----------------------------------------------------------------------
    def select(
        self,
        router: nn.Module,
        logits: torch.Tensor,
        blocked: torch.Tensor | None,
        out_dtype: torch.dtype,
        top_k: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The router's own expert choice on `logits` (tokens x experts); `blocked` experts never win.

        `top_k` (default: the config's) picks that many experts by the same rule, weights normalised
        as the architecture normalises them (a deployment that lowers `num_experts_per_tok`)."""
        raise NotImplementedError

    def facts(self, model: nn.Module) -> RouterFacts:
        routers = self.routers(model)
        module_names = {id(module): name for name, module in model.named_modules()}
        params = self.router_parameters(model)
        tensors = self.router_tensors(model)
        return RouterFacts(
            model_type=self.model_type,
            num_layers=self.num_layers,
            moe_layers=self.moe_layers(),
            num_experts=self.num_experts,
            top_k=self.top_k,
            scoring=self.scoring,
            router_modules=[module_names[id(router)] for router in routers.values()],
            router_parameters=sorted(params),
            router_buffers=sorted(set(tensors) - set(params)),
            num_router_parameters=sum(p.numel() for p in params.values()),
        )


def adapter_for(config: Any) -> RouterAdapter:
    """The adapter for `config.model_type`; dense and unsupported models fail with the supported list."""
    model_type = getattr(config, "model_type", None)
    try:
        adapter_cls = ADAPTERS.get(model_type)
    except RegistryError as error:
        supported = ", ".join(ADAPTERS.names())
        if not _looks_moe(config.to_dict()):
            raise UnsupportedArchitectureError(
                f"model_type {model_type!r} is a dense model (no MoE routers in its config); moe-defense "
                f"needs a Mixture-of-Experts checkpoint (supported: {supported})."
            ) from error
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} has no router adapter (supported: {supported}). "
            "Add one in moe_defense/models/adapters/."
        ) from error
    return adapter_cls(config)
