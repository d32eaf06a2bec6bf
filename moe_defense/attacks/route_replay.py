"""Route replay: apply stored route artifacts (e.g. found on the original model) to a model.

This is the *transfer* test after hardening; it never replaces the adaptive re-attack, because
routes found on another model say little about what an attacker finds on this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from moe_defense.attacks.artifacts import read_artifacts
from moe_defense.attacks.base import Attack, AttackConfig, AttackContext, AttackResult, register_attack
from moe_defense.data.prompts import Prompt
from moe_defense.errors import ConfigError
from moe_defense.models.loading import LoadedModel


class RouteReplayConfig(AttackConfig):
    """Where the artifacts are, and whether artifacts of another model may be replayed."""

    artifacts: str | None = Field(
        None,
        description="route artifacts JSONL written by an attack run (artifacts.jsonl); "
        "None: the routes the run supplies (in harden: the original model's headline F-SOUR routes)",
    )
    force_transfer: bool = Field(
        False, description="replay artifacts found on another model (always so for supplied routes: the transfer test)"
    )


@register_attack
class RouteReplay(Attack[RouteReplayConfig]):
    """Replay stored unsafe routes; prompts without an artifact run unattacked."""

    name = "route-replay"
    config_class = RouteReplayConfig

    def label(self) -> str:
        return "fsour-transfer" if self.config.artifacts is None else self.name

    @property
    def needs_supplied_routes(self) -> bool:
        """Replays the run's own routes (a transfer test): only meaningful on a model other than their source."""
        return self.config.artifacts is None

    def run(self, loaded: LoadedModel, prompts: Sequence[Prompt], context: AttackContext) -> list[AttackResult]:
        path = Path(self.config.artifacts) if self.config.artifacts is not None else context.routes
        if path is None or not path.is_file():
            raise ConfigError(
                f"route artifacts file {path} does not exist; run an fsour attack first (or set artifacts)."
            )
        by_prompt = {artifact.prompt_id: artifact for artifact in read_artifacts(path)}
        results = []
        for prompt in prompts:
            artifact = by_prompt.get(prompt.id)
            if artifact is not None:
                artifact.check_model(loaded, force=self.config.force_transfer or self.needs_supplied_routes)
            results.append(AttackResult(prompt_id=prompt.id, artifact=artifact))
        return results
