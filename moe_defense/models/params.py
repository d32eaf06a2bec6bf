"""Router-only training needs every other tensor frozen; this is the one place that decides which."""

from __future__ import annotations

from torch import nn

from moe_defense.models.loading import LoadedModel


def train_only_routers(loaded: LoadedModel) -> dict[str, nn.Parameter]:
    """Set `requires_grad` on router parameters only; return them by name."""
    routers = loaded.adapter.router_parameters(loaded.model)
    trainable = {id(p) for p in routers.values()}
    for parameter in loaded.model.parameters():
        parameter.requires_grad_(id(parameter) in trainable)
    return routers
