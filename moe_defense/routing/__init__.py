"""Record and steer MoE routing per layer and token, as context managers that always restore the model.

with record_routing(loaded) as recorder:
    loaded.model.generate(**batch)
routes = recorder.trace()

with intervene(loaded, ForcedRoute({3: route}), RouterMask([5])):
    loaded.model(**batch)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from torch import nn

from moe_defense.models.loading import LoadedModel
from moe_defense.routing.controller import controller_for
from moe_defense.routing.interventions import (
    ExpertCapacity,
    ExpertMask,
    ForcedRoute,
    ForcedWeights,
    Intervention,
    LogitBias,
    RouterMask,
    RouterMaskMode,
    RouterNoise,
    Scope,
    TopK,
)
from moe_defense.routing.record import LayerRoute, RoutingRecorder
from moe_defense.routing.step import StepInfo

__all__ = [
    "ExpertCapacity",
    "ExpertMask",
    "ForcedRoute",
    "ForcedWeights",
    "Intervention",
    "LayerRoute",
    "LogitBias",
    "RouterMask",
    "RouterMaskMode",
    "RouterNoise",
    "RoutingRecorder",
    "Scope",
    "StepInfo",
    "TopK",
    "intervene",
    "record_routing",
    "repeated_from",
]


@contextmanager
def intervene(loaded: LoadedModel, *interventions: Intervention) -> Iterator[None]:
    """Apply routing interventions to every forward pass inside the block (validated up front)."""
    for intervention in interventions:
        intervention.bind(loaded.adapter)
    controller = controller_for(loaded.model, loaded.adapter)
    with ExitStack() as stack:
        for intervention in interventions:
            stack.enter_context(controller.attach("intervention", intervention))
        yield


@contextmanager
def record_routing(
    loaded: LoadedModel, layers: list[int] | None = None, keep_logits: bool = True, detach: bool = True
) -> Iterator[RoutingRecorder]:
    """Record router logits and executed experts of every forward pass inside the block."""
    if layers is not None:
        for layer in layers:
            loaded.adapter.layer_of(layer)
    recorder = RoutingRecorder(layers=layers, keep_logits=keep_logits, detach=detach)
    with controller_for(loaded.model, loaded.adapter).attach("recorder", recorder):
        yield recorder


@contextmanager
def repeated_from(loaded: LoadedModel, layer: int, rows: int) -> Iterator[None]:
    """Forward passes of one sequence run the decoder layers before `layer` once and `rows` copies from `layer` on.

    Rows that differ only in how routers from `layer` on are steered (RoSais's random masks of one router) share
    everything the earlier layers compute: computing it once saves that share of the work. The routing
    coordinates grow with the batch, so interventions at `layer` and later see `rows` sequences."""
    controller = controller_for(loaded.model, loaded.adapter)

    def repeat(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        step = controller.step
        if step is not None:
            controller.step = StepInfo(step.token_index.repeat(rows, 1), step.prompt_lengths.repeat(rows))
        if args:
            return (args[0].repeat(rows, 1, 1), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"].repeat(rows, 1, 1)}

    module = loaded.adapter.decoder_layers(loaded.model)[layer]
    handle = module.register_forward_pre_hook(repeat, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
