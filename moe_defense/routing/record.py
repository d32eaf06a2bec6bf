"""Record routing: per MoE layer and real token, the router's own logits and the experts executed."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from moe_defense.errors import RoutingError
from moe_defense.routing.step import StepInfo


@dataclass(frozen=True)
class LayerRoute:
    """One layer's routing over a batch, in real-token coordinates (B, T); `valid` excludes padding.

    `logits` are the router's own pre-intervention logits; `indices`/`weights` are what the experts
    actually received (after any intervention).
    """

    logits: torch.Tensor | None  # (B, T, E) float32
    indices: torch.Tensor  # (B, T, k) long, -1 where invalid
    weights: torch.Tensor  # (B, T, k) float32
    valid: torch.Tensor  # (B, T) bool


@dataclass
class RoutingRecorder:
    """Collects router outputs of every forward pass while its context is open."""

    layers: list[int] | None = None
    keep_logits: bool = True
    detach: bool = True
    _chunks: dict[int, list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]]] = field(
        default_factory=dict, repr=False
    )

    def record(
        self, layer: int, step: StepInfo, logits: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor
    ) -> None:
        if self.layers is not None and layer not in self.layers:
            return
        shape = (step.batch_size, step.length)
        if self.detach:
            logits, weights = logits.detach(), weights.detach()
        kept_logits = logits.float().reshape(*shape, -1) if self.keep_logits else None
        self._chunks.setdefault(layer, []).append(
            (step.token_index, kept_logits, indices.reshape(*shape, -1), weights.float().reshape(*shape, -1))
        )

    def trace(self) -> dict[int, LayerRoute]:
        """Layer -> LayerRoute, decoding steps appended after the prompt in real-token order."""
        routes: dict[int, LayerRoute] = {}
        for layer, chunks in sorted(self._chunks.items()):
            batch = chunks[0][0].shape[0]
            if any(chunk[0].shape[0] != batch for chunk in chunks):
                raise RoutingError("a recorder saw batches of different sizes; record one batch per context.")
            length = max(int(chunk[0].max()) for chunk in chunks) + 1
            length = max(length, 0)
            first = chunks[0]
            k, device = first[2].shape[-1], first[2].device
            indices = torch.full((batch, length, k), -1, dtype=torch.long, device=device)
            weights = torch.zeros((batch, length, k), device=device)
            valid = torch.zeros((batch, length), dtype=torch.bool, device=device)
            logits = None
            if first[1] is not None:
                logits = torch.zeros((batch, length, first[1].shape[-1]), device=device)
            for token_index, chunk_logits, chunk_indices, chunk_weights in chunks:
                rows, cols = torch.nonzero(token_index >= 0, as_tuple=True)
                positions = token_index[rows, cols]
                indices[rows, positions] = chunk_indices[rows, cols]
                weights[rows, positions] = chunk_weights[rows, cols].to(weights.dtype)
                valid[rows, positions] = True
                if logits is not None:
                    logits[rows, positions] = chunk_logits[rows, cols]
            routes[layer] = LayerRoute(logits=logits, indices=indices, weights=weights, valid=valid)
        return routes
