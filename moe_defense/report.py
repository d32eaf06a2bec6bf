"""Reports people would rather look at than read: report.md (+ PNG plots) of a harden run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

ASR_VS_BUDGET = "asr_vs_budget.png"
ROSAIS_PLOT = "rosais.png"
USAGE_PLOT = "expert_usage.png"


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
    plt = _pyplot()
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
    _budget_axes(axes, f"ASR ({summary['judge']} judge)")
    axes.set_title(f"adaptive F-SOUR, {summary['trainable']} hardening")
    axes.legend()
    _save(figure, path)


def _budget_axes(axes, ylabel: str) -> None:
    """ASR axes over attack budgets, shared by the run and grid curves."""
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("attack budget (forced token-layer pairs)")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path)
    _pyplot().close(figure)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rosais(summary: dict[str, Any], path: Path) -> None:
    """Per-router safety importance (RoSais) on the original and on the hardened model."""
    plt = _pyplot()
    routing = summary["routing"]
    layers = list(routing["original"]["rosais"])
    figure, axes = plt.subplots(figsize=(6, 3.2), dpi=120)
    width = 0.38
    for offset, phase in ((-width / 2, "original"), (width / 2, "hardened")):
        axes.bar([i + offset for i in range(len(layers))], [routing[phase]["rosais"][l] for l in layers], width, label=phase)
    axes.set_xticks(range(len(layers)), layers)
    axes.set_xlabel("MoE layer (router)")
    axes.set_ylabel("RoSais (log-prob gain)")
    axes.axhline(0, color="black", linewidth=0.6)
    axes.legend()
    axes.set_title("router safety importance before / after")
    _save(figure, path)


def plot_expert_usage(summary: dict[str, Any], path: Path) -> None:
    """Expert-usage heatmaps (layer x expert), harmful vs benign prompts, before and after."""
    plt = _pyplot()
    routing = summary["routing"]
    figure, grid = plt.subplots(2, 2, figsize=(8, 5), dpi=120, squeeze=False)
    for row, phase in enumerate(("original", "hardened")):
        for col, kind in enumerate(("harmful", "benign")):
            usage = routing[phase]["usage"][kind]
            matrix = [usage[layer] for layer in usage]
            image = grid[row][col].imshow(matrix, aspect="auto", cmap="viridis", vmin=0)
            grid[row][col].set_title(f"{phase}: {kind} prompts", fontsize=9)
            grid[row][col].set_xlabel("expert", fontsize=8)
            grid[row][col].set_ylabel("layer", fontsize=8)
            grid[row][col].set_yticks(range(len(usage)), list(usage))
            figure.colorbar(image, ax=grid[row][col], fraction=0.046)
    figure.suptitle("fraction of prompt tokens routed to each expert")
    _save(figure, path)


def markdown_to_html(markdown: str, base: Path, title: str) -> str:
    """A self-contained HTML page from our report markdown (headings, bullets, tables, images inlined)."""
    import base64
    import html
    import re

    body: list[str] = []
    table: list[list[str]] = []

    def flush_table() -> None:
        if table:
            head, *rows = [r for r in table if not all(set(c.strip()) <= set("-: ") for c in r)]
            body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        flush_table()
        image = re.fullmatch(r"!\[(.*)\]\((.+)\)", line.strip())
        if image:
            data = base64.b64encode((base / image.group(2)).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(image.group(1))}" src="data:image/png;base64,{data}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>{''.join(body)}</body></html>"


def write_harden_report(out: Path, summary: dict[str, Any]) -> Path:
    """report.md beside summary.json, with the ASR-vs-budget plot."""
    from moe_defense.runner.rundir import atomic_write

    if summary["asr_vs_budget"]:
        plot_asr_vs_budget(summary, out / ASR_VS_BUDGET)
    plot_rosais(summary, out / ROSAIS_PLOT)
    plot_expert_usage(summary, out / USAGE_PLOT)
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
        f"![RoSais per router]({ROSAIS_PLOT})",
        "",
        f"![expert usage]({USAGE_PLOT})",
        "",
    ])
    path = out / "report.md"
    atomic_write(path, text)
    atomic_write(out / "report.html", markdown_to_html(text, out, f"moe-defense report: {summary['model']}"))
    return path


def _cell(stat: dict[str, Any] | None) -> str:
    if not stat or stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.2f}" + (f" ± {stat['ci95']:.2f}" if stat.get("ci95") is not None else "")


def plot_grid_matrix(summary: dict[str, Any], path: Path) -> None:
    """Heatmap of the defense x attack ASR matrix (mean over seeds)."""
    plt = _pyplot()
    defenses = summary["defenses"]
    attacks = list(summary["matrix"][defenses[0]])
    values = [[summary["matrix"][d].get(a, {}).get("mean") for a in attacks] for d in defenses]
    values = [[float("nan") if v is None else v for v in row] for row in values]
    figure, axes = plt.subplots(figsize=(1.2 + 1.1 * len(attacks), 1.0 + 0.5 * len(defenses)), dpi=120)
    image = axes.imshow(values, cmap="Reds", vmin=0, vmax=1, aspect="auto")
    axes.set_xticks(range(len(attacks)), attacks, rotation=35, ha="right", fontsize=8)
    axes.set_yticks(range(len(defenses)), defenses, fontsize=8)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if value == value:
                axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    figure.colorbar(image, ax=axes, label=f"ASR ({summary['judge']})")
    axes.set_title("ASR after each defense (adaptive attacks)")
    _save(figure, path)


def plot_grid_bars(summary: dict[str, Any], path: Path) -> None:
    """ASR per attack: original model vs every defense, with 95% intervals over seeds."""
    plt = _pyplot()
    defenses = summary["defenses"]
    attacks = list(summary["matrix"][defenses[0]])
    series = {"original (no defense)": summary["original"], **{d: summary["matrix"][d] for d in defenses}}
    width = 0.8 / len(series)
    figure, axes = plt.subplots(figsize=(max(6, 1.3 * len(attacks)), 3.6), dpi=120)
    for k, (label, stats) in enumerate(series.items()):
        means = [stats.get(a, {}).get("mean") or 0.0 for a in attacks]
        errors = [stats.get(a, {}).get("ci95") or 0.0 for a in attacks]
        axes.bar([i - 0.4 + width * (k + 0.5) for i in range(len(attacks))], means, width, yerr=errors, capsize=2, label=label)
    axes.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right", fontsize=8)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel(f"ASR ({summary['judge']})")
    axes.legend(fontsize=7)
    _save(figure, path)


def plot_grid_curves(summary: dict[str, Any], path: Path) -> None:
    """Adaptive F-SOUR ASR vs budget after each defense."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 3.6), dpi=120)
    first = next(iter(summary["asr_vs_budget"].values()))
    original = [summary["original"].get(b, {}).get("mean") for b in first]
    axes.plot(range(len(original)), [float("nan") if v is None else v for v in original], "k--", label="original (no defense)")
    for defense, curve in summary["asr_vs_budget"].items():
        labels = [b.split("@", 1)[1] for b in curve]
        axes.plot(range(len(labels)), [c["mean"] if c["mean"] is not None else float("nan") for c in curve.values()], "o-", label=defense)
        axes.set_xticks(range(len(labels)), labels)
    _budget_axes(axes, f"ASR ({summary['judge']})")
    axes.legend(fontsize=7)
    _save(figure, path)


def write_grid_report(out: Path, summary: dict[str, Any]) -> Path:
    """report.md / report.html of an ablation grid: matrix, intervals, curves, utility beside safety."""
    from moe_defense.runner.rundir import atomic_write

    lines = ["# Ablation grid: defense x attack", ""]
    if summary["cells_missing"]:
        lines += [f"- cells not finished yet: {', '.join(summary['cells_missing'])}", ""]
    if summary["defenses"]:
        attacks = list(summary["matrix"][summary["defenses"][0]])
        utility = ("benign_compliance", "over_refusal", "benign_nll")
        lines.append("| defense | " + " | ".join(attacks) + " | " + " | ".join(u.replace("_", " ") for u in utility) + " |")
        lines.append("| --- " * (1 + len(attacks) + len(utility)) + "|")
        lines.append("| original (no defense) | " + " | ".join(_cell(summary["original"].get(a)) for a in attacks) + " | "
                     + " | ".join(_cell(summary["original_utility"].get(u)) for u in utility) + " |")
        for defense in summary["defenses"]:
            row = [_cell(summary["matrix"][defense].get(a)) for a in attacks] + [_cell(summary["utility"][defense][u]) for u in utility]
            lines.append(f"| {defense} | " + " | ".join(row) + " |")
        lines += ["", f"ASR by the {summary['judge']} judge, mean ± 95% interval over seeds; attacks re-optimised on each defended model.", ""]
        plot_grid_matrix(summary, out / "grid_matrix.png")
        plot_grid_bars(summary, out / "grid_asr_bars.png")
        lines += ["![defense x attack matrix](grid_matrix.png)", "", "![ASR per attack](grid_asr_bars.png)", ""]
        if any(summary["asr_vs_budget"].values()):
            plot_grid_curves(summary, out / "grid_asr_vs_budget.png")
            lines += ["![ASR vs budget](grid_asr_vs_budget.png)", ""]
    text = "\n".join(lines)
    atomic_write(out / "report.md", text)
    atomic_write(out / "report.html", markdown_to_html(text, out, "moe-defense ablation grid"))
    return out / "report.md"


def render(directory: Path) -> Path:
    """Re-render the report of a harden run or an ablation grid directory from its summary files."""
    import json

    if (directory / "grid.yaml").is_file():
        import yaml

        from moe_defense.ablate import GridConfig, aggregate

        grid = GridConfig.model_validate(yaml.safe_load((directory / "grid.yaml").read_text())["grid"])
        aggregate(directory, grid)
        return directory / "report.md"
    if (directory / "summary.json").is_file():
        summary = json.loads((directory / "summary.json").read_text())
        if "asr_vs_budget" in summary:
            return write_harden_report(directory, summary)
    from moe_defense.errors import ConfigError

    raise ConfigError(f"{directory} is neither a harden run (summary.json from `moe-defense harden`) nor an ablation grid (grid.yaml).")
