"""`moe-defense ablate GRID.yaml`: defenses x attacks x seeds, one harden run directory per cell.

    grid/
      grid.yaml                    the resolved grid
      original/seed-<s>/           the original model's suite, computed once per seed, shared by every cell
      cells/<defense>/seed-<s>/    a harden run (summary.json, report.md, hardened_model/ ...)
      grid_summary.json, report.md, report.html, PNG plots

Cells are claimed with a file lock, so several `moe-defense ablate` processes on one grid split the
cells without clobbering each other; a finished cell (summary.json) is never rerun, a killed one
resumes where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from moe_defense.defenses import DefenseSpec
from moe_defense.errors import ConfigError
from moe_defense.pipeline import Harden
from moe_defense.recipe import Recipe, compose_defenses, find_recipe, load_recipe, merge
from moe_defense.registry import validated
from moe_defense.report import GRID_SUMMARY, NOT_RATES, UTILITY, write_grid_report
from moe_defense.runner.process import ProcessInfo
from moe_defense.runner.rundir import atomic_write, exclusive
from moe_defense.stats import over_seeds


class GridConfig(BaseModel):
    """A defense x attack x seed grid over one base recipe."""

    model_config = ConfigDict(extra="forbid")

    recipe: str = Field(description="base recipe (data, judges, model, attack settings)")
    seeds: list[int] = Field([0], min_length=1, description="seeds; every cell runs once per seed")
    defenses: dict[str, DefenseSpec | list[DefenseSpec]] = Field(
        min_length=1,
        description="grid rows by name: a defense {name, args} (args merged over the base recipe's defense of that "
        "name), or a list of them applied in order",
    )
    verify: dict[str, Any] = Field(
        default_factory=dict, description="VerifyConfig fields replacing the recipe's (the attacks)"
    )
    data: dict[str, Any] = Field(
        default_factory=dict, description="RecipeData fields replacing the recipe's (e.g. more held-out prompts)"
    )
    reduced: dict[str, Any] = Field(
        default_factory=dict, description="recipe overrides applied with --reduced (CI-sized grid)"
    )


def load_grid(
    path: str | Path, reduced: bool = False, seeds: list[int] | None = None
) -> tuple[GridConfig, dict[tuple[str, int], Recipe]]:
    """The grid (a file, else a packaged grid such as `ablations/demo-grid`) and every cell's recipe, all
    validated before any model loads; the grid's `recipe` is relative to the grid, else a packaged name.
    `seeds` (`ablate --seed`) replace the grid's; None keeps them."""
    path = find_recipe(path, what="grid")
    try:
        payload = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"grid {path}: {error}") from error
    if seeds is not None and isinstance(payload, dict):
        payload = {**payload, "seeds": seeds}
    grid = validated(GridConfig, payload, f"grid {path}")
    grid.recipe = str(find_recipe(grid.recipe, path.parent))  # resolved: grid.yaml replays from any directory
    base = load_recipe(grid.recipe).model_dump(mode="json")
    base["verify"] = merge(base["verify"], grid.verify)
    base["data"] = merge(base["data"], grid.data)
    if reduced:  # last: the CI-sized settings win; its defenses, like grid rows, merge their args over the base's
        base = merge(base, {k: v for k, v in grid.reduced.items() if k != "defenses"})
        if "defenses" in grid.reduced:
            reduced_specs = [
                validated(DefenseSpec, spec, f"grid {path}: reduced.defenses") for spec in grid.reduced["defenses"]
            ]
            base["defenses"] = compose_defenses(reduced_specs, base["defenses"])
    cells = {}
    for name, row in grid.defenses.items():
        for seed in grid.seeds:
            payload = {**base, "seed": seed, "defenses": compose_defenses(row, base["defenses"])}
            cells[(name, seed)] = validated(
                Recipe, payload, f"grid {path}, defense {name!r}", context={"recipe_dir": path.parent}
            )
    return grid, cells


def run_grid(
    path: str | Path,
    out: Path,
    *,
    info: ProcessInfo,
    reduced: bool = False,
    seeds: list[int] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every unclaimed, unfinished cell (of `seeds`, default the grid's); then aggregate whatever is
    finished."""
    grid, cells = load_grid(path, reduced, seeds)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(
        out / "grid.yaml", yaml.safe_dump({"grid": grid.model_dump(mode="json"), "reduced": reduced}, sort_keys=False)
    )
    for (name, seed), recipe in cells.items():
        cell = out / "cells" / name / f"seed-{seed}"
        if (cell / "summary.json").is_file():
            continue
        with exclusive(out / "cells" / name / f"seed-{seed}.lock", wait=False) as mine:
            if not mine or (cell / "summary.json").is_file():
                continue  # another process runs (or just finished) this cell
            if progress:
                print(f"ablate: cell {name} / seed {seed}")
            Harden(
                recipe, cell, info=info, resume=True, progress=progress, original_dir=out / "original" / f"seed-{seed}"
            ).run()
    return aggregate(out, grid)


def over_runs(rows: list[dict[str, Any] | None], key: str = "asr", rate: bool = True) -> dict[str, Any]:
    """A rate over seeds: the mean with a Student-t interval (n seeds >= 2), or with one seed the run's own
    Wilson interval over its prompts; `n` counts seeds, `n_prompts` the prompts of each."""
    present = [row for row in rows if row is not None]
    if len(present) == 1:
        row = present[0]
        return {
            "mean": row.get(key),
            "ci95": row.get(f"{key}_ci95"),
            "n": 1,
            "n_prompts": row.get("n_scored", row.get("n")),
        }
    stats = over_seeds([row.get(key) for row in present], rate)
    return {**stats, "n_prompts": present[0].get("n_scored", present[0].get("n")) if present else None}


def aggregate(out: Path, grid: GridConfig) -> dict[str, Any]:
    """defense -> attack -> ASR (mean and 95% interval over seeds), utility beside it; written to grid_summary.json."""
    matrix: dict[str, dict[str, Any]] = {}
    utility: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, Any]] = {}
    missing = []
    original_by_seed: dict[int, dict[str, Any]] = {}  # one original suite per seed, shared by every cell
    summaries_by_defense: dict[str, list[dict[str, Any]]] = {}
    for name in grid.defenses:
        for seed in grid.seeds:
            path = out / "cells" / name / f"seed-{seed}" / "summary.json"
            if path.is_file():
                summary = json.loads(path.read_text())
                summaries_by_defense.setdefault(name, []).append(summary)
                original_by_seed.setdefault(seed, summary)
            else:
                missing.append(f"{name}/seed-{seed}")
    originals = list(original_by_seed.values())
    attacks = list(
        dict.fromkeys(
            a for s in [*originals, *(x for v in summaries_by_defense.values() for x in v)] for a in s["attacks"]
        )
    )
    budgets_labels = list(originals[0]["asr_vs_budget"].get("original", {})) if originals else []
    for name, summaries in summaries_by_defense.items():
        matrix[name] = {a: over_runs([s["phases"]["hardened"].get(a) for s in summaries]) for a in attacks}
        utility[name] = {
            key: over_runs([_utility_row(s, "hardened", key) for s in summaries], "value", key not in NOT_RATES)
            for key in UTILITY
        }
        curves[name] = {
            b: over_runs([s["asr_vs_budget"]["hardened"].get(b) for s in summaries]) for b in budgets_labels
        }
    minimal = {name: [_minimal(s, "hardened") for s in summaries] for name, summaries in summaries_by_defense.items()}
    summary = {
        "cells_missing": missing,
        "minimal_budget": {"original": [_minimal(s, "original") for s in originals], **minimal},
        "defenses": list(matrix),
        "attacks": attacks,
        "original": {a: over_runs([s["phases"]["original"].get(a) for s in originals]) for a in attacks},
        "original_utility": {
            key: over_runs([_utility_row(s, "original", key) for s in originals], "value", key not in NOT_RATES)
            for key in UTILITY
        },
        "matrix": matrix,
        "utility": utility,
        "budgets": [originals[0]["asr_vs_budget"]["original"][b]["budget"] for b in budgets_labels]
        if originals
        else [],
        "original_curve": {
            b: over_runs([s["asr_vs_budget"]["original"].get(b) for s in originals]) for b in budgets_labels
        },
        "asr_vs_budget": curves,
        "judge": load_recipe(grid.recipe).judges[0].name,
    }
    atomic_write(out / GRID_SUMMARY, json.dumps(summary, indent=2) + "\n")
    write_grid_report(out, summary)
    return summary


def _minimal(summary: dict[str, Any], phase: str) -> dict[str, Any] | None:
    """One run's median minimal budget (with its interval, n and never-flipped count), per seed."""
    robustness = (summary.get("minimal_budget") or {}).get(phase)
    if not robustness:
        return None
    return {key: robustness[key] for key in ("median", "median_ci95", "n", "unflipped")}


def _utility_row(summary: dict[str, Any], phase: str, key: str) -> dict[str, Any]:
    """One utility figure of one run in the shape `over_runs` reads (value, its interval, its n)."""
    u = summary["utility"][phase]
    n_key = {"benign_compliance": "n_benign", "over_refusal": "n_over_refusal"}.get(key)
    return {"value": u[key], "value_ci95": u.get(f"{key}_ci95"), "n": u.get(n_key) if n_key else None}
