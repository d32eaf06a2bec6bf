"""Recipes fail before any model loads, naming the field; every shipped recipe validates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moe_defense.cli import main
from moe_defense.errors import ConfigError
from moe_defense.recipe import load_recipe

RECIPES = sorted(p for p in (Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml") if p.parent.name != "ablations")
MINIMAL = {
    "model": "organism",
    "data": {
        "harmful_train": {"name": "demo-harmful", "split": "train"},
        "benign_train": [{"name": "demo-benign", "split": "train"}],
        "harmful_eval": {"name": "demo-harmful"},
        "benign_eval": {"name": "demo-benign"},
        "over_refusal": {"name": "demo-lookalike"},
    },
}


def _write(tmp_path: Path, **changes) -> Path:
    payload = {**MINIMAL, **changes}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert recipe.data.harmful_eval.name


def test_minimal_recipe_takes_defaults(tmp_path):
    recipe = load_recipe(_write(tmp_path))
    assert recipe.defense.trainable == "routers" and recipe.train_budget == "b80"


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"judges": ["keyword", "no-such-judge"]}, "judges"),
        ({"defense": {"trainable": "everything"}}, "defense.trainable"),
        ({"defense": {"stepz": 3}}, "defense.stepz"),
        ({"defense": {"steps": "many"}}, "defense.steps"),
        ({"verify": {"budgets": [8, 2]}}, "verify.budgets"),
        ({"deepspeed": "train/ds/no-such.json"}, "deepspeed"),
        ({"data": {**MINIMAL["data"], "harmful_eval": {"name": "no-such-set"}}}, "data.harmful_eval.name"),
        ({"train_budget": "lots"}, "train_budget"),
    ],
)
def test_bad_recipe_names_the_field(tmp_path, changes, named):
    with pytest.raises(ConfigError) as error:
        load_recipe(_write(tmp_path, **changes))
    assert named in str(error.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_cli_rejects_bad_recipe_before_loading_a_model(tmp_path, capsys):
    path = _write(tmp_path, model="/no/such/checkpoint", judges=["nope"])
    assert main(["harden", str(path), "--out", str(tmp_path / "run")]) == 1
    assert "judges" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
