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
import math
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moe_defense.errors import ConfigError, describe_validation
from moe_defense.pipeline import Harden
from moe_defense.recipe import Recipe, load_recipe, resolve_path
from moe_defense.report import write_grid_report
from moe_defense.runner.rundir import atomic_write, exclusive

GRID_SUMMARY = "grid_summary.json"


class DefenseSpec(BaseModel):
    """One row of the grid: a defense kind and its settings (merged over the base recipe's defense)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["none", "router-hardening", "route-disabling"] = Field(description="none (baseline), router-hardening or route-disabling")
    args: dict[str, Any] = Field(default_factory=dict, description="HardeningConfig (router-hardening) or RouteDisablingConfig (route-disabling) fields")


class GridConfig(BaseModel):
    """A defense x attack x seed grid over one base recipe."""

    model_config = ConfigDict(extra="forbid")

    recipe: str = Field(description="base recipe (data, judges, model, attack settings)")
    seeds: list[int] = Field([0], min_length=1, description="seeds; every cell runs once per seed")
    defenses: dict[str, DefenseSpec] = Field(min_length=1, description="grid rows by name")
    verify: dict[str, Any] = Field(default_factory=dict, description="VerifyConfig fields overriding the recipe's (the attacks)")
    reduced: dict[str, Any] = Field(default_factory=dict, description="recipe overrides applied with --reduced (CI-sized grid)")


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; override wins, lists are replaced."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def load_grid(path: str | Path, reduced: bool = False) -> tuple[GridConfig, dict[tuple[str, int], Recipe]]:
    """The grid and every cell's recipe, all validated before any model loads."""
    path = resolve_path(str(path))
    if not path.is_file():
        raise ConfigError(f"grid {str(path)!r} does not exist (see recipes/ablations/).")
    try:
        grid = GridConfig.model_validate(yaml.safe_load(path.read_text()) or {})
    except (ValidationError, yaml.YAMLError) as error:
        detail = describe_validation(error) if isinstance(error, ValidationError) else str(error)
        raise ConfigError(f"grid {path}: {detail}") from error
    base = load_recipe(grid.recipe).model_dump(mode="json")
    if reduced:
        base = merge(base, grid.reduced)
    base["verify"] = merge(base["verify"], grid.verify)
    cells = {}
    for name, spec in grid.defenses.items():
        for seed in grid.seeds:
            payload = {**base, "seed": seed}
            payload["defense"] = merge(base["defense"] or {}, spec.args) if spec.kind == "router-hardening" else None
            payload["route_disabling"] = spec.args if spec.kind == "route-disabling" else None
            try:
                cells[(name, seed)] = Recipe.model_validate(payload)
            except ValidationError as error:
                raise ConfigError(f"grid {path}, defense {name!r}: {describe_validation(error)}") from error
    return grid, cells


def run_grid(path: str | Path, out: Path, reduced: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run every unclaimed, unfinished cell; then aggregate whatever is finished."""
    grid, cells = load_grid(path, reduced)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "grid.yaml", yaml.safe_dump({"grid": grid.model_dump(mode="json"), "reduced": reduced}, sort_keys=False))
    for (name, seed), recipe in cells.items():
        cell = out / "cells" / name / f"seed-{seed}"
        if (cell / "summary.json").is_file():
            continue
        with exclusive(out / "cells" / name / f"seed-{seed}.lock", wait=False) as mine:
            if not mine or (cell / "summary.json").is_file():
                continue  # another process runs (or just finished) this cell
            if progress:
                print(f"ablate: cell {name} / seed {seed}")
            Harden(recipe, cell, resume=True, progress=progress, original_dir=out / "original" / f"seed-{seed}").run()
    return aggregate(out, grid)


def _interval(values: list[float]) -> dict[str, Any]:
    """Mean and a 95% normal-approximation interval over seeds (none with one seed)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "ci95": None, "n": 0}
    half = 1.96 * stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return {"mean": mean(values), "ci95": half, "n": len(values)}


def aggregate(out: Path, grid: GridConfig) -> dict[str, Any]:
    """defense -> attack -> ASR (mean, CI over seeds), utility beside it; written to grid_summary.json."""
    matrix: dict[str, dict[str, Any]] = {}
    utility: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, Any]] = {}
    missing = []
    original_by_seed: dict[int, dict[str, Any]] = {}  # one original suite per seed, shared by every cell
    original_utility: dict[int, dict[str, Any]] = {}
    for name in grid.defenses:
        summaries = []
        for seed in grid.seeds:
            path = out / "cells" / name / f"seed-{seed}" / "summary.json"
            if path.is_file():
                summaries.append(json.loads(path.read_text()))
                original_by_seed.setdefault(seed, summaries[-1]["phases"]["original"])
                original_utility.setdefault(seed, summaries[-1]["utility"]["original"])
            else:
                missing.append(f"{name}/seed-{seed}")
        if not summaries:
            continue
        attacks = [a for a in summaries[0]["phases"]["hardened"] if a not in ("benign", "over-refusal")]
        matrix[name] = {a: _interval([s["phases"]["hardened"].get(a, {}).get("asr") for s in summaries]) for a in attacks}
        utility[name] = {key: _interval([s["utility"]["hardened"][key] for s in summaries]) for key in ("benign_compliance", "over_refusal", "benign_nll")}
        curves[name] = {b: _interval([s["asr_vs_budget"]["hardened"][b] for s in summaries]) for b in summaries[0]["asr_vs_budget"].get("hardened", {})}
    summary = {
        "cells_missing": missing,
        "defenses": list(matrix),
        "original": {a: _interval([rows.get(a, {}).get("asr") for rows in original_by_seed.values()])
                     for a in dict.fromkeys(a for rows in original_by_seed.values() for a in rows if a not in ("benign", "over-refusal"))},
        "original_utility": {key: _interval([u[key] for u in original_utility.values()]) for key in ("benign_compliance", "over_refusal", "benign_nll")},
        "matrix": matrix,
        "utility": utility,
        "asr_vs_budget": curves,
        "judge": load_recipe(grid.recipe).judges[0],
    }
    atomic_write(out / GRID_SUMMARY, json.dumps(summary, indent=2) + "\n")
    write_grid_report(out, summary)
    return summary
