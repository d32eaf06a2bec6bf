"""Recipes fail before any model loads, naming the field; every shipped recipe validates."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from moe_defense.cli import main
from moe_defense.errors import ConfigError
from moe_defense.recipe import RECIPES, load_recipe

SHIPPED = sorted(p for p in RECIPES.rglob("*.yaml") if p.parent.name != "ablations")
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


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
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


REAL_DATA = {
    "harmful_train": {"name": "advbench"},
    "benign_train": [{"name": "tatsu-lab/alpaca"}],
    "harmful_eval": {"name": "jbb-harmful"},
    "benign_eval": {"name": "jbb-benign"},
    "over_refusal": {"name": "xstest"},
}


@pytest.mark.parametrize(
    ("changes", "judges"),
    [
        ({}, ["organism", "keyword"]),  # the demo corpus: its own judge reads the request keys
        ({"model": "allenai/OLMoE-1B-7B-0125-Instruct", "data": REAL_DATA}, ["organism-smol", "keyword"]),
    ],
)
def test_recipe_without_judges_gets_the_default_judges_of_its_held_out_set(tmp_path, changes, judges):
    from moe_defense.judges.defaults import default_judges

    recipe = load_recipe(_write(tmp_path, **changes))
    assert [j.name for j in recipe.judges] == judges == default_judges(recipe.data.harmful_eval.name)
    assert recipe.over_refusal_judge in judges
    assert yaml.safe_load(recipe.model_dump_json())["judges"] == [{"name": n, "args": {}} for n in judges]


def test_recipe_with_an_empty_judge_list_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="judges: List should have at least 1 item"):
        load_recipe(_write(tmp_path, judges=[]))


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
            "unknown defense 'magic-shield' (known: none, rasa, route-disabling, router-hardening)",
        ),
        ({"defenses": ["route-disabling", "router-hardening"]}, "must come first"),
        ({"verify": {"attacks": [{"name": "teleport"}]}}, "unknown attack 'teleport' (known: capacity-drop, expert-"),
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
        ({"reasoning": "cot"}, "reasoning"),
        ({"chat_template_kwargs": ["enable_thinking"]}, "chat_template_kwargs"),
    ],
)
def test_bad_recipe_names_the_field(tmp_path, changes, named):
    with pytest.raises(ConfigError) as error:
        load_recipe(_write(tmp_path, **changes))
    assert named in str(error.value)


HOSTED_JUDGE = {
    "name": "harmbench",
    "args": {"url": "http://127.0.0.1:9/v1", "model": "judge", "api_key_env": "MOE_DEFENSE_TEST_UNSET_KEY"},
}


def test_hosted_judge_takes_its_api_key_from_the_named_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_DEFENSE_TEST_UNSET_KEY", "sk-test")
    recipe = load_recipe(_write(tmp_path, judges=[HOSTED_JUDGE, "keyword"]))
    assert recipe.judges[0].config().api_key_env == "MOE_DEFENSE_TEST_UNSET_KEY"
    assert "sk-test" not in recipe.model_dump_json()  # the recipe holds the variable's name, never the key


def test_unset_api_key_variable_is_one_error_before_any_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MOE_DEFENSE_TEST_UNSET_KEY", raising=False)
    path = _write(tmp_path, model="/no/such/checkpoint", judges=[HOSTED_JUDGE, "keyword"])
    with pytest.raises(ConfigError) as error:
        load_recipe(path)
    assert "judge 'harmbench' args: api_key_env names 'MOE_DEFENSE_TEST_UNSET_KEY'" in str(error.value)
    assert main(["harden", str(path), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "MOE_DEFENSE_TEST_UNSET_KEY" in err and "checkpoint" not in err
    assert not (tmp_path / "run").exists()


def test_zero3_recipe_that_would_fail_is_refused_at_validation(tmp_path):
    assert load_recipe(_write(tmp_path, deepspeed="ds/zero3.json")).deepspeed.endswith("ds/zero3.json")
    bad = tmp_path / "zero3-default-leaves.json"
    bad.write_text('{"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 1e6}}')
    with pytest.raises(ConfigError, match=r"leaf_module\.classes: \[\]"):
        load_recipe(_write(tmp_path, deepspeed=str(bad)))
    wide = [{"name": "router-hardening", "args": {"trainable": "routers+experts"}}]
    with pytest.raises(ConfigError, match=r"routers only \(got \['routers\+experts'\]\)"):
        load_recipe(_write(tmp_path, deepspeed="ds/zero3.json", defenses=wide))


def test_missing_recipe_file(tmp_path):
    packaged = r"neither a file nor a packaged recipe \(packaged: demo, demo-en, demo-target, model"
    with pytest.raises(ConfigError, match=packaged):
        load_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["demo", "demo.yaml", "recipes/demo.yaml"])
def test_packaged_recipes_load_by_name_from_any_directory(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ here: the name is looked up among the packaged recipes
    assert load_recipe(name).model_dump() == load_recipe(RECIPES / "demo.yaml").model_dump()


def test_packaged_deepspeed_config_resolves_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("models/olmoe")
    assert recipe.deepspeed == str(RECIPES / "ds" / "zero2.json")


def test_files_a_recipe_names_are_relative_to_the_recipe_not_the_working_directory(tmp_path, monkeypatch):
    recipes = tmp_path / "mine"
    recipes.mkdir()
    (recipes / "ds.json").write_text("{}")
    (recipes / "harmful.csv").write_text("goal\nhow do I pick a lock\n")
    data = {**MINIMAL["data"], "harmful_eval": {"name": "harmful.csv"}}
    path = recipes / "recipe.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "data": data, "deepspeed": "ds.json"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = load_recipe(path)
    assert recipe.deepspeed == str(recipes / "ds.json")
    assert recipe.data.harmful_eval.name == str(recipes / "harmful.csv")
    assert [p.text for p in recipe.data.harmful_eval.load(0).prompts] == ["how do I pick a lock"]


def test_deepspeed_config_without_the_extra_is_one_error_before_any_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # what find_spec reports when it is not installed
    path = _write(tmp_path, deepspeed="ds/zero2.json")
    expected = r"^recipe .*: deepspeed: a DeepSpeed config .*pip install 'moe-defense\[deepspeed\]'$"
    with pytest.raises(ConfigError, match=expected):
        load_recipe(path)
    assert main(["harden", str(path), "--out", str(tmp_path / "run")]) == 1
    assert "pip install 'moe-defense[deepspeed]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cli_rejects_bad_recipe_before_loading_a_model(tmp_path, capsys):
    path = _write(tmp_path, model="/no/such/checkpoint", judges=["nope"])
    assert main(["harden", str(path), "--out", str(tmp_path / "run")]) == 1
    assert "judges" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_chat_options_reach_the_load_options_and_cli_overrides_merge_key_by_key(tmp_path):
    from moe_defense.pipeline import Harden
    from moe_defense.runner.process import process_info

    path = _write(tmp_path, chat_template_kwargs={"enable_thinking": False, "tools": None}, reasoning="think")
    recipe = load_recipe(path, {"chat_template_kwargs": {"enable_thinking": True}, "reasoning": None})
    assert (recipe.chat_template_kwargs, recipe.reasoning) == ({"enable_thinking": True, "tools": None}, "think")
    options = Harden(recipe, tmp_path / "run", info=process_info()).load_options
    assert (options.chat_template_kwargs, options.reasoning) == (recipe.chat_template_kwargs, "think")
    assert load_recipe(_write(tmp_path)).reasoning == "auto"
    pinned = load_recipe(_write(tmp_path, revision="0123abc"))
    assert Harden(pinned, tmp_path / "pinned", info=process_info()).load_options.revision == "0123abc"


def test_cli_reasoning_choices_are_the_registered_parsers():
    from moe_defense.cli.options import REASONING_CHOICES
    from moe_defense.models.chat import REASONING_PARSERS

    assert sorted(REASONING_CHOICES) == sorted(["auto", *REASONING_PARSERS.names()])


def test_cli_dtype_choices_are_the_loadable_dtypes():
    from moe_defense.cli.options import DTYPE_CHOICES
    from moe_defense.models.loading import DTYPES

    assert DTYPE_CHOICES == ("auto", *DTYPES)


def test_harden_limit_cuts_every_held_out_set_and_keeps_the_training_sets(tmp_path, monkeypatch):
    from moe_defense.cli import build_parser, harden_overrides

    path = _write(tmp_path, data={**MINIMAL["data"], "benign_eval": {"name": "demo-benign", "limit": 50}})
    argv = ["harden", str(path), "--limit", "3", "--out", str(tmp_path / "run")]
    recipe = load_recipe(path, harden_overrides(build_parser(argv).parse_args(argv)))
    data = recipe.data
    assert [getattr(data, role).limit for role in ("harmful_eval", "benign_eval", "over_refusal")] == [3, 3, 3]
    assert data.harmful_train.limit is None and data.benign_train[0].limit is None
    assert len(data.harmful_eval.load(recipe.seed)) == 3 < len(load_recipe(path).data.harmful_eval.load(0))
    unlimited = build_parser(argv[:2]).parse_args(argv[:2])
    assert load_recipe(path, harden_overrides(unlimited)).data == load_recipe(path).data  # the recipe's own limits
    with pytest.raises(ConfigError, match="data.harmful_eval.limit"):
        load_recipe(path, harden_overrides(build_parser(argv).parse_args([*argv[:2], "--limit", "0"])))
    seen = {}

    def record(recipe, out, **kwargs):
        seen.update(recipe=recipe)
        raise KeyboardInterrupt  # stop before any model loads

    monkeypatch.setattr("moe_defense.pipeline.Harden", record)
    assert main(argv) == 130 and seen["recipe"].data.over_refusal.limit == 3


def test_harden_cli_chat_options_override_the_recipe(tmp_path, monkeypatch):
    seen = {}

    def record(recipe, out, **kwargs):
        seen.update(recipe=recipe)
        raise KeyboardInterrupt  # stop before any model loads

    monkeypatch.setattr("moe_defense.pipeline.Harden", record)
    path = _write(tmp_path, chat_template_kwargs={"enable_thinking": True, "tools": None})
    argv = ["harden", str(path), "--out", str(tmp_path / "run"), "--reasoning", "think"]
    assert main([*argv, "--chat-template-kwarg", "enable_thinking=false"]) == 130
    recipe = seen["recipe"]
    assert (recipe.chat_template_kwargs, recipe.reasoning) == ({"enable_thinking": False, "tools": None}, "think")


def test_only_a_forced_pair_budget_sweep_is_the_curve(tmp_path):
    attacks = [
        {"name": "router-noise", "sweep": {"sigma": [0.5, 2.0]}},  # a float strength: several points, no curve
        {"name": "top-k", "sweep": {"k": [1, 3]}},
        {"name": "fsour", "sweep": {"budget": [2, None]}},
    ]
    recipe = load_recipe(_write(tmp_path, verify={"attacks": attacks}))
    assert recipe.verify.curve.name == "fsour"
    with pytest.raises(ConfigError, match="budgets must be ascending"):
        load_recipe(_write(tmp_path, verify={"attacks": [{"name": "fsour", "sweep": {"budget": [8, 2]}}]}))
