"""The attack suite of one phase (original or hardened): utility rows, then every `{name, args}` attack.

The suite knows no attack by name: each spec builds its attacks (one per sweep point), each attack
declares whether it searches per prompt (and so gets a new seed on the hardened model), and a
transfer replay (`needs_supplied_routes`) runs only where routes from another model are supplied.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from moe_defense.attacks.artifacts import RouteArtifact
from moe_defense.attacks.base import Attack, AttackContext, AttackSpec, SharedCache
from moe_defense.attacks.expert_silence import expert_usage
from moe_defense.attacks.rosais import RosaisConfig, shared_rosais
from moe_defense.attacks.suite import run_attack
from moe_defense.budget import CurvePoint
from moe_defense.data import PromptSet
from moe_defense.judges import Judge
from moe_defense.models import LoadedModel
from moe_defense.robustness import Outcome, robustness
from moe_defense.runner.evaluate import evaluate
from moe_defense.runner.generation import GenerationConfig
from moe_defense.runner.process import ProcessInfo
from moe_defense.runner.rundir import RunDir, atomic_write
from moe_defense.utility_tasks import ROW as UTILITY_TASKS
from moe_defense.utility_tasks import UtilityTasks
from moe_defense.worst_case import WorstCase, worst_case_row, worst_cases

ADAPTIVE_SEED_OFFSET = 1000  # searches on the hardened model use seeds the original's never did
UTILITY_ROWS = ("benign", "over-refusal", UTILITY_TASKS)  # the suite's utility rows, beside the attacks


def phase_seed(seed: int, phase: str, attack: type[Attack]) -> int:
    """Searches are re-optimised on the hardened model with new seeds; global choices (random routers)
    keep the seed, so before and after compare the same draw."""
    return seed + (ADAPTIVE_SEED_OFFSET if phase == "hardened" and attack.per_prompt else 0)


@dataclass
class Suite:
    """A recipe's suite over its held-out sets, judged by its judges, written under per-phase directories."""

    specs: Sequence[AttackSpec]
    harmful: PromptSet
    benign: PromptSet
    over_refusal: PromptSet
    judges: Sequence[Judge]
    generation: GenerationConfig
    seed: int
    info: ProcessInfo
    refusal_judge: str = "keyword"
    utility: UtilityTasks | None = None  # lm-eval tasks (verify.utility_tasks)
    rosais_prompts: int | None = None  # harmful prompts of the routing statistics' RoSais (None: all)
    resume: bool = False
    progress: bool = True
    rows: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {"original": {}, "hardened": {}})
    shared: dict[str, SharedCache] = field(default_factory=dict)  # per phase: its attacks' and routing stats' cache

    def attacks(self, phase: str) -> list[tuple[str, Attack]]:
        """Every (label, attack) of the suite for `phase`, in recipe order."""
        return [
            pair
            for spec in self.specs
            for pair in spec.build(seed=phase_seed(self.seed, phase, spec.component_class()))
        ]

    def worst_cases(self, phase: str) -> list[WorstCase]:
        """The groups of attackers sharing a budget (see `worst_case`): one worst-case row each."""
        return worst_cases(self.attacks(phase))

    def curve(self, phase: str = "original") -> list[CurvePoint]:
        """The ASR-vs-budget curve (budget, label, ASR) from `phase`'s rows; [] when the suite has none.

        Its budgets are the curve attack's sweep; at a budget where several attackers ran, its point is their
        worst case (`worst@b`), whose transfer replay replays the first curve attack's routes."""
        spec = next((s for s in self.specs if s.is_curve), None)
        if spec is None:
            return []
        budget_field = spec.component_class().budget_field
        worst = {member: group for group in self.worst_cases(phase) for member in group.members}
        points = []
        for label, attack in spec.build(seed=phase_seed(self.seed, phase, spec.component_class())):
            shown = worst[label].label if label in worst else label
            budget = getattr(attack.config, budget_field)
            points.append(CurvePoint(budget, shown, self.rows[phase].get(shown, {}).get("asr"), routes_from=label))
        return points

    def robustness(self, phase: str, directory: Path) -> dict[str, Any] | None:
        """Per-prompt minimal budgets over every verified point of the curve (each attacker of a worst case) in
        `directory`, by the headline judge, and the survival curve on the curve's capped budgets; None when the
        suite has no curve."""
        points = self.curve(phase)
        if not points:
            return None
        members = {group.label: group.members for group in self.worst_cases(phase)}
        judge = self.judges[0].name
        outcomes = []
        for label in (m for point in points for m in members.get(point.label, (point.label,))):
            for record in RunDir(directory / label).records():
                verdict = record["verdicts"].get(judge, {})
                route = RouteArtifact.from_json(record["route"]) if record.get("route") else None
                outcomes.append(
                    Outcome(
                        str(record["prompt_id"]),
                        verdict.get("jailbroken") if verdict.get("status") == "scored" else None,
                        route.num_forced_pairs if route else 0,
                    )
                )
        return robustness(outcomes, [p.budget for p in points if p.budget is not None])

    def run(
        self, loaded: LoadedModel, phase: str, directory: Path, routes: Path | None = None
    ) -> dict[str, dict[str, Any]]:
        """Utility, then every attack; `routes` (another model's artifacts) enables the transfer replays."""
        self._evaluate(loaded, phase, directory, "benign", self.benign)
        self._evaluate(loaded, phase, directory, "over-refusal", self.over_refusal)
        if self.utility is not None:
            self.rows[phase][UTILITY_TASKS] = self.utility.run(loaded, directory, info=self.info, resume=self.resume)
        context = AttackContext(
            generation=self.generation,
            benign=self.benign.prompts,
            routes=routes,
            shared=self.shared.setdefault(phase, SharedCache()),
            info=self.info,
        )
        attacks = [(label, a) for label, a in self.attacks(phase) if routes is not None or not a.needs_supplied_routes]
        for label, attack in tqdm(
            attacks, desc=f"{phase}: attack suite", unit="attack", disable=not self.progress or not self.info.is_main
        ):
            summary = run_attack(
                loaded,
                self.harmful,
                attack,
                self.judges,
                out_dir=directory / label,
                context=context,
                resume=self.resume,
                label=label,
                phase=phase,
                progress=self.progress,
            )
            self.rows[phase][label] = summary["phases"][phase][label]
        self._add_worst_cases(phase, directory)
        return self.rows[phase]

    def _add_worst_cases(self, phase: str, directory: Path) -> None:
        """One row per group of attackers sharing a budget whose members all ran, from their records."""
        judge = self.judges[0].name
        for group in self.worst_cases(phase):
            if not all(member in self.rows[phase] for member in group.members):
                continue
            verdicts = {
                member: {
                    str(r["prompt_id"]): r["verdicts"].get(judge)
                    for r in RunDir(directory / member).records()
                    if not r["benign"]
                }
                for member in group.members
            }
            self.rows[phase][group.label] = worst_case_row(group, verdicts, judge)

    def _evaluate(self, loaded: LoadedModel, phase: str, directory: Path, label: str, prompt_set: PromptSet) -> None:
        summary = evaluate(
            loaded,
            prompt_set,
            self.judges,
            gen_config=self.generation,
            out_dir=directory / label,
            resume=self.resume,
            attack_name=label,
            phase=phase,
            progress=self.progress,
            refusal_judge=self.refusal_judge,
            info=self.info,
        )
        self.rows[phase][label] = summary["phases"][phase][label]

    def benign_answers(self, directory: Path) -> list[str]:
        """The benign row's answers under `directory`, in the benign set's order: what the phase already generated."""
        answers = {record["prompt_id"]: record["response"] for record in RunDir(directory / "benign").records()}
        return [answers[p.id] for p in self.benign.prompts]

    def routing_stats(self, loaded: LoadedModel, phase: str, directory: Path) -> dict[str, Any]:
        """RoSais per router (on `rosais_prompts` harmful prompts; none: {}; the phase's router-mask attack's when
        it ranked the same prompts) and expert usage on harmful vs benign prompts, for the report's plots."""
        path = directory / "routing_stats.json"
        if self.resume and path.is_file():
            return json.loads(path.read_text())
        layers = loaded.adapter.moe_layers()
        harmful = self.harmful.prompts
        ranked = harmful[: self.rosais_prompts]
        cache = self.shared.setdefault(phase, SharedCache()).router_importance
        importance = shared_rosais(loaded, ranked, RosaisConfig(), cache, progress=False) if ranked else None
        stats = {
            "rosais": {str(k): v for k, v in importance.scores.items()} if importance else {},
            "usage": {
                kind: {
                    str(layer): values.tolist()
                    for layer, values in expert_usage(loaded, [p.text for p in prompts], layers).items()
                }
                for kind, prompts in (("harmful", harmful), ("benign", self.benign.prompts))
            },
        }
        if self.info.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(stats, indent=2) + "\n")
        return stats
