"""A harden run's report: what changed, the headline, minimal budgets, what to ship, the tables and its plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moe_defense.report.cells import asr_rate, budget_tick, median_interval
from moe_defense.report.html import write_report
from moe_defense.report.plots import plot_asr_vs_budget, plot_expert_usage, plot_rosais, plot_survival
from moe_defense.report.ship import FULL_CHECKPOINT, ROUTER_PATCH_AND_EXPERT_LORA, ship_kind
from moe_defense.report.tables import deployment_table, headline_table

ASR_VS_BUDGET = "asr_vs_budget.png"
SURVIVAL_PLOT = "survival.png"
ROSAIS_PLOT = "rosais.png"
USAGE_PLOT = "expert_usage.png"


def shipping_line(summary: dict[str, Any]) -> str:
    """Which artifact of the run to ship where (`ship_kind` decides which exist)."""
    kind = ship_kind(summary)
    if kind == FULL_CHECKPOINT:
        return "- ship: `hardened_model/` (a plain transformers checkpoint; the run changed more than routers)"
    servers = (
        "- ship: `hardened_model/` to servers that load plain checkpoints (vLLM, TGI, llama.cpp: none serves router "
        f"LoRA); `router_patch.safetensors` ({summary['router_patch_bytes']} bytes)"
    )
    if kind == ROUTER_PATCH_AND_EXPERT_LORA:
        return (
            f"{servers} plus `train/expert_lora/` ({summary['expert_lora_bytes']} bytes, PEFT format) to teams holding "
            "the base (`moe-defense patch apply`, fingerprint-checked, then the expert adapter on the patched model)"
        )
    adapter = summary.get("router_adapter_bytes", 0)
    return f"{servers} to teams holding the base (`moe-defense patch apply`, fingerprint-checked)" + (
        f"; `router_adapter/` ({adapter} bytes) to peft users (`PeftModel.from_pretrained`)" if adapter else ""
    )


def minimal_budget_line(summary: dict[str, Any]) -> str:
    """The median minimal budget before -> after, with its order-statistic 95% interval and n."""
    minimal = summary.get("minimal_budget") or {}
    if not minimal:
        return "- the suite sweeps no attack budget: no minimal budgets"

    def median(phase: str) -> str:
        m = minimal[phase]
        return f"{median_interval(m)} n={m['n']} ({m['unflipped']} never flipped)"

    ratio = summary.get("median_budget_ratio")
    return (
        "- minimal budget per prompt (fewest forced pairs of any flipping route the adaptive search found; inf = "
        f"none found at any verified budget), median: {median('original')} -> {median('hardened')}"
        + (f", x{ratio}" if ratio is not None else "")
        + " (95% order-statistic intervals)"
    )


def headline_line(summary: dict[str, Any]) -> str:
    """The headline adaptive attack's ASR before -> after at the budget the budget policy chose."""
    headline = summary["headline_asr"]
    if not headline:
        return "- the suite sweeps no attack budget: no headline"
    return (
        f"- adaptive {summary['headline_attack']} (headline, budget {budget_tick(summary['headline_budget'])}): ASR "
        f"{asr_rate(headline['original'])} -> {asr_rate(headline['hardened'])} ({summary['judge']} judge, 95% "
        "Wilson intervals; re-optimised on the hardened model with new seeds)"
    )


def worst_case_lines(summary: dict[str, Any]) -> list[str]:
    """What each worst-case row counts: a prompt any of its attackers flipped (none: no attackers share a budget)."""
    groups = summary.get("worst_cases") or {}
    if not groups:
        return []
    return [
        "- worst case per prompt (flipped when any attacker flipped it): "
        + "; ".join(f"{label} = {' or '.join(members)}" for label, members in groups.items())
    ]


def trained_budgets(summary: dict[str, Any]) -> str:
    """What the training's route searches used: one budget, a curriculum's stages in order, or none (no term
    trained against routes, or the routes were given); a run from before `route_budgets` names the recipe's."""
    recorded = summary["training"].get("route_budgets", [summary["train_budget"]])
    stages = list(dict.fromkeys(recorded))
    if not stages:
        return "no route searched during training"
    if len(stages) == 1:
        return f"routes of budget {budget_tick(stages[0])}"
    return f"routes of budgets {', '.join(budget_tick(b) for b in stages)} (a curriculum, in order)"


def overview_lines(summary: dict[str, Any]) -> list[str]:
    """The bullets above the tables: what changed, B80, the headline, minimal budgets, shipping, training."""
    b80 = budget_tick(summary["budget_b80"]) if summary["b80_reached"] else f"not reached ({summary['b80_note']})"
    training = summary["training"]
    return [
        f"- defenses: {', '.join(d['name'] for d in summary['defenses']) or 'none'}; trainable: "
        f"**{summary['trainable']}**; tensors changed: "
        f"{summary['router_params_changed']} router, {summary['other_params_changed']} other; router patch "
        f"{summary['router_patch_bytes']} bytes",
        f"- B80 (smallest budget with original ASR >= threshold): {b80}; trained against {trained_budgets(summary)}",
        headline_line(summary),
        *worst_case_lines(summary),
        minimal_budget_line(summary),
        shipping_line(summary),
        f"- training: {training['steps']} steps in {training['seconds']} s ({training['refreshes']} route "
        f"refreshes, {training['routes_in_pool']} routes in the pool)",
    ]


def plot_lines(summary: dict[str, Any], out: Path) -> list[str]:
    """Draw the run's plots into `out`; an image line for each figure the run has data for."""
    plots = (
        (ASR_VS_BUDGET, "ASR vs budget", plot_asr_vs_budget, bool(summary["asr_vs_budget"])),
        (SURVIVAL_PLOT, "survival vs budget", plot_survival, bool(summary.get("minimal_budget"))),
        (ROSAIS_PLOT, "RoSais per router", plot_rosais, bool(summary["routing"]["original"]["rosais"])),
        (USAGE_PLOT, "expert usage", plot_expert_usage, True),
    )
    lines = []
    for name, alt, plot, drawn in plots:
        if drawn:
            plot(summary, out / name)
            lines.append(f"![{alt}]({name})")
    return lines


def write_harden_report(out: Path, summary: dict[str, Any]) -> Path:
    """report.md + report.html beside summary.json, with the ASR-vs-budget, survival, RoSais and usage plots."""
    images = plot_lines(summary, out)
    blocks = (
        f"# Hardening report: {summary['model']}",
        "\n".join(overview_lines(summary)),
        headline_table(summary),
        deployment_table(summary),  # empty when the suite ran no deployment change
        *images,
    )
    text = "\n\n".join(block for block in blocks if block) + "\n"
    return write_report(out, text, f"moe-defense report: {summary['model']}")
