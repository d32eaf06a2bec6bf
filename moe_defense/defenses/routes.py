"""The adversarial signal: a pool of unsafe routes per harmful training prompt, refreshed during training.

Routes found on the original model are a fixed target; routers trained against them alone learn to
defeat those routes while an attacker who re-searches finds new ones. So the pool is refreshed
against the CURRENT routers every few steps (like PGD adversarial training), and older routes stay
in the pool so the routers do not forget them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from moe_defense.attacks.artifacts import RouteArtifact, interventions_for, read_artifacts, write_artifacts
from moe_defense.attacks.fsour import Fsour, FsourConfig
from moe_defense.data.prompts import Prompt
from moe_defense.errors import DataError
from moe_defense.models.loading import LoadedModel
from moe_defense.routing import Intervention
from moe_defense.runner.rundir import atomic_write


class RoutePool:
    """Up to `per_prompt` unsafe routes per prompt id, newest first; persisted as JSONL for --resume.

    Every rank reads the file; only the one with `write` (rank 0) appends to it. `records` counts
    every route ever added, so a checkpoint can name the pool as it was.
    """

    def __init__(self, per_prompt: int, path: Path | None = None, write: bool = True) -> None:
        self.per_prompt = per_prompt
        self.path = path
        self.write = write
        self.routes: dict[str, list[RouteArtifact]] = {}
        self.records = 0
        if path is not None and path.exists():
            for artifact in read_artifacts(path):
                self._keep(artifact)

    def truncate(self, records: int) -> None:
        """Back to the pool after its first `records` routes (a resumed training drops later refreshes)."""
        kept = read_artifacts(self.path)[:records] if self.path is not None and self.path.exists() else []
        if len(kept) != records:
            raise DataError(
                f"route pool {self.path} holds {len(kept)} routes, fewer than the {records} its checkpoint saw."
            )
        self.routes, self.records = {}, 0
        for artifact in kept:
            self._keep(artifact)
        if self.write and self.path is not None:
            atomic_write(self.path, "".join(json.dumps(a.to_json(), sort_keys=True) + "\n" for a in kept))

    def _keep(self, artifact: RouteArtifact) -> None:
        self.records += 1
        entries = self.routes.setdefault(artifact.prompt_id, [])
        entries.insert(0, artifact)
        del entries[self.per_prompt :]

    def add(self, artifacts: Sequence[RouteArtifact]) -> None:
        for artifact in artifacts:
            self._keep(artifact)
        if self.path is not None and self.write:
            write_artifacts(self.path, artifacts)

    def __len__(self) -> int:
        return sum(len(v) for v in self.routes.values())

    def sample(self, prompt_ids: Sequence[str], rng: random.Random) -> list[RouteArtifact | None]:
        """One route per row: the newest with probability 1/2, else any older one (None: no route yet)."""
        chosen: list[RouteArtifact | None] = []
        for prompt_id in prompt_ids:
            entries = self.routes.get(prompt_id)
            if not entries:
                chosen.append(None)
            else:
                chosen.append(entries[0] if len(entries) == 1 or rng.random() < 0.5 else rng.choice(entries[1:]))
        return chosen

    def interventions(
        self, loaded: LoadedModel, artifacts: Sequence[RouteArtifact | None], prompt_lengths: torch.Tensor
    ) -> list[Intervention]:
        return interventions_for(artifacts, loaded.adapter.top_k, loaded.adapter.num_experts, prompt_lengths)


def search_routes(
    loaded: LoadedModel, prompts: Sequence[Prompt], config: FsourConfig, progress: bool = False
) -> list[RouteArtifact]:
    """F-SOUR against the model as it is now (eval mode, no gradients kept), one route per prompt; `progress`
    shows a bar (minutes a prompt at 30 layers)."""
    was_training = loaded.model.training
    loaded.model.eval()
    try:
        attack = Fsour(config.model_copy(update={"restarts": 0, "judge": None}))
        fingerprint = loaded.fingerprint()
        bar = tqdm(prompts, desc="route search", unit="prompt", disable=not progress, leave=False)
        return [attack.search(loaded, p, config.seed).artifact(p.id, fingerprint) for p in bar]
    finally:
        loaded.model.train(was_training)
