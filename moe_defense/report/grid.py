"""An ablation grid's report: the defense x attack matrix beside utility, minimal budgets, and its plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moe_defense.report.cells import MISSING
from moe_defense.report.html import write_report
from moe_defense.report.plots import plot_grid_bars, plot_grid_curves, plot_grid_matrix
from moe_defense.report.tables import grid_minimal_table, grid_table

GRID_SUMMARY = "grid_summary.json"
GRID_MATRIX = "grid_matrix.png"
GRID_BARS = "grid_asr_bars.png"
GRID_CURVES = "grid_asr_vs_budget.png"


def grid_plot_lines(summary: dict[str, Any], out: Path) -> list[str]:
    """Draw the matrix, the bars and (when a cell swept budgets) the curves into `out`; their image lines."""
    plot_grid_matrix(summary, out / GRID_MATRIX)
    plot_grid_bars(summary, out / GRID_BARS)
    lines = [f"![defense x attack matrix]({GRID_MATRIX})", "", f"![ASR per attack]({GRID_BARS})", ""]
    if any(summary["asr_vs_budget"].values()):
        plot_grid_curves(summary, out / GRID_CURVES)
        lines += [f"![ASR vs budget]({GRID_CURVES})", ""]
    return lines


def write_grid_report(out: Path, summary: dict[str, Any]) -> Path:
    """report.md / report.html of an ablation grid: matrix, intervals, curves, utility beside safety."""
    lines = ["# Ablation grid: defense x attack", ""]
    if summary["cells_missing"]:
        lines += [f"- cells not finished yet: {', '.join(summary['cells_missing'])}", ""]
    if summary["defenses"]:
        lines += [
            *grid_table(summary),
            "",
            f"ASR by the {summary['judge']} judge: mean over seeds [95% interval: Student t over seeds, Wilson over "
            f"prompts with one seed]; {MISSING}: nothing scored; attacks re-optimised on each defended model.",
            "",
            *grid_minimal_table(summary),
            *grid_plot_lines(summary, out),
        ]
    return write_report(out, "\n".join(lines), "moe-defense ablation grid")
