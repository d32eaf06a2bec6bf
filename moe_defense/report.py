"""Reports people would rather look at than read: report.md (+ PNG plots) of a harden run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

ASR_VS_BUDGET = "asr_vs_budget.png"


def headline_table(summary: dict[str, Any]) -> str:
    """The few lines a user reads in the terminal."""
    def fmt(value: Any) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else (f"{value:.3f}" if isinstance(value, float) else str(value))

    rows = summary["phases"]
    lines = ["| attack | original ASR | hardened ASR |", "| --- | --- | --- |"]
    for label in dict.fromkeys([*rows["original"], *rows["hardened"]]):
        if label in ("benign", "over-refusal"):
            continue
        lines.append(f"| {label} | {fmt(rows['original'].get(label, {}).get('asr'))} | {fmt(rows['hardened'].get(label, {}).get('asr'))} |")
    u = summary["utility"]
    for key in ("benign_compliance", "over_refusal", "benign_nll"):
        lines.append(f"| {key.replace('_', ' ')} | {fmt(u['original'][key])} | {fmt(u['hardened'][key])} |")
    return "\n".join(lines)


def plot_asr_vs_budget(summary: dict[str, Any], path: Path) -> None:
    """ASR of the adaptive F-SOUR per forced-pair budget, original vs hardened ("inf" = no cap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.6), dpi=120)
    for phase, style in (("original", "o-"), ("hardened", "s-")):
        curve = summary["asr_vs_budget"].get(phase, {})
        labels = [label.split("@", 1)[1] for label in curve]
        values = [float("nan") if v is None else v for v in curve.values()]
        axes.plot(range(len(labels)), values, style, label=phase)
        axes.set_xticks(range(len(labels)), labels)
    if summary.get("budget_b80") is not None:
        labels = [label.split("@", 1)[1] for label in summary["asr_vs_budget"]["original"]]
        axes.axvline(labels.index(str(summary["budget_b80"])), color="grey", linestyle=":", label="B80")
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("attack budget (forced token-layer pairs)")
    axes.set_ylabel(f"ASR ({summary['judge']} judge)")
    axes.set_title(f"adaptive F-SOUR, {summary['trainable']} hardening")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_harden_report(out: Path, summary: dict[str, Any]) -> Path:
    """report.md beside summary.json, with the ASR-vs-budget plot."""
    from moe_defense.runner.rundir import atomic_write

    if summary["asr_vs_budget"]:
        plot_asr_vs_budget(summary, out / ASR_VS_BUDGET)
    at = summary["asr_at_b80"] or {"attack": "-", "original": None, "hardened": None}
    b80 = summary["budget_b80"] if summary["b80_reached"] else f"not reached ({summary['b80_note']})"
    training = summary["training"]
    text = "\n".join([
        f"# Hardening report: {summary['model']}",
        "",
        f"- hardening: **{summary['trainable']}**; tensors changed: {summary['router_params_changed']} router, "
        f"{summary['other_params_changed']} other; router patch {summary['router_patch_bytes']} bytes",
        f"- B80 (smallest budget with original ASR >= threshold): {b80}; trained against routes of budget {summary['train_budget']}",
        f"- adaptive F-SOUR at {at['attack']}: ASR {at['original']} -> {at['hardened']} ({summary['judge']} judge, re-optimised on the hardened model with a new seed)",
        f"- training: {training['steps']} steps in {training['seconds']} s ({training['refreshes']} route refreshes, {training['routes_in_pool']} routes in the pool)",
        "",
        headline_table(summary),
        "",
        f"![ASR vs budget]({ASR_VS_BUDGET})" if summary["asr_vs_budget"] else "",
        "",
    ])
    path = out / "report.md"
    atomic_write(path, text)
    return path
