"""Which tensors a training run may change: the one place that decides (routers only, by default)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from moe_defense.errors import UnsupportedArchitectureError
from moe_defense.models.adapters import adapter_for

TrainableScope = Literal["routers", "routers+expert-lora", "routers+experts", "experts", "all"]
EXPERT_MARKER = ".experts."  # every supported architecture keeps routed experts under `...mlp.experts.`


def trainable_parameters(model: nn.Module, scope: TrainableScope) -> dict[str, nn.Parameter]:
    """The parameters `scope` may change, by full name (routers: weight, and bias where the router has one;
    routers+expert-lora: the routers and, once the LoRA update is merged, the routed experts)."""
    named = dict(model.named_parameters())
    if scope == "all":
        return named
    chosen: dict[str, nn.Parameter] = {}
    if scope in ("routers", "routers+experts", "routers+expert-lora"):
        chosen.update(adapter_for(model.config).router_parameters(model))
    if scope in ("experts", "routers+experts", "routers+expert-lora"):
        chosen.update({name: p for name, p in named.items() if EXPERT_MARKER in name})
    return chosen


def set_trainable(model: nn.Module, scope: TrainableScope) -> dict[str, nn.Parameter]:
    """Set `requires_grad` on the parameters of `scope` only; return them by name. The experts of
    routers+expert-lora train through LoRA factors (`defenses/lora.py`), never directly: routers only here."""
    chosen = trainable_parameters(model, "routers" if scope == "routers+expert-lora" else scope)
    keep = {id(p) for p in chosen.values()}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in keep)
    return chosen


def keep_only_experts(model: nn.Module, keep: Mapping[int, Sequence[int]]) -> list[torch.utils.hooks.RemovableHandle]:
    """Zero the gradient of every routed expert except `keep[layer]` (MoE layer -> expert indices; a layer not
    in `keep` keeps none), so under AdamW without weight decay the others stay bit-identical: training a few
    named experts (RASA's repair, organism-smol's safety experts) in the fused expert tensors every supported
    architecture uses (`(num_experts, ...)`). Call after `set_trainable`; remove the handles when done."""
    adapter = adapter_for(model.config)
    handles = []
    for layer, experts in adapter.experts(model).items():
        for name, parameter in experts.named_parameters(recurse=False):
            if parameter.shape[0] != adapter.num_experts:
                raise UnsupportedArchitectureError(
                    f"{adapter.model_type}: expert tensor {name} of layer {layer} is not stacked per expert "
                    f"(shape {tuple(parameter.shape)}), so single experts cannot be trained alone."
                )
            if not parameter.requires_grad:
                continue
            mask = torch.zeros(parameter.shape[0], *([1] * (parameter.dim() - 1)), dtype=parameter.dtype)
            mask[list(keep.get(layer, ()))] = 1
            handles.append(parameter.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device, grad.dtype)))
    return handles
