"""A new attack is one file: it appears in `attack`, `harden`, `ablate` and the report with no other edit.
Registries are filled by discovery: a module that exists in a package (or an entry point) registers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

import tests.plugins.block_expert  # noqa: F401  (the user's one file: importing it registers the attack)
from moe_defense.attacks import ATTACKS
from moe_defense.cli import main
from moe_defense.registry import Registry, discover

pytestmark = pytest.mark.e2e
NAME = "test-block-first-router"
SMALL_DATA = {
    "harmful_train": {"name": "demo-harmful", "split": "train", "limit": 2},
    "benign_train": [{"name": "demo-benign", "split": "train", "limit": 2}],
    "harmful_eval": {"name": "demo-harmful", "split": "test", "limit": 3},
    "benign_eval": {"name": "demo-benign", "split": "test", "limit": 3},
    "over_refusal": {"name": "demo-lookalike", "split": "test", "limit": 3},
}


def test_discovery_registers_every_module_of_a_package(tmp_path, monkeypatch):
    package = tmp_path / "my_plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "one.py").write_text("from tests.test_extending import PLUGINS\nPLUGINS.register('one')(1)\n")
    (package / "two.py").write_text("from tests.test_extending import PLUGINS\nPLUGINS.register('two')(2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    discover("my_plugins")
    assert PLUGINS.names() == ["one", "two"]
    sys.modules.pop("my_plugins", None)


PLUGINS: Registry[int] = Registry("plugin")


def test_the_new_attack_runs_from_the_attack_verb(organism, tmp_path, capsys):
    assert NAME in ATTACKS
    out = tmp_path / "attack"
    argv = [
        "attack",
        "organism",
        "--data",
        "demo-harmful",
        "--limit",
        "2",
        "--max-new-tokens",
        "8",
        "--attack",
        NAME,
        "--sweep",
        "shots=1,2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["phases"]["original"]) == {f"{NAME}@shots=1", f"{NAME}@shots=2"}  # one run per swept value
    assert f"{NAME}@shots=2" in capsys.readouterr().out


def test_a_bad_attack_arg_fails_before_the_model_loads(tmp_path, capsys):
    argv = [
        "attack",
        "organism",
        "--data",
        "demo-harmful",
        "--attack",
        NAME,
        "--attack-arg",
        "shots=many",
        "--out",
        str(tmp_path / "x"),
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "shots" in err and "Traceback" not in err and not (tmp_path / "x").exists()


def test_the_new_attack_runs_in_harden_ablate_and_the_report(organism, tmp_path):
    recipe = {
        "model": "organism",
        "generation": {"max_new_tokens": 8, "batch_size": 8},
        "data": SMALL_DATA,
        "defenses": ["none"],
        "train_budget": 2,
        "verify": {"attacks": ["none", {"name": NAME, "args": {"shots": 3}, "label": "blocked"}]},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["harden", str(path), "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["attacks"] == ["none", "blocked"] and summary["headline_asr"] is None  # no budget sweep: no headline
    assert summary["phases"]["hardened"]["blocked"]["budget"] == {"seed": 0, "shots": 3}
    assert "| blocked |" in (tmp_path / "run" / "report.md").read_text()

    grid = {"recipe": str(path), "defenses": {"baseline": {"name": "none"}}}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    assert main(["ablate", str(tmp_path / "grid.yaml"), "--out", str(tmp_path / "grid")]) == 0
    grid_summary = json.loads((tmp_path / "grid" / "grid_summary.json").read_text())
    assert (
        "blocked" in grid_summary["matrix"]["baseline"] and "blocked" in (tmp_path / "grid" / "report.md").read_text()
    )
    assert Path(tmp_path / "grid" / "report.html").stat().st_size > 1000
