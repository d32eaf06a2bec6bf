"""Routers + LoRA on the routed experts (PEFT `target_parameters`): the rung between a router patch and a
full checkpoint.

Routers train fully; every routed expert weight (the fused 3-D `experts.*` parameters of transformers 5)
trains through rank-r factors, so the patch is the router tensors plus an adapter of
r * (in + out) * experts numbers per weight. After training the factors are merged into the weights:
the hardened model stays a plain checkpoint, and the adapter is saved beside it in PEFT's own format.
"""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from torch import nn

from moe_defense.errors import ConfigError
from moe_defense.models.loading import LoadedModel
from moe_defense.models.params import EXPERT_MARKER

EXPERT_LORA = "expert_lora"  # the adapter directory a harden run writes


def expert_targets(model: nn.Module) -> list[str]:
    """The routed experts' fused weights as PEFT `target_parameters` (module path . parameter name)."""
    targets = sorted(
        {
            name.split(".layers.")[-1].split(".", 1)[1]
            for name, p in model.named_parameters()
            if EXPERT_MARKER in name and p.dim() == 3
        }
    )
    if not targets:
        raise ConfigError(
            f"{type(model).__name__} keeps no fused 3-D expert weights under '{EXPERT_MARKER}': "
            "routers+expert-lora needs them (use routers+experts to train the experts directly)."
        )
    return targets


def attach_expert_lora(loaded: LoadedModel, rank: int) -> PeftModel:
    """Wrap `loaded.model` with LoRA factors on every routed expert weight; the routers stay trainable.
    The wrapped modules are the same objects, so routing hooks and interventions keep working."""
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=[], target_parameters=expert_targets(loaded.model))
    wrapped = get_peft_model(loaded.model, config)  # freezes every base weight
    for parameter in loaded.adapter.router_parameters(loaded.model).values():
        parameter.requires_grad_(True)
    return wrapped


def merge_expert_lora(wrapped: PeftModel, out: Path | None) -> nn.Module:
    """Save the adapter (PEFT format) to `out`, then fold the factors into the expert weights in place."""
    if out is not None:
        wrapped.save_pretrained(str(out))
    return wrapped.merge_and_unload()


def adapter_numbers(wrapped: PeftModel) -> int:
    return sum(t.numel() for t in get_peft_model_state_dict(wrapped).values())
