"""`moe-defense harden RECIPE`: measure -> defend -> verify adaptively -> summary + report.

Run directory:
    config.yaml                 the resolved recipe + versions (written once; a resume must match it)
    original/<attack>/          every attack-suite run on the original model (run directories)
    <defense files>             e.g. train/, hardened_model/, router_patch.safetensors (router-hardening)
    hardened/<attack>/          the same suite, re-optimised on the defended model (new seeds)
    summary.json, report.md, report.html, *.png
Every stage resumes: searches, generations and a finished training already on disk are not recomputed.
The orchestration only sequences stages: the suite (`verify.py`), the budget policy (`budget.py`), the
defenses (`defenses/`) and the summary schema (`summary.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from moe_defense import load_model
from moe_defense.attacks.suite import ARTIFACTS
from moe_defense.budget import BudgetPolicy, policy
from moe_defense.defenses import DefenseContext
from moe_defense.defenses.checkpoint import check_output_location
from moe_defense.defenses.examples import TrainingSequence, to_sequences
from moe_defense.defenses.hardening import HARDENED_MODEL
from moe_defense.defenses.objective import benign_nll
from moe_defense.errors import ConfigError
from moe_defense.judges.factory import build_judges
from moe_defense.models import LoadedModel, LoadOptions
from moe_defense.recipe import Recipe
from moe_defense.report import write_harden_report
from moe_defense.routing.guard import guarded
from moe_defense.runner.process import ProcessInfo
from moe_defense.runner.rundir import RunDir, atomic_write, config_differences, exclusive
from moe_defense.summary import harden_summary
from moe_defense.tracking import log_verification
from moe_defense.utility_tasks import UtilityTasks
from moe_defense.verify import Suite

ORIGINAL_ROWS = "original_rows.json"  # the original phase (rows, routing, benign NLL) + its settings


@dataclasses.dataclass(frozen=True)
class OriginalPhase:
    """What a harden run keeps of the original model: the suite's routing statistics and its benign eval
    answers (the suite's benign row) with their NLL, the reference the hardened model's benign NLL is
    measured against."""

    routing: dict[str, Any]
    benign_answers: list[str]
    benign_nll: float


def original_settings(recipe: Recipe) -> dict[str, Any]:
    """What the original phase's rows depend on: runs sharing an original directory must agree on it."""
    dumped = recipe.model_dump(mode="json")
    data = {k: v for k, v in dumped["data"].items() if k in ("harmful_eval", "benign_eval", "over_refusal")}
    keys = (
        "model",
        "chat_template_kwargs",
        "reasoning",
        "seed",
        "judges",
        "over_refusal_judge",
        "generation",
        "verify",
        "trust_remote_code",
        "revision",
    )
    return {**{k: dumped[k] for k in keys}, "data": data}


class Harden:
    """One harden run: the recipe, its prompt sets and judges, and the run directory it owns."""

    def __init__(
        self,
        recipe: Recipe,
        out: Path,
        *,
        info: ProcessInfo,
        resume: bool = False,
        progress: bool = True,
        original_dir: Path | None = None,
    ) -> None:
        self.recipe = recipe
        self.out = out
        self.info = info
        # the original model's suite; an ablation grid shares one per seed between its cells
        self.original_dir = original_dir or out / "original"
        self.resume = resume
        self.progress = progress
        d, seed = recipe.data, recipe.seed
        # every prompt set is read before any model loads
        self.sets: dict[str, Any] = {
            name: getattr(d, name).load(seed)
            for name in ("harmful_train", "harmful_eval", "benign_eval", "over_refusal")
        }
        self.benign_train = [p for ref in d.benign_train for p in ref.load(seed).prompts]
        v = recipe.verify
        batch = recipe.generation.batch_size
        self.utility = (
            UtilityTasks(tuple(v.utility_tasks), v.utility_task_path, v.utility_limit, batch, seed)
            if v.utility_tasks
            else None
        )
        if self.utility is not None:
            self.utility.check()  # unknown task names fail before any model loads
        self.load_options = LoadOptions(
            dtype=recipe.dtype,
            seed=seed,
            trust_remote_code=recipe.trust_remote_code,
            revision=recipe.revision,
            device=recipe.device_map or info.device,
            chat_template_kwargs=recipe.chat_template_kwargs,
            reasoning=recipe.reasoning,
        )

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        recipe, info = self.recipe, self.info
        run_dir = RunDir(self.out)
        run_config = {"verb": "harden", "recipe": recipe.model_dump(mode="json")}
        run_dir.check(run_config, resume=self.resume)
        info.wait()
        if info.is_main:
            run_dir.write_config(run_config)
        loaded = load_model(recipe.model, self.load_options)
        check_output_location(self.out / HARDENED_MODEL, recipe.model)
        judges = build_judges(recipe.judges, lower_cased=loaded.lower_cased)
        suite = Suite(
            recipe.verify.attacks,
            self.sets["harmful_eval"],
            self.sets["benign_eval"],
            self.sets["over_refusal"],
            judges,
            recipe.generation,
            recipe.seed,
            info,
            refusal_judge=recipe.over_refusal_judge,
            utility=self.utility,
            rosais_prompts=recipe.verify.rosais_prompts,
            resume=self.resume,
            progress=self.progress,
        )

        original = self.original_phase(loaded, suite)
        routing = {"original": original.routing}
        curve = suite.curve()
        budgets = policy(curve, recipe.verify.asr_threshold, recipe.train_budget) if curve else None
        trained_at = budgets.train_budget if budgets else recipe.train_budget
        benign_eval_answers = self._benign_sequences(loaded, original.benign_answers)
        loaded, facts, reviewers = self.defend(loaded, judges, trained_at)

        with contextlib.ExitStack() as defended:
            for reviewer in reviewers:
                defended.enter_context(guarded(loaded, reviewer))
            suite.run(loaded, "hardened", self.out / "hardened", routes=self._headline_routes(budgets))
            nll_after = benign_nll(loaded, benign_eval_answers)
            routing["hardened"] = suite.routing_stats(loaded, "hardened", self.out / "hardened")

        minimal = {
            phase: suite.robustness(phase, directory)
            for phase, directory in (("original", self.original_dir), ("hardened", self.out / "hardened"))
        }
        summary = harden_summary(recipe, suite, budgets, facts, (original.benign_nll, nll_after), minimal)
        summary["routing"] = routing
        summary["seconds"] = round(time.perf_counter() - started, 1)
        if info.is_main:
            atomic_write(self.out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
            write_harden_report(self.out, summary)
            log_verification(recipe.report_to, summary, self.out)
        info.wait()
        return summary

    def _headline_routes(self, budgets: BudgetPolicy | None) -> Path | None:
        """The original model's routes at the headline budget: what a transfer replay replays."""
        return None if budgets is None else self.original_dir / budgets.headline.routes_label / ARTIFACTS

    def original_phase(self, loaded: LoadedModel, suite: Suite) -> OriginalPhase:
        """The suite on the original model, once, and the NLL of its benign row's answers (the benign NLL's
        reference): later runs sharing `original_dir` read them, provided they agree on everything they depend on."""
        marker = self.original_dir / ORIGINAL_ROWS
        settings = original_settings(self.recipe)
        single = self.info.world == 1  # ranks of one data-parallel run cooperate instead of locking each other out
        # one run computes, others wait and read
        with exclusive(self.original_dir / ".lock") if single else contextlib.nullcontext():
            if marker.is_file() and (self.resume or self.original_dir != self.out / "original"):
                stored = json.loads(marker.read_text())
                differences = config_differences(stored.get("settings", {}), settings)
                if differences:
                    raise ConfigError(
                        f"{self.original_dir} holds the original phase of other settings ({'; '.join(differences)}); "
                        "use another --out."
                    )
                suite.rows["original"] = stored["rows"]
                return OriginalPhase(stored["routing"], suite.benign_answers(self.original_dir), stored["benign_nll"])
            suite.run(loaded, "original", self.original_dir)
            routing = suite.routing_stats(loaded, "original", self.original_dir)
            answers = suite.benign_answers(self.original_dir)
            phase = OriginalPhase(routing, answers, benign_nll(loaded, self._benign_sequences(loaded, answers)))
            if self.info.is_main:
                stored = {
                    "settings": settings,
                    "rows": suite.rows["original"],
                    "routing": routing,
                    "benign_nll": phase.benign_nll,
                }
                atomic_write(marker, json.dumps(stored, default=str) + "\n")
            return phase

    def _benign_sequences(self, loaded: LoadedModel, answers: list[str]) -> list[TrainingSequence]:
        """The original model's benign eval answers as scored sequences, cut at `verify.benign_nll_tokens`."""
        prompts = self.sets["benign_eval"].prompts
        return to_sequences(loaded, prompts, answers, self.recipe.verify.benign_nll_tokens)

    def defend(self, loaded: LoadedModel, judges: list, budget: int | None) -> tuple[LoadedModel, dict[str, Any], list]:
        """Apply the recipe's defenses in order; their facts and route reviewers."""
        recipe = self.recipe
        curve = recipe.verify.curve
        context = DefenseContext(
            harmful_train=self.sets["harmful_train"].prompts,
            benign_train=self.benign_train,
            judge=judges[0],
            generation=recipe.generation,
            budget=budget,
            route_search=curve.config() if curve else None,
            seed=recipe.seed,
            out=self.out,
            info=self.info,
            load_options=self.load_options,
            resume=self.resume,
            deepspeed=recipe.deepspeed,  # resolved at validation
            report_to=recipe.report_to,
        )
        facts: dict[str, Any] = {}
        reviewers = []
        for spec in recipe.defenses:
            defended = spec.build().apply(loaded, context)
            loaded = defended.loaded
            facts.update(defended.facts)
            if defended.reviewer is not None:
                reviewers.append(defended.reviewer)
        facts["route_reviewers"] = len(reviewers)
        return loaded, facts, reviewers
