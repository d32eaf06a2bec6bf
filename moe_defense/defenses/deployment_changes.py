"""Deployment changes sampled while the routers train, so the hardened routing keeps refusing when a server
changes it.

A served model meets its serving team's own changes: fewer experts per token, pruned experts, capped
expert capacity, router noise. The threat suite measures them (the deployment attacks); the
`deployment_refusal` and `deployment_output_kl` terms train under them. Each step samples one of
`HardeningConfig.deployment_changes`, written as the suite's own `{name, args, sweep}` specs (every sweep
point is one change), and applies it as the suite does: the same interventions, from the same global
choice (expert-prune's calibration usage or REAP saliency, made once on the model before training).
A change of weights (quantization) trains through its attack's `applied_for_training`: the deployed
(rounded) values forward, the gradient passed straight through to the original tensors.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from moe_defense.attacks.base import Attack, AttackContext, AttackResult, AttackSpec
from moe_defense.data.prompts import Prompt
from moe_defense.models.loading import LoadedModel
from moe_defense.routing import Intervention, intervene
from moe_defense.runner.generation import GenerationConfig
from moe_defense.runner.process import ProcessInfo


def check_trainable_changes(specs: Sequence[AttackSpec]) -> None:
    """A ValueError naming the first spec that is no deployment change."""
    for spec in specs:
        if not spec.component_class().changes_deployment:
            raise ValueError(
                f"deployment_changes: {spec.name!r} is not a deployment change (those are the attacks that declare "
                "changes_deployment: top-k, expert-prune, quantize, capacity-drop, router-noise)"
            )


@dataclass(frozen=True)
class DeploymentChange:
    """One change, its global choice made: `interventions(rows, rng)` for a batch of `rows` sequences."""

    label: str
    attack: Attack
    choice: AttackResult  # the change's global choice (pruned experts), as the suite's run records it

    def interventions(self, loaded: LoadedModel, rows: int, rng: random.Random) -> list[Intervention]:
        """Fresh interventions (capacity counters start at zero); per-row draws (router noise) from `rng`."""
        draws = [dataclasses.replace(self.choice, prompt_id=f"train:{rng.randrange(2**31)}") for _ in range(rows)]
        return self.attack.interventions(loaded, draws)

    @contextmanager
    def applied(self, loaded: LoadedModel, rows: int, rng: random.Random) -> Iterator[None]:
        """The whole change for a forward of `loaded` on `rows` sequences: its weights (differentiably) and
        its fresh interventions."""
        with self.attack.applied_for_training(loaded), intervene(loaded, *self.interventions(loaded, rows, rng)):
            yield


def deployment_changes(
    loaded: LoadedModel,
    specs: Sequence[AttackSpec],
    calibration: Sequence[Prompt],
    generation: GenerationConfig,
    info: ProcessInfo,
) -> list[DeploymentChange]:
    """Every sweep point of `specs` as a change of `loaded`, its choice made on `calibration` (the benign
    training prompts, where a change reads benign routing)."""
    check_trainable_changes(specs)
    if not specs:
        return []
    context = AttackContext(generation=generation, benign=list(calibration), info=info)
    probe = [Prompt("calibration", calibration[0].text, {})]
    return [
        DeploymentChange(label, attack, attack.run(loaded, probe, context)[0])
        for spec in specs
        for label, attack in spec.build()
    ]
