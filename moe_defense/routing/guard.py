"""Route reviewers: hooks that see the experts a token is about to execute, after every intervention.

A reviewer runs after every intervention (an attacker's included) and names the tokens whose routing
reverts to the router's own choice. The policies (which routes to refuse) are defenses and live in
`moe_defense/defenses/`; this module only attaches them to a model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import torch

from moe_defense.models.loading import LoadedModel
from moe_defense.routing.controller import controller_for


class RouteReviewer(Protocol):
    """What `guarded` needs of a route-reviewing defense."""

    def bind(self, top_k: int, num_experts: int, layers: Sequence[int]) -> None:
        """Check the policy fits the model (raise RoutingError otherwise)."""

    def revert(self, layer: int, logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
        """(N,) True for tokens whose executed set (indices, (N, k)) is refused; None: none refused."""


@contextmanager
def guarded(loaded: LoadedModel, reviewer: RouteReviewer) -> Iterator[None]:
    """Keep `reviewer` active on every forward pass of `loaded` inside the block (under any intervention)."""
    adapter = loaded.adapter
    reviewer.bind(adapter.top_k, adapter.num_experts, adapter.moe_layers())
    with controller_for(loaded.model, adapter).attach("guard", reviewer):
        yield
