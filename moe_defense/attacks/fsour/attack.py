"""The `fsour` attack: one route search per prompt (the configured mode), judged restarts with a new seed."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from statistics import mean
from typing import Any

from moe_defense.attacks.artifacts import RouteArtifact, interventions_for
from moe_defense.attacks.base import Attack, AttackContext, AttackResult, SearchCost, register_attack
from moe_defense.attacks.fsour.config import FsourConfig, UncappedRoutes
from moe_defense.attacks.fsour.search import RouteSearch
from moe_defense.attacks.objective import TargetProblem, prompt_target
from moe_defense.data.prompts import Prompt
from moe_defense.judges import Judge, JudgeItem
from moe_defense.judges.factory import build_judge
from moe_defense.models.loading import LoadedModel
from moe_defense.runner.generation import GenerationConfig, generate


@register_attack
class Fsour(Attack[FsourConfig]):
    """F-SOUR unsafe-route search, reference or fast, with judged restarts."""

    name = "fsour"
    config_class = FsourConfig

    per_prompt = True
    budget_field = "budget"
    budget_counts_forced_pairs = True

    def search(
        self, loaded: LoadedModel, prompt: Prompt, seed: int, uncapped: UncappedRoutes | None = None
    ) -> RouteSearch:
        problem = TargetProblem.build(loaded, prompt.text, prompt_target(prompt) + self.config.target_suffix)
        started = time.perf_counter()
        search = RouteSearch(loaded, problem, self.config, seed, uncapped)
        {"reference": search.reference, "fast": search.fast, "gradient": search.gradient}[self.config.mode]()
        search.cost.seconds = time.perf_counter() - started
        return search

    def _respond(
        self, loaded: LoadedModel, prompt: Prompt, artifact: RouteArtifact, generation: GenerationConfig
    ) -> str:
        routes = interventions_for([artifact], loaded.adapter.top_k, loaded.adapter.num_experts)
        return generate(loaded, [prompt.text], generation, route_for_batch=lambda rows: routes, progress=False)[0]

    @staticmethod
    def _judged(judge: Judge | None, prompt: Prompt, response: str | None, search: RouteSearch) -> bool:
        if judge is None:
            return search.success
        verdict = judge.judge_batch([JudgeItem(prompt.text, response, prompt.metadata)])[0]
        return bool(verdict.jailbroken)

    def run(self, loaded: LoadedModel, prompts: Sequence[Prompt], context: AttackContext) -> list[AttackResult]:
        fingerprint = loaded.fingerprint()
        judge = build_judge(self.config.judge, lower_cased=loaded.lower_cased) if self.config.judge else None
        criterion = f"judge:{self.config.judge.name}" if self.config.judge else f"p_target>={self.config.success_prob}"
        uncapped = context.shared.uncapped_routes  # one uncapped search per prompt, pruned to every budget
        results = []
        for prompt in prompts:
            started = time.perf_counter()
            attempts, attempts_initial, cost = [], [], SearchCost()
            for restart in range(self.config.restarts + 1):
                search = self.search(loaded, prompt, self.config.seed + restart, uncapped)
                artifact = search.artifact(prompt.id, fingerprint)
                cost.add(search.cost)
                response = None  # only an in-loop judge reads an answer: the suite answers every route anyway
                if judge is not None:
                    response = self._respond(loaded, prompt, artifact, context.generation)
                    cost.generations += 1
                    cost.generated_tokens += len(loaded.tokenizer(response, add_special_tokens=False).input_ids)
                attempts.append((artifact, response, self._judged(judge, prompt, response, search)))
                attempts_initial.append(search.initial_value)
                if attempts[-1][2]:
                    break
            cost.seconds = time.perf_counter() - started  # the prompt's whole wall time, answers included
            chosen = next((a for a in attempts if a[2]), max(attempts, key=lambda a: a[0].objective or -math.inf))
            results.append(
                AttackResult(
                    prompt_id=prompt.id,
                    artifact=chosen[0],
                    response=chosen[1],
                    extra={
                        "single_shot_response": attempts[0][1],
                        "single_shot_success": attempts[0][2],
                        "restarts_used": len(attempts) - 1,
                        "success_criterion": criterion,
                        "best_of_restarts_success": any(a[2] for a in attempts),
                        "forced_pairs": chosen[0].num_forced_pairs,
                        "objective_gain": (chosen[0].objective or 0.0) - attempts_initial[attempts.index(chosen)],
                        **cost.as_dict(),  # every search of every restart, and the answers judged
                    },
                )
            )
        return results

    def summarize(self, results: Sequence[AttackResult]) -> dict[str, Any]:
        """Success as the search saw it (the in-loop judge when one was given, else P(target) >= success_prob)
        and the search's cost per prompt."""
        extras = [r.extra for r in results]
        if not extras:
            return {}
        summary: dict[str, Any] = {
            "success_criterion": extras[0]["success_criterion"],
            "first_search_success_rate": mean(bool(e["single_shot_success"]) for e in extras),
            "any_restart_success_rate": mean(bool(e["best_of_restarts_success"]) for e in extras),
        }
        for key in ("forced_pairs", *SearchCost().as_dict()):
            summary[f"mean_{key}"] = round(mean(float(e[key]) for e in extras), 2)
        return summary
