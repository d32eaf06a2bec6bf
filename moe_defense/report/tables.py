"""The markdown tables of the reports: a harden run's before/after figures, a grid's matrix, a ladder's rungs."""

from __future__ import annotations

from typing import Any

from moe_defense.report.cells import (
    NOT_RUN,
    budget_tick,
    budget_value,
    criterion,
    fmt,
    median_interval,
    rate,
    seed_mean,
)

PHASES = ("original", "hardened")
UTILITY = ("benign_compliance", "over_refusal", "benign_nll")  # a grid's utility columns, beside its attacks
NOT_RATES = frozenset({"benign_nll"})  # utility figures that are no rate: their intervals are not kept in [0, 1]


def headline_table(summary: dict[str, Any]) -> str:
    """Every attack and utility figure before/after, with 95% intervals and n: what a user reads first."""
    rows = summary["phases"]
    lines = ["| attack | original ASR | hardened ASR |", "| --- | --- | --- |"]
    for label in summary["attacks"]:
        cells = [
            rate(r.get("asr"), r.get("asr_ci95"), r.get("n_scored")) if r else NOT_RUN
            for r in (rows[phase].get(label) for phase in PHASES)
        ]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    u = summary["utility"]
    for key, n in (("benign_compliance", "n_benign"), ("over_refusal", "n_over_refusal")):
        cells = [rate(u[phase][key], u[phase][f"{key}_ci95"], u[phase][n]) for phase in PHASES]
        lines.append(f"| {key.replace('_', ' ')} | {cells[0]} | {cells[1]} |")
    lines.append(f"| benign nll | {fmt(u['original']['benign_nll'])} | {fmt(u['hardened']['benign_nll'])} |")
    lines += task_rows(u)
    return "\n".join(lines)


def deployment_table(summary: dict[str, Any]) -> str:
    """Safety under deployment: per deployment change of the suite (an attack that also answered the benign
    prompts under it), harmful ASR beside benign compliance, before and after: a change that breaks every
    answer is no jailbreak, and a defense must not lose on either. Empty when the suite has none."""
    rows = summary["phases"]
    changes = [
        label
        for label in summary["attacks"]
        if any((rows[phase].get(label) or {}).get("benign_compliance") is not None for phase in PHASES)
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
        before, after = (rows[phase].get(label) or {} for phase in PHASES)
        cells = [
            rate(r.get(key), r.get(f"{key}_ci95"), r.get(n)) if r.get(key) is not None else NOT_RUN
            for key, n in (("asr", "n_scored"), ("benign_compliance", "n_benign_scored"))
            for r in (before, after)
        ]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    return "\n".join(lines)


def task_rows(utility: dict[str, Any]) -> list[str]:
    """One row per lm-eval task and metric: `0.412 ± 0.015 n=1000` before and after."""

    def cell(scores: dict[str, Any] | None, metric: str) -> str:
        if not scores or metric not in scores["metrics"]:
            return NOT_RUN
        stderr = scores["stderr"].get(metric)
        spread = f" ± {stderr:.3f}" if stderr is not None else ""
        return f"{scores['metrics'][metric]:.3f}{spread} n={scores['n']}"

    before, after = (utility[phase].get("tasks") or {} for phase in PHASES)
    return [
        f"| {task} {metric} (lm-eval) | {cell(before.get(task), metric)} | {cell(after.get(task), metric)} |"
        for task in {**before, **after}
        for metric in {**(before.get(task) or {}).get("metrics", {}), **(after.get(task) or {}).get("metrics", {})}
    ]


def grid_table(summary: dict[str, Any]) -> list[str]:
    """The defense x attack ASR matrix of a grid with its utility columns, the original model first."""
    attacks = list(summary["matrix"][summary["defenses"][0]])
    lines = [
        "| defense | " + " | ".join([*attacks, *(u.replace("_", " ") for u in UTILITY)]) + " |",
        "| --- " * (1 + len(attacks) + len(UTILITY)) + "|",
    ]
    rows = {"original (no defense)": (summary["original"], summary["original_utility"])}
    rows |= {defense: (summary["matrix"][defense], summary["utility"][defense]) for defense in summary["defenses"]}
    for label, (asr, utility) in rows.items():
        cells = [seed_mean(asr.get(a)) for a in attacks] + [seed_mean(utility.get(u)) for u in UTILITY]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def grid_minimal_table(summary: dict[str, Any]) -> list[str]:
    """Median minimal budget per defense and seed (inf: no verified search flipped half the prompts); no lines
    when no cell swept a budget."""
    minimal = summary.get("minimal_budget") or {}
    if not any(run for runs in minimal.values() for run in runs):
        return []

    def cell(run: dict[str, Any] | None) -> str:
        if run is None:
            return NOT_RUN
        return f"{median_interval(run)} n={run['n']}, {run['unflipped']} never flipped"

    lines = ["| defense | median minimal budget per seed (95% order-statistic interval) |", "| --- | --- |"]
    for name, runs in minimal.items():
        label = "original (no defense)" if name == "original" else name
        lines.append(f"| {label} | " + "; ".join(cell(run) for run in runs) + " |")
    return [*lines, ""]


def ladder_table(ladder: dict[str, Any]) -> list[str]:
    """One row per rung tried: each figure against its limit, the median minimal budget, met, its report."""
    lines = [
        "| rung | trainable | ASR at budget | compliance drop | over-refusal rise | median minimal budget | met "
        "| run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rung in ladder["rungs_tried"]:
        c = rung["criteria"]
        medians = rung["minimal_budget_median"]
        lines.append(
            f"| {rung['rung']} | {rung['trainable']} | {criterion(c['asr'])} @ {budget_tick(c['asr']['at'])} "
            f"| {criterion(c['compliance_drop'])} | {criterion(c['over_refusal_rise'])} "
            f"| {budget_value(medians['original'])} -> "
            f"{budget_value(medians['hardened'])} | **{'yes' if rung['met'] else 'no'}** | "
            f"[report](rungs/{rung['rung']}/report.md) |"
        )
    return lines
