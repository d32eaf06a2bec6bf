"""Hardening to a target: each rung's verdict from its summary, and the ladder stopping at the first that holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe_defense import ladder as ladder_module
from moe_defense.errors import ConfigError
from moe_defense.recipe import RECIPES, load_recipe
from moe_defense.runner.process import ProcessInfo
from moe_defense.target import HardeningTarget, assess

INFO = ProcessInfo(rank=0, world=1, device=None)


def _point(budget: int | None, asr: float) -> dict:
    return {"budget": budget, "asr": asr, "asr_ci95": [max(0, asr - 0.1), asr + 0.2], "n_scored": 32}


def _summary(asr_b16: float, asr_inf: float, compliance: float, over_refusal: float, trainable="routers") -> dict:
    point = _point
    return {
        "budget_b80": 16,
        "b80_reached": True,
        "headline_budget": 16,
        "headline_asr": {},
        "asr_vs_budget": {"hardened": {"fsour@16": point(16, asr_b16), "fsour@inf": point(None, asr_inf)}},
        "utility": {
            "original": {"benign_compliance": 1.0, "over_refusal": 0.05},
            "hardened": {
                "benign_compliance": compliance,
                "benign_compliance_ci95": [compliance - 0.05, 1.0],
                "over_refusal": over_refusal,
                "over_refusal_ci95": [0.0, over_refusal + 0.1],
            },
        },
        "trainable": trainable,
        "router_params_changed": 4,
        "other_params_changed": 0 if trainable == "routers" else 8,
        "changed_fraction": 0.001,
        "router_patch_bytes": 8000,
        "minimal_budget": {},
    }


def test_assess_reads_the_asr_at_the_target_budget_and_both_utility_limits():
    target = HardeningTarget(asr=0.1, budget="b80")
    verdict = assess(_summary(0.05, 0.9, 0.98, 0.07), target)
    assert verdict["met"] and verdict["criteria"]["asr"]["at"] == 16
    assert verdict["criteria"]["compliance_drop"]["value"] == pytest.approx(0.02)
    assert not assess(_summary(0.05, 0.9, 0.9, 0.07), target)["met"]  # compliance fell by 0.10
    assert not assess(_summary(0.05, 0.9, 0.98, 0.2), target)["met"]  # over-refusal rose by 0.15
    assert not assess(_summary(0.05, 0.9, 0.98, 0.07), HardeningTarget(budget="no-cap"))["met"]
    assert assess(_summary(0.05, 0.9, 0.98, 0.07), HardeningTarget(budget=32))["note"] == "budget 32 was not verified"


def test_assess_upper_ci_is_pessimistic():
    summary = _summary(0.05, 0.9, 0.98, 0.07)
    verdict = assess(summary, HardeningTarget(asr=0.2, decide_by="upper_ci95"))
    assert verdict["criteria"]["asr"]["value"] == pytest.approx(0.25) and not verdict["met"]


def test_b80_not_reached_reads_the_headline_budget_and_says_so():
    summary = {**_summary(0.05, 0.9, 1.0, 0.05), "b80_reached": False, "budget_b80": None, "headline_budget": None}
    verdict = assess(summary, HardeningTarget(asr=0.95))
    assert verdict["met"] and verdict["criteria"]["asr"]["at"] is None and "B80 not reached" in verdict["note"]


def _target_recipe(tmp_path: Path, **target) -> Path:
    recipe = tmp_path / "recipe.yaml"
    base = (RECIPES / "demo.yaml").read_text()
    recipe.write_text(base + "target: " + json.dumps(target) + "\n")
    return recipe


def test_ladder_stops_at_the_first_rung_that_meets_the_target(tmp_path, monkeypatch):
    figures = {"router-only": _summary(0.5, 0.9, 0.95, 0.1), "router-only+route-guard": _summary(0.3, 0.9, 1.0, 0.05)}
    figures["routers+expert-lora"] = _summary(0.06, 0.1, 0.99, 0.06, trainable="routers+expert-lora")
    ran = []

    class FakeHarden:
        def __init__(self, recipe, out, **kwargs):
            self.out, self.original = out, kwargs["original_dir"]

        def run(self):
            ran.append(self.out.name)
            assert self.original == tmp_path / "run" / "original"  # every rung shares one original phase
            self.out.mkdir(parents=True)
            (self.out / "summary.json").write_text(json.dumps(figures[self.out.name]))
            return figures[self.out.name]

    monkeypatch.setattr(ladder_module, "Harden", FakeHarden)
    recipe = load_recipe(_target_recipe(tmp_path, asr=0.1))
    result = ladder_module.climb(recipe, tmp_path / "run", info=INFO, progress=False)
    assert ran == ["router-only", "router-only+route-guard", "routers+expert-lora"]
    assert result["chosen"] == "routers+expert-lora"
    assert result["rungs_not_tried"] == ["routers+experts", "all-parameters"]
    assert [r["met"] for r in result["rungs_tried"]] == [False, False, True]
    assert result["ship"]["kind"] == "router patch + expert LoRA adapter"
    report = (tmp_path / "run" / "report.md").read_text()
    assert "chosen: routers+expert-lora" in report and "rungs/router-only/report.md" in report
    ran.clear()  # a resumed climb reads finished rungs instead of rerunning them
    again = ladder_module.climb(recipe, tmp_path / "run", info=INFO, resume=True, progress=False)
    assert ran == [] and again["chosen"] == "routers+expert-lora"


def test_rung_defenses_merge_over_the_recipe_and_bad_rungs_fail_at_validation(tmp_path):
    recipe = load_recipe(_target_recipe(tmp_path, asr=0.1))
    rungs = ladder_module.rung_recipes(recipe)
    router_only = rungs["router-only"].defenses[0]
    assert router_only.args["trainable"] == "routers" and router_only.args["steps"] == recipe.defenses[0].args["steps"]
    assert [d.name for d in rungs["router-only+route-guard"].defenses] == ["router-hardening", "route-disabling"]
    assert rungs["all-parameters"].defenses[0].args["trainable"] == "all" and rungs["all-parameters"].target is None
    bad = _target_recipe(tmp_path, rungs={"guard-first": [{"name": "route-disabling"}, {"name": "router-hardening"}]})
    with pytest.raises(ConfigError, match="target.rungs.guard-first"):
        load_recipe(bad)
