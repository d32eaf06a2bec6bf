"""Route artifacts: the unsafe routes an attack found, as versioned JSONL records.

The hardening step trains on them and the transfer test replays them, so an artifact states the
model it was found on (fingerprint) and is refused on any other model unless forced.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from moe_defense.errors import RoutingError
from moe_defense.models.loading import LoadedModel
from moe_defense.routing import ExpertMask, ForcedRoute, ForcedWeights, Intervention, Scope

SCHEMA = "moe-defense/route-artifact@1"


@dataclass(frozen=True)
class RouteArtifact:
    """Per (layer, real token) forced expert sets and/or blocked experts for one prompt."""

    model_fingerprint: str
    prompt_id: str
    attack: str
    prompt_length: int
    scope: Scope = "prefill"
    forced: dict[int, dict[int, list[int]]] = field(default_factory=dict)  # layer -> token -> experts
    blocked: dict[int, dict[int, list[int]]] = field(default_factory=dict)  # layer -> token -> experts
    objective: float | None = None
    success: bool | None = None
    queries: int = 0  # sequences the search scored to find it (SearchCost.sequences)
    budget: dict[str, Any] = field(default_factory=dict)
    weights: ForcedWeights = "router"  # who mixes the forced experts: the router, or uniform (see ForcedRoute)
    schema: str = SCHEMA

    @property
    def num_forced_pairs(self) -> int:
        return sum(len(tokens) for tokens in self.forced.values())

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        for key in ("forced", "blocked"):  # JSON keys are strings; keep them explicit
            payload[key] = {str(l): {str(t): e for t, e in tokens.items()} for l, tokens in payload[key].items()}
        return payload

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> RouteArtifact:
        if payload.get("schema") != SCHEMA:
            raise RoutingError(f"route artifact schema {payload.get('schema')!r} is not {SCHEMA!r}.")
        data = dict(payload)
        for key in ("forced", "blocked"):
            data[key] = {
                int(l): {int(t): [int(e) for e in experts] for t, experts in tokens.items()}
                for l, tokens in data.get(key, {}).items()
            }
        return cls(**data)

    def check_model(self, loaded: LoadedModel, force: bool = False) -> None:
        """Refuse an artifact found on another model (different weights or architecture)."""
        fingerprint = loaded.fingerprint()
        if self.model_fingerprint != fingerprint and not force:
            raise RoutingError(
                f"route artifact for prompt {self.prompt_id!r} was found on model {self.model_fingerprint}, "
                f"not on this model ({fingerprint}); set force_transfer (--attack-arg force_transfer=true) to replay "
                "it anyway."
            )


def interventions_for(
    artifacts: Sequence[RouteArtifact | None], top_k: int, num_experts: int, prompt_lengths: torch.Tensor | None = None
) -> list[Intervention]:
    """Batched interventions: row i follows artifacts[i] (None = unattacked row)."""
    if not any(artifacts):
        return []
    batch = len(artifacts)
    layers = sorted({l for a in artifacts if a for l in (*a.forced, *a.blocked)})
    length = 1 + max(
        (t for a in artifacts if a for tokens in (*a.forced.values(), *a.blocked.values()) for t in tokens), default=0
    )
    scopes = {a.scope for a in artifacts if a}
    if len(scopes) > 1:
        raise RoutingError("a batch mixes prefill-only and decode-forcing artifacts; group them by scope.")
    scope = scopes.pop()
    weights = {a.weights for a in artifacts if a}
    if len(weights) > 1:
        raise RoutingError("a batch mixes router-weighted and uniform-weighted forced routes; group them.")
    forced = {l: torch.full((batch, length, top_k), -1, dtype=torch.long) for l in layers}
    blocked = {l: torch.zeros((batch, length, num_experts), dtype=torch.bool) for l in layers}
    for row, artifact in enumerate(artifacts):
        if artifact is None:
            continue
        for layer, tokens in artifact.forced.items():
            for token, experts in tokens.items():
                forced[layer][row, token] = torch.tensor(experts)
        for layer, tokens in artifact.blocked.items():
            for token, experts in tokens.items():
                blocked[layer][row, token, experts] = True
    result: list[Intervention] = []
    forced = {l: r for l, r in forced.items() if (r >= 0).any()}
    blocked = {l: m for l, m in blocked.items() if m.any()}
    if forced:
        result.append(ForcedRoute(forced, scope=scope, prompt_lengths=prompt_lengths, weights=weights.pop()))
    if blocked:
        result.append(ExpertMask(blocked, scope=scope, prompt_lengths=prompt_lengths))
    return result


def write_artifacts(path: Path, artifacts: Iterable[RouteArtifact]) -> None:
    """Append artifacts as JSON lines (flushed per record, so an interrupted run keeps what it found)."""
    with path.open("a") as handle:
        for artifact in artifacts:
            handle.write(json.dumps(artifact.to_json(), sort_keys=True) + "\n")
            handle.flush()


def read_artifacts(path: Path) -> list[RouteArtifact]:
    artifacts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            artifacts.append(RouteArtifact.from_json(json.loads(line)))
        except (ValueError, TypeError) as error:
            raise RoutingError(f"{path}:{number}: not a route artifact ({error}).") from error
    return artifacts
