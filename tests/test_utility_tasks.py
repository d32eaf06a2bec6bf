"""`verify.utility_tasks`: lm-eval tasks on the original and hardened model in memory, beside safety in the report."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from moe_defense.cli import main
from moe_defense.errors import ConfigError
from moe_defense.recipe import load_recipe
from moe_defense.report import task_rows
from moe_defense.utility_tasks import scores_of

TASKS = Path(__file__).resolve().parent / "fixtures" / "lm_eval"  # toy_choice and toy_choice_flipped
NEEDS_LM_EVAL = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None,
    reason="lm_eval is not installed (pip install 'moe-defense[lm-eval]'); not in the test extra",
)
SMALL = {
    "model": "organism",
    "generation": {"max_new_tokens": 8, "batch_size": 16},
    "data": {
        "harmful_train": {"name": "demo-harmful", "split": "train", "limit": 2},
        "benign_train": [{"name": "demo-benign", "split": "train", "limit": 2}],
        "harmful_eval": {"name": "demo-harmful", "split": "test", "limit": 2},
        "benign_eval": {"name": "demo-benign", "split": "test", "limit": 2},
        "over_refusal": {"name": "demo-lookalike", "split": "test", "limit": 2},
    },
    "defenses": ["none"],  # the hardened model is the original: its scores must be the original's
    "train_budget": 2,
    "verify": {
        "attacks": ["none"],
        "utility_tasks": ["toy_choice", "toy_choice_flipped"],
        "utility_task_path": str(TASKS),
    },
}


def _recipe(tmp_path: Path, **verify) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "verify": {**SMALL["verify"], **verify}}))
    return path


def test_scores_keep_numeric_metrics_their_stderr_and_n():
    results = {
        "results": {
            "gsm8k": {
                "alias": "gsm8k",
                "exact_match,strict-match": 0.25,
                "exact_match_stderr,strict-match": 0.05,
                "exact_match,flexible-extract": 0.3,
                "exact_match_stderr,flexible-extract": "N/A",
            },
            "mmlu": {"acc,none": 0.5, "acc_stderr,none": 0.01},
        },
        "n-samples": {"gsm8k": {"original": 1319, "effective": 100}, "mmlu": {"original": 10, "effective": 10}},
    }
    assert scores_of(results) == {
        "gsm8k": {
            "metrics": {"exact_match,strict-match": 0.25, "exact_match,flexible-extract": 0.3},
            "stderr": {"exact_match,strict-match": 0.05},
            "n": 100,
        },
        "mmlu": {"metrics": {"acc": 0.5}, "stderr": {"acc": 0.01}, "n": 10},
    }
    utility = {"original": {"tasks": scores_of(results)}, "hardened": {"tasks": {}}}
    assert "| mmlu acc (lm-eval) | 0.500 ± 0.010 n=10 | - |" in task_rows(utility)


def test_utility_tasks_without_lm_eval_is_one_error_before_any_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what find_spec reports when it is not installed
    path = _recipe(tmp_path)
    with pytest.raises(ConfigError, match=r"verify.utility_tasks: .*pip install 'moe-defense\[lm-eval\]'"):
        load_recipe(path)
    assert main(["harden", str(path), "--out", str(tmp_path / "run")]) == 1
    assert "pip install 'moe-defense[lm-eval]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@NEEDS_LM_EVAL
def test_task_folder_must_exist_next_to_the_recipe(tmp_path):
    with pytest.raises(ConfigError, match=r"verify.utility_task_path: 'no-such-tasks' is not a folder"):
        load_recipe(_recipe(tmp_path, utility_task_path="no-such-tasks"))


@NEEDS_LM_EVAL
@pytest.mark.slow  # indexes lm-eval's ~15k built-in tasks (~30 s on 2 cores)
def test_unknown_task_is_one_error_before_any_model_loads(tmp_path, capsys):
    path = _recipe(tmp_path, utility_tasks=["toy_choice", "no_such_task"])
    assert main(["harden", str(path), "--model", "/no/such/checkpoint", "--out", str(tmp_path / "run")]) == 1
    assert "['no_such_task'] are not lm-eval tasks" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@NEEDS_LM_EVAL
@pytest.mark.e2e
def test_utility_tasks_run_on_both_phases_beside_safety_and_resume(organism, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(["harden", str(_recipe(tmp_path)), "--out", str(out)]) == 0
    for phase in ("original", "hardened"):
        stored = json.loads((out / phase / "utility-tasks" / "lm_eval.json").read_text())
        assert set(stored["results"]) == {"toy_choice", "toy_choice_flipped"}
    summary = json.loads((out / "summary.json").read_text())
    tasks = {phase: summary["utility"][phase]["tasks"] for phase in ("original", "hardened")}
    assert tasks["original"] == tasks["hardened"]  # defense none: the same model, the same scores
    toy, flipped = (tasks["original"][name] for name in ("toy_choice", "toy_choice_flipped"))
    assert toy["n"] == flipped["n"] == 4
    # two-way questions with the answers swapped: each choice really scored on the model (a tie would break it)
    assert toy["metrics"]["acc"] + flipped["metrics"]["acc"] == pytest.approx(1.0)
    assert "utility-tasks" not in summary["attacks"]
    report = (out / "report.md").read_text()
    assert f"| toy_choice acc (lm-eval) | {toy['metrics']['acc']:.3f}" in report

    import lm_eval

    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run re-ran lm-eval")

    monkeypatch.setattr(lm_eval, "simple_evaluate", refuse)
    assert main(["harden", str(_recipe(tmp_path)), "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["utility"]["original"]["tasks"] == tasks["original"]
