"""What a harden run ships: decided here once, for its own report and for the ladder's choice (`moe_defense.ladder`)."""

from __future__ import annotations

from typing import Any, Literal

ROUTER_PATCH = "router patch"
ROUTER_PATCH_AND_EXPERT_LORA = "router patch + expert LoRA adapter"
FULL_CHECKPOINT = "full checkpoint"
ShipKind = Literal["router patch", "router patch + expert LoRA adapter", "full checkpoint"]


def ship_kind(summary: dict[str, Any]) -> ShipKind:
    """The router patch when only routers changed; the patch with the expert adapter that completes it for
    routers+expert-lora; else the whole checkpoint (the run changed more than a patch can carry)."""
    if summary["trainable"] == "routers+expert-lora":
        return ROUTER_PATCH_AND_EXPERT_LORA
    if summary["other_params_changed"] == 0 and summary["router_params_changed"] > 0:
        return ROUTER_PATCH
    return FULL_CHECKPOINT
