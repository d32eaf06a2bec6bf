"""Every real-family recipe runs end to end with its model swapped for the matching tiny:<model_type>."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from moe_defense.ablate import merge
from moe_defense.recipe import RECIPES, Recipe, load_recipe

REPO = Path(__file__).resolve().parents[1]
MODEL_RECIPES = sorted((RECIPES / "models").glob("*.yaml"))


def _tiny_type(path: Path) -> str:
    """The recipe's model_type, from its header (`# model_type <type>.`)."""
    for line in path.read_text().splitlines():
        if line.startswith("# model_type "):
            return line.split()[2].rstrip(".")
    raise AssertionError(f"{path.name} does not state its model_type")


def _local(shared: Path, name: str, file: str, limit: int) -> dict:
    return {"name": name, "data_file": str(shared / file), "limit": limit}


@pytest.mark.e2e
@pytest.mark.parametrize("path", MODEL_RECIPES, ids=lambda p: p.stem)
def test_model_recipe_runs_on_its_tiny_architecture(path, shared_data, tmp_path):
    recipe = load_recipe(path)
    assert recipe.model.count("/") == 1  # a hub id: the GPU user's starting point
    model_type = _tiny_type(path)
    small = {
        "model": f"tiny:{model_type}",
        "judges": ["keyword"],
        "generation": {"max_new_tokens": 8, "batch_size": 8},
        "device_map": None,
        "data": {
            "harmful_train": _local(shared_data, "advbench", "advbench_harmful_behaviors.csv", 3),
            "benign_train": [_local(shared_data, "jbb-benign", "jbb_benign_behaviors.csv", 3)],
            "harmful_eval": _local(shared_data, "jbb-harmful", "jbb_harmful_behaviors.csv", 2),
            "benign_eval": _local(shared_data, "jbb-benign", "jbb_benign_behaviors.csv", 3),
            "over_refusal": _local(shared_data, "xstest", "xstest_prompts.csv", 3),
        },
        "verify": {
            "attacks": [
                "none",
                {
                    "name": "fsour",
                    "args": {"candidates": 4, "restarts": 0, "budget_strategy": "greedy"},
                    "sweep": {"budget": [2]},
                },
                {"name": "router-mask", "sweep": {"n": [1]}},
                "route-replay",
                "expert-silence",
            ]
        },
    }
    tiny = merge(recipe.model_dump(mode="json"), small)
    assert [d["name"] for d in tiny["defenses"]] == ["router-hardening"]
    tiny["defenses"][0]["args"] |= {
        "steps": 2,
        "batch_size": 2,
        "refresh_every": 1,
        "refresh_prompts": 1,
        "max_response_tokens": 6,
        "refusal_fallback": "I cannot help with that.",
        "route_search": {"candidates": 4, "budget_strategy": "greedy"},
    }
    tiny = Recipe.model_validate(tiny)
    tiny_path = tmp_path / "tiny.yaml"
    tiny_path.write_text(yaml.safe_dump(tiny.model_dump(mode="json")))
    # its own process: an in-process DeepSpeed run would leave a process group and accelerate state behind
    command = [sys.executable, "-m", "moe_defense.cli", "harden", str(tiny_path), "--out", str(tmp_path / "run")]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "2"}
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["router_params_changed"] >= 1 and summary["other_params_changed"] == 0
    assert set(summary["phases"]["hardened"]) >= {"none", "fsour@2", "router-mask-top1"}
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["run"]["recipe"]
    assert stored["model"] == f"tiny:{model_type}" and stored["deepspeed"] == recipe.deepspeed
    assert json.loads((tmp_path / "run" / "train" / "train.json").read_text())["steps"] == 2
