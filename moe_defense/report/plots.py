"""The reports' PNG plots (matplotlib, Agg): a harden run's curves and routing, a grid's matrix, bars and curves.

A missing figure (nothing scored) is drawn as a gap or a hatched "n/a" bar, never as a robust-looking 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moe_defense.report.cells import MISSING, budget_tick
from moe_defense.report.tables import PHASES

PHASE_STYLES = (("original", "o-"), ("hardened", "s-"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path)
    _pyplot().close(figure)


def _budget_axes(axes, ylabel: str) -> None:
    """Rate axes over attack budgets, shared by the run and grid curves."""
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("attack budget (forced token-layer pairs)")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)


def _phase_errorbars(axes, curves: dict[str, list[dict[str, Any]]], value: str, ci: str, **style: Any) -> None:
    """One line per phase over its budgets with 95% error bars, the phases a little apart so the bars stay apart."""
    for offset, (phase, marker) in zip((-0.05, 0.05), PHASE_STYLES, strict=True):
        points = curves[phase]
        x = [i + offset for i in range(len(points))]
        values = [float("nan") if p[value] is None else p[value] for p in points]
        low = [0.0 if p[ci] is None else p[value] - p[ci][0] for p in points]
        high = [0.0 if p[ci] is None else p[ci][1] - p[value] for p in points]
        axes.errorbar(x, values, yerr=[low, high], fmt=marker, capsize=3, label=phase, **style)
        axes.set_xticks(range(len(points)), [budget_tick(p["budget"]) for p in points])


def plot_asr_vs_budget(summary: dict[str, Any], path: Path) -> None:
    """ASR of the adaptive curve attack per forced-pair budget, original vs hardened, with 95% intervals."""
    figure, axes = _pyplot().subplots(figsize=(6, 3.6), dpi=120)
    curves = {phase: list(summary["asr_vs_budget"].get(phase, {}).values()) for phase in PHASES}
    _phase_errorbars(axes, curves, "asr", "asr_ci95")
    budgets = [p["budget"] for p in curves["original"]]
    if summary["b80_reached"] and summary["budget_b80"] in budgets:
        axes.axvline(budgets.index(summary["budget_b80"]), color="grey", linestyle=":", label="B80")
    _budget_axes(axes, f"ASR ({summary['judge']} judge)")
    axes.set_title(f"adaptive attack vs budget, {summary['trainable']} hardening")
    axes.legend()
    _save(figure, path)


def plot_survival(summary: dict[str, Any], path: Path) -> None:
    """Fraction of prompts still safe (minimal budget above b) per verified budget, original vs hardened."""
    figure, axes = _pyplot().subplots(figsize=(6, 3.6), dpi=120)
    curves = {phase: summary["minimal_budget"][phase]["survival"] for phase in PHASES}
    _phase_errorbars(axes, curves, "safe", "ci95", drawstyle="steps-post")
    _budget_axes(axes, "fraction of prompts still safe")
    axes.set_title("survival: no found route of <= b pairs flips the prompt")
    axes.legend()
    _save(figure, path)


def plot_rosais(summary: dict[str, Any], path: Path) -> None:
    """Per-router safety importance (RoSais) on the original and on the hardened model."""
    routing = summary["routing"]
    layers = list(routing["original"]["rosais"])
    figure, axes = _pyplot().subplots(figsize=(6, 3.2), dpi=120)
    width = 0.38
    for offset, phase in zip((-width / 2, width / 2), PHASES, strict=True):
        heights = [routing[phase]["rosais"][layer] for layer in layers]
        axes.bar([i + offset for i in range(len(layers))], heights, width, label=phase)
    axes.set_xticks(range(len(layers)), layers)
    axes.set_xlabel("MoE layer (router)")
    axes.set_ylabel("RoSais (log-prob gain)")
    axes.axhline(0, color="black", linewidth=0.6)
    axes.legend()
    axes.set_title("router safety importance before / after")
    _save(figure, path)


def plot_expert_usage(summary: dict[str, Any], path: Path) -> None:
    """Expert-usage heatmaps (layer x expert), harmful vs benign prompts, before and after."""
    routing = summary["routing"]
    figure, grid = _pyplot().subplots(2, 2, figsize=(8, 5), dpi=120, squeeze=False)
    for row, phase in enumerate(PHASES):
        for col, kind in enumerate(("harmful", "benign")):
            usage = routing[phase]["usage"][kind]
            image = grid[row][col].imshow([usage[layer] for layer in usage], aspect="auto", cmap="viridis", vmin=0)
            grid[row][col].set_title(f"{phase}: {kind} prompts", fontsize=9)
            grid[row][col].set_xlabel("expert", fontsize=8)
            grid[row][col].set_ylabel("layer", fontsize=8)
            grid[row][col].set_yticks(range(len(usage)), list(usage))
            figure.colorbar(image, ax=grid[row][col], fraction=0.046)
    figure.suptitle("fraction of prompt tokens routed to each expert")
    _save(figure, path)


def plot_grid_matrix(summary: dict[str, Any], path: Path) -> None:
    """Heatmap of the defense x attack ASR matrix (mean over seeds)."""
    defenses = summary["defenses"]
    attacks = list(summary["matrix"][defenses[0]])
    means = [[summary["matrix"][d].get(a, {}).get("mean") for a in attacks] for d in defenses]
    values = [[float("nan") if v is None else v for v in row] for row in means]
    figure, axes = _pyplot().subplots(figsize=(1.2 + 1.1 * len(attacks), 1.0 + 0.5 * len(defenses)), dpi=120)
    image = axes.imshow(values, cmap="Reds", vmin=0, vmax=1, aspect="auto")
    axes.set_xticks(range(len(attacks)), attacks, rotation=35, ha="right", fontsize=8)
    axes.set_yticks(range(len(defenses)), defenses, fontsize=8)
    for i, row in enumerate(means):
        for j, value in enumerate(row):
            if value is not None:
                axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    figure.colorbar(image, ax=axes, label=f"ASR ({summary['judge']})")
    axes.set_title("ASR after each defense (adaptive attacks)")
    _save(figure, path)


def plot_grid_bars(summary: dict[str, Any], path: Path) -> None:
    """ASR per attack: original model vs every defense, with 95% intervals over seeds."""
    defenses = summary["defenses"]
    attacks = list(summary["matrix"][defenses[0]])
    series = {"original (no defense)": summary["original"], **{d: summary["matrix"][d] for d in defenses}}
    width = 0.8 / len(series)
    figure, axes = _pyplot().subplots(figsize=(max(6, 1.3 * len(attacks)), 3.6), dpi=120)
    for k, (label, stats) in enumerate(series.items()):
        x = [i - 0.4 + width * (k + 0.5) for i in range(len(attacks))]
        cells = [stats.get(a) or {"mean": None, "ci95": None} for a in attacks]
        means = [float("nan") if c["mean"] is None else c["mean"] for c in cells]
        errors = [
            [0.0 if not c["ci95"] else c["mean"] - c["ci95"][0] for c in cells],
            [0.0 if not c["ci95"] else c["ci95"][1] - c["mean"] for c in cells],
        ]
        bars = axes.bar(x, means, width, yerr=errors, capsize=2, label=label)
        colour = bars.patches[0].get_facecolor()
        for position, cell in zip(x, cells, strict=True):
            if cell["mean"] is None:  # nothing scored (a dead judge): say so instead of drawing a robust-looking 0
                axes.bar(position, 1.0, width, fill=False, hatch="//", edgecolor=colour, linewidth=0)
                axes.text(position, 0.5, MISSING, rotation=90, ha="center", va="center", fontsize=6)
    axes.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right", fontsize=8)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel(f"ASR ({summary['judge']})")
    axes.legend(fontsize=7)
    _save(figure, path)


def plot_grid_curves(summary: dict[str, Any], path: Path) -> None:
    """Adaptive F-SOUR ASR vs budget after each defense."""
    figure, axes = _pyplot().subplots(figsize=(6, 3.6), dpi=120)
    budgets = summary["budgets"]
    series = {"original (no defense)": summary["original_curve"], **summary["asr_vs_budget"]}
    for (name, curve), style in zip(series.items(), ["k--", *["o-"] * (len(series) - 1)], strict=True):
        means = [float("nan") if c["mean"] is None else c["mean"] for c in curve.values()]
        axes.plot(range(len(budgets)), means, style, label=name)
    axes.set_xticks(range(len(budgets)), [budget_tick(b) for b in budgets])
    _budget_axes(axes, f"ASR ({summary['judge']})")
    axes.legend(fontsize=7)
    _save(figure, path)
