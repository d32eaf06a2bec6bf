"""Route replay: apply stored route artifacts (e.g. found on the original model) to a model.

This is the *transfer* test after hardening; it never replaces the adaptive re-attack, because
routes found on another model say little about what an attacker finds on this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from moe_defense.attacks.artifacts import read_artifacts
from moe_defense.attacks.base import Attack, AttackConfig, AttackResult, register_attack
from moe_defense.data.prompts import Prompt
from moe_defense.errors import ConfigError
from moe_defense.models.loading import LoadedModel


class RouteReplayConfig(AttackConfig):
    """Where the artifacts are, and whether artifacts of another model may be replayed."""

    artifacts: str = Field(description="route artifacts JSONL written by an attack run (artifacts.jsonl)")
    force_transfer: bool = Field(False, description="replay artifacts found on a different model (the transfer test)")


@register_attack
class RouteReplay(Attack[RouteReplayConfig]):
    """Replay stored unsafe routes; prompts without an artifact run unattacked."""

    name = "route-replay"
    config_class = RouteReplayConfig

    def run(self, loaded: LoadedModel, prompts: Sequence[Prompt]) -> list[AttackResult]:
        path = Path(self.config.artifacts)
        if not path.is_file():
            raise ConfigError(f"route artifacts file {path} does not exist; run an fsour attack first.")
        by_prompt = {artifact.prompt_id: artifact for artifact in read_artifacts(path)}
        results = []
        for prompt in prompts:
            artifact = by_prompt.get(prompt.id)
            if artifact is not None:
                artifact.check_model(loaded, force=self.config.force_transfer)
            results.append(AttackResult(prompt_id=prompt.id, artifact=artifact))
        return results
