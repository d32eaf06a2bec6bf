"""Recipes fail before any model loads, naming the field; every shipped recipe validates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moe_defense.cli import main
from moe_defense.errors import ConfigError
from moe_defense.recipe import load_recipe

RECIPES = sorted(
    p for p in (Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml") if p.parent.name != "ablations"
)
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
    load_recipe(path)  # raises a ConfigError naming the field otherwise


def test_minimal_recipe_takes_defaults(tmp_path):
    recipe = load_recipe(_write(tmp_path))
    assert recipe.training_defense.build().trainable == "routers" and recipe.train_budget == "b80"
    labels = [label for spec in recipe.verify.attacks for label, _ in spec.build()]
    assert labels == [
        "none",
        "fsour@1",
        "fsour@2",
        "fsour@4",
        "fsour@8",
        "fsour@16",
        "fsour@inf",
        "router-mask-top1",
        "router-mask-top2",
        "fsour-transfer",
    ]


def test_components_take_name_and_args_or_a_bare_name(tmp_path):
    recipe = load_recipe(
        _write(
            tmp_path,
            judges=[{"name": "keyword", "args": {"variant": "jailbreakbench"}}, "organism"],
            defenses=[{"name": "router-hardening", "args": {"steps": 7}}, "route-disabling"],
        )
    )
    assert [j.name for j in recipe.judges] == ["keyword", "organism"] and recipe.judges[
        0
    ].config().variant == "jailbreakbench"
    assert [d.name for d in recipe.defenses] == ["router-hardening", "route-disabling"] and recipe.defenses[
        0
    ].config().steps == 7


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"judges": ["keyword", "no-such-judge"]}, "unknown judge 'no-such-judge' (known: harmbench, keyword"),
        ({"judges": [{"name": "keyword", "args": {"colour": "red"}}]}, "judge 'keyword' args: colour"),
        ({"defenses": [{"name": "router-hardening", "args": {"trainable": "everything"}}]}, "trainable"),
        ({"defenses": [{"name": "router-hardening", "args": {"stepz": 3}}]}, "stepz"),
        ({"defenses": [{"name": "router-hardening", "args": {"steps": "many"}}]}, "steps"),
        (
            {"defenses": [{"name": "magic-shield"}]},
            "unknown defense 'magic-shield' (known: none, route-disabling, router-hardening)",
        ),
        ({"defenses": ["route-disabling", "router-hardening"]}, "must come first"),
        ({"verify": {"attacks": [{"name": "teleport"}]}}, "unknown attack 'teleport' (known: expert-silence, fsour"),
        ({"verify": {"attacks": [{"name": "fsour", "args": {"candidatez": 3}}]}}, "attack 'fsour' args: candidatez"),
        ({"verify": {"attacks": [{"name": "fsour", "args": {"candidates": "many"}}]}}, "candidates"),
        ({"verify": {"attacks": [{"name": "fsour", "sweep": {"budget": [8, 2]}}]}}, "budgets must be ascending"),
        ({"verify": {"attacks": [{"name": "fsour", "sweep": {"budgett": [2]}}]}}, "no field(s) ['budgett'] to sweep"),
        (
            {"verify": {"attacks": [{"name": "fsour", "args": {"seed": 3}, "sweep": {"budget": [2]}}]}},
            "seeds derive from the recipe",
        ),
        ({"verify": {"attacks": ["none", "route-replay"]}, "train_budget": 8}, "replay the curve attack's routes"),
        ({"verify": {"attacks": ["none"]}}, "train_budget b80 needs a budget sweep"),
        ({"over_refusal_judge": "strongreject"}, "over_refusal_judge 'strongreject' is not one of the judges"),
        ({"deepspeed": "train/ds/no-such.json"}, "deepspeed"),
        ({"data": {**MINIMAL["data"], "harmful_eval": {"name": "no-such-set"}}}, "data.harmful_eval.name"),
        ({"train_budget": "lots"}, "train_budget"),
    ],
)
def test_bad_recipe_names_the_field(tmp_path, changes, named):
    with pytest.raises(ConfigError) as error:
        load_recipe(_write(tmp_path, **changes))
    assert named in str(error.value)


def test_zero3_recipe_that_would_fail_is_refused_at_validation(tmp_path):
    assert load_recipe(_write(tmp_path, deepspeed="train/ds/zero3.json")).deepspeed == "train/ds/zero3.json"
    bad = tmp_path / "zero3-default-leaves.json"
    bad.write_text('{"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 1e6}}')
    with pytest.raises(ConfigError, match=r"leaf_module\.classes: \[\]"):
        load_recipe(_write(tmp_path, deepspeed=str(bad)))
    wide = [{"name": "router-hardening", "args": {"trainable": "routers+experts"}}]
    with pytest.raises(ConfigError, match=r"routers only \(got \['routers\+experts'\]\)"):
        load_recipe(_write(tmp_path, deepspeed="train/ds/zero3.json", defenses=wide))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_cli_rejects_bad_recipe_before_loading_a_model(tmp_path, capsys):
    path = _write(tmp_path, model="/no/such/checkpoint", judges=["nope"])
    assert main(["harden", str(path), "--out", str(tmp_path / "run")]) == 1
    assert "judges" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
