"""The schema of a harden run's summary.json: rows per phase, the budget policy's headline, utility.

Every ASR and rate carries its n and a 95% interval (Wilson, from the row's own counts); the headline
names its budget and attack instead of hiding a fallback behind a fixed key.
"""

from __future__ import annotations

from typing import Any

from moe_defense.budget import BudgetPolicy
from moe_defense.recipe import Recipe
from moe_defense.robustness import median_ratio
from moe_defense.verify import UTILITY_ROWS, UTILITY_TASKS, Suite


def asr_point(row: dict[str, Any] | None) -> dict[str, Any]:
    """ASR with its interval and n (scored prompts) from one summary row; all None when the row is missing."""
    row = row or {}
    return {"asr": row.get("asr"), "asr_ci95": row.get("asr_ci95"), "n_scored": row.get("n_scored")}


def utility(rows: dict[str, dict[str, Any]], nll: float) -> dict[str, Any]:
    benign, lookalike = rows.get("benign", {}), rows.get("over-refusal", {})
    return {
        "benign_compliance": benign.get("benign_compliance"),
        "benign_compliance_ci95": benign.get("benign_compliance_ci95"),
        "n_benign": benign.get("n_benign_scored"),
        "over_refusal": lookalike.get("over_refusal"),
        "over_refusal_ci95": lookalike.get("over_refusal_ci95"),
        "n_over_refusal": lookalike.get("n_benign_scored"),
        "benign_nll": round(nll, 4),
        "tasks": rows.get(UTILITY_TASKS, {}),  # lm-eval: per task {metrics, stderr, n}
    }


def harden_summary(
    recipe: Recipe,
    suite: Suite,
    budgets: BudgetPolicy | None,
    facts: dict[str, Any],
    nll: tuple[float, float],
    minimal: dict[str, dict[str, Any] | None],
) -> dict[str, Any]:
    """`minimal` is each phase's `robustness()` (None without a curve attack)."""
    swept = all(minimal.values())
    rows = suite.rows
    training_defense = recipe.training_defense
    curve = (
        {
            phase: {p.label: {"budget": p.budget, **asr_point(rows[phase].get(p.label))} for p in suite.curve(phase)}
            for phase in rows
        }
        if budgets
        else {}
    )
    headline = budgets.headline.label if budgets else None
    return {
        "model": recipe.model,
        "judge": recipe.judges[0].name,
        "defenses": [spec.model_dump(mode="json") for spec in recipe.defenses],
        "trainable": training_defense.build().trainable if training_defense else "none",
        "route_reviewers": facts.get("route_reviewers", 0),  # inference-time route guards attached while attacked
        "budget_b80": budgets.b80 if budgets and budgets.b80_reached else None,
        "b80_reached": bool(budgets and budgets.b80_reached),
        "b80_note": budgets.note(recipe.verify.asr_threshold) if budgets else "the suite sweeps no attack budget",
        "train_budget": budgets.train_budget if budgets else recipe.train_budget,
        "headline_attack": headline,
        "headline_budget": budgets.headline.budget if budgets else None,
        "headline_asr": {phase: asr_point(rows[phase].get(headline)) for phase in rows} if headline else None,
        "asr_vs_budget": curve,
        "minimal_budget": minimal if swept else {},
        "median_budget_ratio": median_ratio(minimal["original"], minimal["hardened"]) if swept else None,
        "utility": {
            phase: utility(rows[phase], value) for phase, value in zip(("original", "hardened"), nll, strict=True)
        },
        "router_params_changed": facts.get("router_params_changed", 0),
        "other_params_changed": facts.get("other_params_changed", 0),
        "router_patch_bytes": facts.get("router_patch_bytes", 0),
        "router_adapter_bytes": facts.get("router_adapter_bytes", 0),  # the same change as a PEFT adapter
        "changed_fraction": facts.get("changed_fraction", 0.0),
        "patch_fraction": facts.get("patch_fraction", facts.get("changed_fraction", 0.0)),  # shipped patch / model
        "expert_lora_bytes": facts.get("expert_lora_bytes", 0),  # changed elements / all elements of the model
        "training": facts.get("training", {"steps": 0, "seconds": 0.0, "refreshes": 0, "routes_in_pool": 0}),
        "route_guard": facts.get("route_guard"),
        "worst_cases": {group.label: list(group.members) for group in suite.worst_cases("original")},
        "attacks": [label for label in rows["original"] if label not in UTILITY_ROWS]
        + [label for label in rows["hardened"] if label not in UTILITY_ROWS and label not in rows["original"]],
        "phases": rows,
    }
