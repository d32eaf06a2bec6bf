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
