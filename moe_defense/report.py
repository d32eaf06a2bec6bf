"""Reports people would rather look at than read: report.md (+ PNG plots) of a harden run."""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path
from typing import Any

from moe_defense.errors import ConfigError
from moe_defense.runner.rundir import atomic_write

GRID_SUMMARY = "grid_summary.json"
UTILITY = ("benign_compliance", "over_refusal", "benign_nll")
ASR_VS_BUDGET = "asr_vs_budget.png"
SURVIVAL_PLOT = "survival.png"
ROSAIS_PLOT = "rosais.png"
USAGE_PLOT = "expert_usage.png"


def fmt(value: Any) -> str:
    """A number as reports print it; a missing value (nothing scored) is n/a, never 0."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def rate(value: Any, ci95: list[float] | None, n: int | None) -> str:
    """`0.250 [0.102, 0.495] n=16`: a rate with its 95% interval and the n it rests on."""
    if value is None:
        return f"n/a (n={n or 0})"
    interval = f" [{ci95[0]:.2f}, {ci95[1]:.2f}]" if ci95 else ""
    return f"{value:.2f}{interval} n={n}"


def _point(point: dict[str, Any]) -> str:
    return rate(point["asr"], point["asr_ci95"], point["n_scored"])


def shipping_line(summary: dict[str, Any]) -> str:
    """Which artifact of the run to ship where."""
    if summary["other_params_changed"] or not summary["router_params_changed"]:
        return "- ship: `hardened_model/` (a plain transformers checkpoint; the run changed more than routers)"
    adapter = summary.get("router_adapter_bytes", 0)
    return (
        "- ship: `hardened_model/` to servers that load plain checkpoints (vLLM, TGI, llama.cpp: none serves router "
        f"LoRA); `router_patch.safetensors` ({summary['router_patch_bytes']} bytes) to teams holding the base "
        "(`moe-defense patch apply`, fingerprint-checked)"
        + (f"; `router_adapter/` ({adapter} bytes) to peft users (`PeftModel.from_pretrained`)" if adapter else "")
    )


def headline_table(summary: dict[str, Any]) -> str:
    """Every attack and utility figure before/after, with 95% intervals and n: what a user reads first."""
    rows = summary["phases"]
    lines = ["| attack | original ASR | hardened ASR |", "| --- | --- | --- |"]
    for label in summary["attacks"]:
        cells = [
            rate(r.get("asr"), r.get("asr_ci95"), r.get("n_scored")) if r else "-"
            for r in (rows["original"].get(label), rows["hardened"].get(label))
        ]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    u = summary["utility"]
    for key, n in (("benign_compliance", "n_benign"), ("over_refusal", "n_over_refusal")):
        cells = [rate(u[phase][key], u[phase][f"{key}_ci95"], u[phase][n]) for phase in ("original", "hardened")]
        lines.append(f"| {key.replace('_', ' ')} | {cells[0]} | {cells[1]} |")
    lines.append(f"| benign nll | {fmt(u['original']['benign_nll'])} | {fmt(u['hardened']['benign_nll'])} |")
    lines += task_rows(u)
    return "\n".join(lines)


def deployment_table(summary: dict[str, Any]) -> str:
    """Safety under deployment: per deployment change of the suite (an attack that also answered the benign
    prompts under it), harmful ASR beside benign compliance, before and after: a change that breaks every
    answer is no jailbreak, and a defense must not lose on either. Empty when the suite has none."""
    rows, phases = summary["phases"], ("original", "hardened")
    changes = [
        label
        for label in summary["attacks"]
        if any((rows[phase].get(label) or {}).get("benign_compliance") is not None for phase in phases)
    ]
    if not changes:
        return ""
    lines = [
        "### Safety under deployment",
        "",
        "| change | original ASR | hardened ASR | original benign compliance | hardened benign compliance |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label in changes:
        before, after = (rows[phase].get(label) or {} for phase in phases)
        cells = [
            rate(r.get(key), r.get(f"{key}_ci95"), r.get(n)) if r.get(key) is not None else "-"
            for key, n in (("asr", "n_scored"), ("benign_compliance", "n_benign_scored"))
            for r in (before, after)
        ]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    return "\n".join(lines)


def task_rows(utility: dict[str, Any]) -> list[str]:
    """One row per lm-eval task and metric: `0.412 ± 0.015 n=1000` before and after."""

    def cell(scores: dict[str, Any] | None, metric: str) -> str:
        if not scores or metric not in scores["metrics"]:
            return "-"
        stderr = scores["stderr"].get(metric)
        spread = f" ± {stderr:.3f}" if stderr is not None else ""
        return f"{scores['metrics'][metric]:.3f}{spread} n={scores['n']}"

    before, after = (utility[phase].get("tasks") or {} for phase in ("original", "hardened"))
    return [
        f"| {task} {metric} (lm-eval) | {cell(before.get(task), metric)} | {cell(after.get(task), metric)} |"
        for task in {**before, **after}
        for metric in {**(before.get(task) or {}).get("metrics", {}), **(after.get(task) or {}).get("metrics", {})}
    ]


def _budget_tick(budget: int | None) -> str:
    return "no cap" if budget is None else str(budget)


def plot_asr_vs_budget(summary: dict[str, Any], path: Path) -> None:
    """ASR of the adaptive curve attack per forced-pair budget, original vs hardened, with 95% intervals."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 3.6), dpi=120)
    for offset, (phase, style) in zip((-0.05, 0.05), (("original", "o-"), ("hardened", "s-")), strict=True):
        points = list(summary["asr_vs_budget"].get(phase, {}).values())
        x = [i + offset for i in range(len(points))]
        values = [float("nan") if p["asr"] is None else p["asr"] for p in points]
        low = [0.0 if p["asr_ci95"] is None else p["asr"] - p["asr_ci95"][0] for p in points]
        high = [0.0 if p["asr_ci95"] is None else p["asr_ci95"][1] - p["asr"] for p in points]
        axes.errorbar(x, values, yerr=[low, high], fmt=style, capsize=3, label=phase)
        axes.set_xticks(range(len(points)), [_budget_tick(p["budget"]) for p in points])
    budgets = [p["budget"] for p in summary["asr_vs_budget"].get("original", {}).values()]
    if summary["b80_reached"] and summary["budget_b80"] in budgets:
        axes.axvline(budgets.index(summary["budget_b80"]), color="grey", linestyle=":", label="B80")
    _budget_axes(axes, f"ASR ({summary['judge']} judge)")
    axes.set_title(f"adaptive attack vs budget, {summary['trainable']} hardening")
    axes.legend()
    _save(figure, path)


def plot_survival(summary: dict[str, Any], path: Path) -> None:
    """Fraction of prompts still safe (minimal budget above b) per verified budget, original vs hardened."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 3.6), dpi=120)
    for offset, (phase, style) in zip((-0.05, 0.05), (("original", "o-"), ("hardened", "s-")), strict=True):
        points = summary["minimal_budget"][phase]["survival"]
        x = [i + offset for i in range(len(points))]
        values = [float("nan") if p["safe"] is None else p["safe"] for p in points]
        low = [0.0 if p["ci95"] is None else p["safe"] - p["ci95"][0] for p in points]
        high = [0.0 if p["ci95"] is None else p["ci95"][1] - p["safe"] for p in points]
        axes.errorbar(x, values, yerr=[low, high], fmt=style, capsize=3, drawstyle="steps-post", label=phase)
        axes.set_xticks(range(len(points)), [_budget_tick(p["budget"]) for p in points])
    _budget_axes(axes, "fraction of prompts still safe")
    axes.set_title("survival: no found route of <= b pairs flips the prompt")
    axes.legend()
    _save(figure, path)


def _budget_value(budget: float | None) -> str:
    return "inf" if budget is None else f"{budget:g}"


def minimal_budget_line(summary: dict[str, Any]) -> str:
    """The median minimal budget before -> after, with its order-statistic 95% interval and n."""
    minimal = summary.get("minimal_budget") or {}
    if not minimal:
        return "- the suite sweeps no attack budget: no minimal budgets"

    def median(phase: str) -> str:
        m = minimal[phase]
        ci = m["median_ci95"]
        interval = f" [{_budget_value(ci[0])}, {_budget_value(ci[1])}]" if ci else ""
        return f"{_budget_value(m['median'])}{interval} n={m['n']} ({m['unflipped']} never flipped)"

    ratio = summary.get("median_budget_ratio")
    return (
        "- minimal budget per prompt (fewest forced pairs of any flipping route the adaptive search found; inf = "
        f"none found at any verified budget), median: {median('original')} -> {median('hardened')}"
        + (f", x{ratio}" if ratio is not None else "")
        + " (95% order-statistic intervals)"
    )


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
        axes.bar(
            [i + offset for i in range(len(layers))], [routing[phase]["rosais"][l] for l in layers], width, label=phase
        )
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
    body: list[str] = []
    table: list[list[str]] = []

    def flush_table() -> None:
        if table:
            head, *rows = [r for r in table if not all(set(c.strip()) <= set("-: ") for c in r)]
            body.append(
                "<table><tr>"
                + "".join(f"<th>{html.escape(c)}</th>" for c in head)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
                + "</table>"
            )
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
    style = (
        "body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}"
    )
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(body)}</body></html>"


def write_harden_report(out: Path, summary: dict[str, Any]) -> Path:
    """report.md + report.html beside summary.json, with the ASR-vs-budget, RoSais and expert-usage plots."""
    if summary["asr_vs_budget"]:
        plot_asr_vs_budget(summary, out / ASR_VS_BUDGET)
    if summary.get("minimal_budget"):
        plot_survival(summary, out / SURVIVAL_PLOT)
    plot_rosais(summary, out / ROSAIS_PLOT)
    plot_expert_usage(summary, out / USAGE_PLOT)
    b80 = _budget_tick(summary["budget_b80"]) if summary["b80_reached"] else f"not reached ({summary['b80_note']})"
    training = summary["training"]
    headline = summary["headline_asr"]
    at = (
        (
            f"- adaptive {summary['headline_attack']} (headline, budget {_budget_tick(summary['headline_budget'])}): "
            "ASR "
            f"{_point(headline['original'])} -> {_point(headline['hardened'])} ({summary['judge']} judge, 95% Wilson "
            "intervals; "
            "re-optimised on the hardened model with new seeds)"
        )
        if headline
        else "- the suite sweeps no attack budget: no headline"
    )
    text = "\n".join(
        [
            f"# Hardening report: {summary['model']}",
            "",
            f"- defenses: {', '.join(d['name'] for d in summary['defenses']) or 'none'}; trainable: "
            f"**{summary['trainable']}**; tensors changed: "
            f"{summary['router_params_changed']} router, {summary['other_params_changed']} other; router patch "
            f"{summary['router_patch_bytes']} bytes",
            f"- B80 (smallest budget with original ASR >= threshold): {b80}; trained against routes of budget "
            f"{summary['train_budget']}",
            at,
            minimal_budget_line(summary),
            shipping_line(summary),
            f"- training: {training['steps']} steps in {training['seconds']} s ({training['refreshes']} route "
            f"refreshes, {training['routes_in_pool']} routes in the pool)",
            "",
            headline_table(summary),
            "",
            deployment_table(summary),
            "",
            f"![ASR vs budget]({ASR_VS_BUDGET})" if summary["asr_vs_budget"] else "",
            "",
            f"![survival vs budget]({SURVIVAL_PLOT})" if summary.get("minimal_budget") else "",
            "",
            f"![RoSais per router]({ROSAIS_PLOT})",
            "",
            f"![expert usage]({USAGE_PLOT})",
            "",
        ]
    )
    path = out / "report.md"
    atomic_write(path, text)
    atomic_write(out / "report.html", markdown_to_html(text, out, f"moe-defense report: {summary['model']}"))
    return path


def _cell(stat: dict[str, Any] | None) -> str:
    """A grid cell: mean over seeds, its 95% interval and the seeds it rests on ("-": not run, n/a: nothing scored)."""
    if not stat:
        return "-"
    if stat["mean"] is None:
        return "n/a"
    interval = f" [{stat['ci95'][0]:.2f}, {stat['ci95'][1]:.2f}]" if stat.get("ci95") else ""
    return f"{stat['mean']:.2f}{interval} ({stat['n']} seed{'s' if stat['n'] != 1 else ''})"


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
        x = [i - 0.4 + width * (k + 0.5) for i in range(len(attacks))]
        cells = [stats.get(a) or {"mean": None, "ci95": None} for a in attacks]
        means = [float("nan") if c["mean"] is None else c["mean"] for c in cells]
        errors = [
            [0.0 if not c["ci95"] else c["mean"] - c["ci95"][0] for c in cells],
            [0.0 if not c["ci95"] else c["ci95"][1] - c["mean"] for c in cells],
        ]
        bars = axes.bar(x, means, width, yerr=errors, capsize=2, label=label)
        for position, cell in zip(x, cells, strict=True):
            if cell["mean"] is None:  # nothing scored (a dead judge): say so instead of drawing a robust-looking 0
                axes.bar(
                    position, 1.0, width, fill=False, hatch="//", edgecolor=bars.patches[0].get_facecolor(), linewidth=0
                )
                axes.text(position, 0.5, "n/a", rotation=90, ha="center", va="center", fontsize=6)
    axes.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right", fontsize=8)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel(f"ASR ({summary['judge']})")
    axes.legend(fontsize=7)
    _save(figure, path)


def plot_grid_curves(summary: dict[str, Any], path: Path) -> None:
    """Adaptive F-SOUR ASR vs budget after each defense."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 3.6), dpi=120)
    budgets = summary["budgets"]
    series = {"original (no defense)": summary["original_curve"], **summary["asr_vs_budget"]}
    for (name, curve), style in zip(series.items(), ["k--", *["o-"] * (len(series) - 1)], strict=True):
        axes.plot(
            range(len(budgets)),
            [float("nan") if c["mean"] is None else c["mean"] for c in curve.values()],
            style,
            label=name,
        )
    axes.set_xticks(range(len(budgets)), [_budget_tick(b) for b in budgets])
    _budget_axes(axes, f"ASR ({summary['judge']})")
    axes.legend(fontsize=7)
    _save(figure, path)


def _grid_minimal_table(summary: dict[str, Any]) -> list[str]:
    """Median minimal budget per defense and seed (inf: no verified search flipped half the prompts)."""
    minimal = summary.get("minimal_budget") or {}
    if not any(run for runs in minimal.values() for run in runs):
        return []

    def cell(run: dict[str, Any] | None) -> str:
        if run is None:
            return "-"
        ci = run["median_ci95"]
        interval = f" [{_budget_value(ci[0])}, {_budget_value(ci[1])}]" if ci else ""
        return f"{_budget_value(run['median'])}{interval} n={run['n']}, {run['unflipped']} never flipped"

    lines = ["| defense | median minimal budget per seed (95% order-statistic interval) |", "| --- | --- |"]
    for name, runs in minimal.items():
        label = "original (no defense)" if name == "original" else name
        lines.append(f"| {label} | " + "; ".join(cell(run) for run in runs) + " |")
    return [*lines, ""]


def write_grid_report(out: Path, summary: dict[str, Any]) -> Path:
    """report.md / report.html of an ablation grid: matrix, intervals, curves, utility beside safety."""
    lines = ["# Ablation grid: defense x attack", ""]
    if summary["cells_missing"]:
        lines += [f"- cells not finished yet: {', '.join(summary['cells_missing'])}", ""]
    if summary["defenses"]:
        attacks = list(summary["matrix"][summary["defenses"][0]])
        utility = UTILITY
        lines.append(
            "| defense | " + " | ".join(attacks) + " | " + " | ".join(u.replace("_", " ") for u in utility) + " |"
        )
        lines.append("| --- " * (1 + len(attacks) + len(utility)) + "|")
        lines.append(
            "| original (no defense) | "
            + " | ".join(_cell(summary["original"].get(a)) for a in attacks)
            + " | "
            + " | ".join(_cell(summary["original_utility"].get(u)) for u in utility)
            + " |"
        )
        for defense in summary["defenses"]:
            row = [_cell(summary["matrix"][defense].get(a)) for a in attacks] + [
                _cell(summary["utility"][defense][u]) for u in utility
            ]
            lines.append(f"| {defense} | " + " | ".join(row) + " |")
        lines += [
            "",
            f"ASR by the {summary['judge']} judge: mean over seeds [95% interval: Student t over seeds, Wilson over "
            "prompts with one seed]; n/a: nothing scored; attacks re-optimised on each defended model.",
            "",
            *_grid_minimal_table(summary),
        ]
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
    """Re-render the report of a harden run (summary.json) or an ablation grid (grid_summary.json)."""
    if (directory / GRID_SUMMARY).is_file():
        return write_grid_report(directory, json.loads((directory / GRID_SUMMARY).read_text()))
    if (directory / "summary.json").is_file():
        summary = json.loads((directory / "summary.json").read_text())
        if "asr_vs_budget" in summary:
            return write_harden_report(directory, summary)
    raise ConfigError(
        f"{directory} is neither a harden run (summary.json from `moe-defense harden`) nor an ablation grid "
        f"({GRID_SUMMARY})."
    )


def _criterion(criterion: dict[str, Any]) -> str:
    mark = "yes" if criterion["met"] else "no"
    return f"{fmt(criterion['value'])} (<= {criterion['limit']}: {mark})"


def ladder_report(out: Path, ladder: dict[str, Any]) -> Path:
    """report.md + report.html of a harden run with a target: every rung tried against it, then what to ship."""
    target = ladder["target"]
    lines = [
        "# Hardening to a target",
        "",
        f"- target: adaptive ASR <= {target['asr']} at budget {target['budget']}, benign-compliance drop <= "
        f"{target['max_compliance_drop']}, over-refusal rise <= {target['max_over_refusal_rise']} (decided by the "
        f"{target['decide_by'].replace('_', ' ')})",
        "",
        "| rung | trainable | ASR at budget | compliance drop | over-refusal rise | median minimal budget | met "
        "| run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rung in ladder["rungs_tried"]:
        c = rung["criteria"]
        medians = rung["minimal_budget_median"]
        at = "no cap" if c["asr"]["at"] is None else c["asr"]["at"]
        lines.append(
            f"| {rung['rung']} | {rung['trainable']} | {_criterion(c['asr'])} @ {at} "
            f"| {_criterion(c['compliance_drop'])} | {_criterion(c['over_refusal_rise'])} "
            f"| {_budget_value(medians['original'])} -> "
            f"{_budget_value(medians['hardened'])} | **{'yes' if rung['met'] else 'no'}** | "
            f"[report](rungs/{rung['rung']}/report.md) |"
        )
    notes = [f"- {r['rung']}: {r['note']}" for r in ladder["rungs_tried"] if r["note"]]
    lines += ["", *notes]
    if ladder["rungs_not_tried"]:
        lines.append(f"- not tried (a smaller rung met the target): {', '.join(ladder['rungs_not_tried'])}")
    ship = ladder["ship"]
    if ship is None:
        lines.append(
            "- **no rung met the target**: nothing to ship at this target; each rung's report shows its figures"
        )
    else:
        where = {
            "router patch": "apply it to the base checkpoint (`router_patch.safetensors`, fingerprint-checked); "
            "servers that load plain checkpoints (vLLM, llama.cpp) take the rung's hardened_model/",
            "router patch + expert LoRA adapter": f"the router patch plus the expert adapter "
            f"({ship['expert_lora_bytes']} bytes, PEFT format, on the router-patched base), or the rung's merged "
            "hardened_model/ for servers that load plain checkpoints",
        }.get(ship["kind"], "ship the rung's hardened_model/ (a plain transformers checkpoint)")
        lines.append(
            f"- **chosen: {ladder['chosen']}** — {ship['kind']}, {100 * (ship['changed_fraction'] or 0):.3f}% of the "
            f"model's parameters changed, the patch holds {100 * (ship['patch_fraction'] or 0):.3f}% of its size; "
            f"{where}" + ("; its route guard must run at inference" if ship["needs_route_guard_at_inference"] else "")
        )
    text = "\n".join(lines) + "\n"
    path = out / "report.md"
    atomic_write(path, text)
    atomic_write(out / "report.html", markdown_to_html(text, out, "moe-defense: hardening to a target"))
    return path
