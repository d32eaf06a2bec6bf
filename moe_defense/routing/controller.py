"""One set of hooks per model, shared by every active intervention and recorder.

While any routing context is open, the model carries a forward pre-hook (token coordinates) and a
forward hook on each router that *replaces* the router's output: it adds the interventions' logit
edits to the raw logits and re-runs the architecture's own expert choice (the adapter's `select`),
so edits act before top-k. The hooks are removed when the last context closes, also on error.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from moe_defense.errors import RoutingError
from moe_defense.models.adapters import RouterAdapter
from moe_defense.routing.step import StepInfo, step_from_inputs

if TYPE_CHECKING:
    from moe_defense.routing.guard import RouteReviewer
    from moe_defense.routing.interventions import Intervention
    from moe_defense.routing.record import RoutingRecorder


class RoutingController:
    """Installs, composes and removes the routing hooks of one model."""

    def __init__(self, model: nn.Module, adapter: RouterAdapter) -> None:
        self.model = model
        self.adapter = adapter
        self.interventions: list[Intervention] = []
        self.recorders: list[RoutingRecorder] = []
        self.guards: list[RouteReviewer] = []
        self.step: StepInfo | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def active(self) -> bool:
        return bool(self.interventions or self.recorders or self.guards)

    def _install(self) -> None:
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._on_model_call, with_kwargs=True))
            for layer, router in self.adapter.routers(self.model).items():
                self._handles.append(router.register_forward_hook(self._router_hook(layer)))
        except BaseException:
            self._uninstall()
            raise

    def _uninstall(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        self.step = None

    @contextmanager
    def attach(self, kind: str, item: Any) -> Iterator[None]:
        """Keep `item` (an intervention or recorder) active for the duration of the block."""
        bucket = {"intervention": self.interventions, "recorder": self.recorders, "guard": self.guards}[kind]
        if not self.active:
            self._install()
        bucket.append(item)
        try:
            yield
        finally:
            bucket.remove(item)
            if not self.active:
                self._uninstall()

    def _on_model_call(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self.step = step_from_inputs(args, kwargs, self.step)

    def _router_hook(self, layer: int):
        def hook(router: nn.Module, inputs: tuple, output: tuple) -> tuple:
            if self.step is None:
                raise RoutingError(
                    "a router ran outside a forward pass of the model the routing context was opened on; "
                    "call the model itself (model(...) or model.generate(...))."
                )
            return self._route(layer, router, output)

        return hook

    def _top_k(self) -> int:
        """Experts per token: the config's, or the one an active intervention (a top-k deployment) sets."""
        chosen = {i.top_k for i in self.interventions if i.top_k is not None}
        if len(chosen) > 1:
            raise RoutingError(f"active interventions set different experts per token: {sorted(chosen)}.")
        return chosen.pop() if chosen else self.adapter.top_k

    def _select(
        self, router: nn.Module, logits: torch.Tensor, blocked: torch.Tensor | None, dtype: torch.dtype, top_k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The adapter's choice; `top_k` is passed only when it differs (adapters from plugins may predate it)."""
        if top_k == self.adapter.top_k:
            return self.adapter.select(router, logits, blocked, dtype)
        return self.adapter.select(router, logits, blocked, dtype, top_k=top_k)

    def _route(self, layer: int, router: nn.Module, output: tuple) -> tuple:
        logits, weights, indices = output
        step = self.step
        num_experts = logits.shape[-1]
        if logits.shape[0] != step.batch_size * step.length:
            raise RoutingError(
                f"layer {layer}: router saw {logits.shape[0]} tokens but the forward pass has "
                f"{step.batch_size}x{step.length}; this model does not route every token of the batch."
            )
        delta = None
        for intervention in self.interventions:
            edit = intervention.logit_delta(layer, step, logits)
            if edit is not None:
                delta = edit if delta is None else delta + edit
        top_k = self._top_k()
        routed_logits, blocked = logits, None
        if delta is not None:
            delta = delta.to(device=logits.device, dtype=logits.dtype).reshape(-1, num_experts)
            if torch.isnan(delta).any():
                raise RoutingError(f"layer {layer}: routing edits cancel (+inf and -inf on one expert).")
            blocked = torch.isneginf(delta)
            eligible = (~blocked).sum(dim=-1)
            if (eligible < top_k).any():
                flat = int(torch.nonzero(eligible < top_k)[0, 0])
                row, token = divmod(flat, step.length)
                raise RoutingError(
                    f"layer {layer}, sequence {row}, token {int(step.token_index[row, token])}: the active "
                    f"interventions leave {int(eligible[flat])} eligible experts but the router picks "
                    f"top-{top_k}."
                )
            routed_logits = logits + delta.masked_fill(blocked, 0.0)
        if delta is not None or top_k != self.adapter.top_k:
            weights, indices = self._select(
                router, routed_logits, blocked if blocked is not None and blocked.any() else None, weights.dtype, top_k
            )
            if blocked is not None:
                routed_logits = routed_logits.masked_fill(blocked, float("-inf"))
        for guard in self.guards:  # a defense acts on what the experts would execute
            revert = guard.revert(layer, logits, indices)
            if revert is not None and bool(revert.any()):
                own_weights, own_indices = self._select(router, logits, None, weights.dtype, top_k)
                indices = torch.where(revert[:, None], own_indices, indices)
                weights = torch.where(revert[:, None], own_weights, weights)
        for intervention in self.interventions:  # deployment limits (expert capacity) act on the final choice
            reweighted = intervention.reweight(layer, step, weights, indices)
            if reweighted is not None:
                weights = reweighted
        for recorder in self.recorders:
            recorder.record(layer, step, logits, weights, indices)
        return routed_logits, weights, indices


_CONTROLLERS: weakref.WeakKeyDictionary[nn.Module, RoutingController] = weakref.WeakKeyDictionary()


def controller_for(model: nn.Module, adapter: RouterAdapter) -> RoutingController:
    """The model's controller (one per model, so nested contexts compose instead of stacking hooks)."""
    controller = _CONTROLLERS.get(model)
    if controller is None:
        controller = _CONTROLLERS[model] = RoutingController(model, adapter)
    return controller
