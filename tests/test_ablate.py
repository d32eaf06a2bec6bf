"""Ablation grids: bad grids fail before any model loads; the reduced demo grid runs, resumes and reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from moe_defense.ablate import load_grid, merge, run_grid
from moe_defense.cli import build_parser, main
from moe_defense.errors import ConfigError
from moe_defense.recipe import RECIPES
from moe_defense.report import render
from moe_defense.runner.process import ProcessInfo

INFO = ProcessInfo(0, 1, None)

DEMO_GRID = RECIPES / "ablations" / "demo-grid.yaml"


def _grid(tmp_path: Path, **changes) -> Path:
    payload = {**yaml.safe_load(DEMO_GRID.read_text()), "recipe": str(RECIPES / "demo.yaml"), **changes}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


def test_merge_is_recursive_and_replaces_lists():
    assert merge({"a": {"b": 1, "c": [1]}, "d": 2}, {"a": {"c": [2]}}) == {"a": {"b": 1, "c": [2]}, "d": 2}


@pytest.mark.parametrize("path", sorted((RECIPES / "ablations").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_grids_validate(path):
    for reduced in (False, True):
        grid, cells = load_grid(path, reduced)
        assert len(cells) == len(grid.defenses) * len(grid.seeds)


def test_packaged_grid_by_name_from_any_directory_and_its_recipe_relative_to_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid, _ = load_grid("ablations/demo-grid")  # `recipe: demo`: the packaged recipe
    assert grid.recipe == str(RECIPES / "demo.yaml")
    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "base.yaml").write_text((RECIPES / "demo.yaml").read_text())
    mine = tmp_path / "grids" / "grid.yaml"
    mine.write_text(yaml.safe_dump({**yaml.safe_load(DEMO_GRID.read_text()), "recipe": "base.yaml"}))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_grid(mine)[0].recipe == str(tmp_path / "grids" / "base.yaml")  # next to the grid, not the cwd


def test_demo_grid_validates_every_cell():
    grid, cells = load_grid(DEMO_GRID, reduced=True)
    assert len(cells) == len(grid.defenses) * len(grid.seeds)
    assert [d.name for d in cells[("none", 0)].defenses] == ["none"]
    assert (
        cells[("all-parameters", 1)].defenses[0].config().trainable == "all" and cells[("all-parameters", 1)].seed == 1
    )
    no_refresh = cells[("no-refresh", 0)].defenses[0].config()
    assert (
        no_refresh.refresh_every == 0 and no_refresh.steps == 3 and no_refresh.learning_rate == 0.002
    )  # row over reduced over base
    assert [d.name for d in cells[("hardening+route-disabling", 0)].defenses] == ["router-hardening", "route-disabling"]


def test_grid_data_overrides_the_recipe_data_and_reduced_wins(tmp_path):
    held_out = {"harmful_eval": {"name": "demo-harmful", "split": "test", "limit": 32}}
    grid, cells = load_grid(_grid(tmp_path, data=held_out))
    assert all(recipe.data.harmful_eval.limit == 32 for recipe in cells.values())
    assert all(recipe.data.benign_eval.name == "demo-benign" for recipe in cells.values())  # the rest inherited
    _, reduced = load_grid(_grid(tmp_path, data=held_out), reduced=True)
    assert all(recipe.data.harmful_eval.limit == 4 for recipe in reduced.values())


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"defenses": {"x": {"name": "magic"}}}, "unknown defense 'magic'"),
        ({"defenses": {"x": {"name": "router-hardening", "args": {"trainable": "everything"}}}}, "trainable"),
        ({"verify": {"attacks": ["fsour", "teleport"]}}, "unknown attack 'teleport'"),
        ({"seeds": "three"}, "seeds"),
        ({"recipe": "recipes/missing.yaml"}, "neither a file nor a packaged recipe (packaged: demo,"),
    ],
)
def test_bad_grid_is_one_clear_error(tmp_path, changes, named):
    with pytest.raises(ConfigError) as error:
        load_grid(_grid(tmp_path, **changes))
    assert named in str(error.value)


def test_ablate_seed_replaces_the_grids_seeds(tmp_path, monkeypatch):
    argv = ["ablate", str(DEMO_GRID), "--reduced", "--seed", "5", "7", "--out", str(tmp_path / "grid-run")]
    args = build_parser(argv).parse_args(argv)
    grid, cells = load_grid(args.grid, args.reduced, args.seed)
    assert grid.seeds == [5, 7] and {seed for _, seed in cells} == {5, 7}
    assert all(recipe.seed == seed for (_, seed), recipe in cells.items())
    assert load_grid(DEMO_GRID)[0].seeds == yaml.safe_load(DEMO_GRID.read_text())["seeds"]  # no --seed: the grid's
    seen = {}

    def record(path, out, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt  # stop before any model loads

    monkeypatch.setattr("moe_defense.ablate.run_grid", record)
    assert main(argv) == 130 and seen["seeds"] == [5, 7]
    with pytest.raises(SystemExit):
        build_parser(["ablate"]).parse_args(["ablate", str(DEMO_GRID), "--seed", "one"])


def test_report_on_a_grid_with_a_damaged_grid_yaml_is_one_error(tmp_path, capsys):
    grid = {**yaml.safe_load(DEMO_GRID.read_text()), "seedz": [0]}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump({"grid": grid, "reduced": True}))
    assert main(["report", str(tmp_path)]) == 1
    assert f"grid {tmp_path / 'grid.yaml'}: seedz" in capsys.readouterr().err


def test_cli_rejects_a_bad_grid_before_any_model_loads(tmp_path, capsys):
    out = tmp_path / "grid-run"
    assert main(["ablate", str(_grid(tmp_path, verify={"attacks": ["teleport"]}, reduced={})), "--out", str(out)]) == 1
    assert "teleport" in capsys.readouterr().err and not out.exists()


@pytest.mark.e2e
def test_reduced_grid_runs_resumes_and_renders(organism, tmp_path):
    reduced = yaml.safe_load(DEMO_GRID.read_text())["reduced"]
    reduced["verify"] = {
        "attacks": [
            "none",
            {"name": "router-mask", "args": {"selection": "random"}, "sweep": {"n": [1]}},
            {
                "name": "fsour",
                "args": {"candidates": 8, "force_decode": True, "restarts": 0},
                "sweep": {"budget": [2, None]},
            },
            "route-replay",
            "expert-silence",
        ]
    }
    grid = _grid(
        tmp_path,
        seeds=[0],
        reduced=reduced,
        defenses={
            "none": {"name": "none"},
            "router-hardening": {"name": "router-hardening"},
            "route-disabling": {
                "name": "route-disabling",
                "args": {"sets_per_layer": 2, "min_count": 1, "fit_prompts": 2},
            },
        },
    )
    out = tmp_path / "grid-run"
    summary = run_grid(grid, out, info=INFO, reduced=True, progress=False)
    assert summary["cells_missing"] == [] and set(summary["defenses"]) == {
        "none",
        "router-hardening",
        "route-disabling",
    }
    guard = json.loads((out / "cells" / "route-disabling" / "seed-0" / "route_guard.json").read_text())
    assert guard["banned"] and guard["artifacts"] == 2
    assert {"none", "router-mask-random1", "fsour@2", "fsour@inf", "fsour-transfer", "expert-silence"} <= set(
        summary["matrix"]["router-hardening"]
    )
    assert (out / "original" / "seed-0" / "original_rows.json").is_file()  # computed once, shared by both cells
    # a "killed" cell: drop its summary, rerun; only that cell runs again and nothing else is recomputed
    cell = out / "cells" / "router-hardening" / "seed-0"
    (cell / "summary.json").unlink()
    stamp = (out / "cells" / "none" / "seed-0" / "summary.json").stat().st_mtime_ns
    again = run_grid(grid, out, info=INFO, reduced=True, progress=False)
    assert again["matrix"] == summary["matrix"]
    assert (out / "cells" / "none" / "seed-0" / "summary.json").stat().st_mtime_ns == stamp
    for png in ("grid_matrix.png", "grid_asr_bars.png", "grid_asr_vs_budget.png"):
        assert (out / png).stat().st_size > 10_000
    for png in ("asr_vs_budget.png", "rosais.png", "expert_usage.png"):
        assert (cell / png).stat().st_size > 10_000
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # self-contained
    assert render(out) == out / "report.md" and render(cell) == cell / "report.md"
    assert summary["matrix"]["router-hardening"]["fsour@2"]["n"] == 1  # one seed: the run's own Wilson interval
    assert summary["matrix"]["router-hardening"]["fsour@2"]["ci95"] is not None
    assert json.loads((cell / "summary.json").read_text())["router_params_changed"] == 4
