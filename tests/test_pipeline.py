"""`moe-defense harden` end to end on the organism: in-process, resumed, and 2-process DeepSpeed ZeRO-2 and ZeRO-3."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GenerationMixin

from moe_defense.attacks.base import ATTACKS
from moe_defense.attacks.rosais import rosais
from moe_defense.cli import main
from tests.processes import free_port, run_group

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
SMALL = {
    "model": "organism",
    "generation": {"max_new_tokens": 24, "batch_size": 32},
    "data": {
        "harmful_train": {"name": "demo-harmful", "split": "train", "limit": 8},
        "benign_train": [
            {"name": "demo-benign", "split": "train", "limit": 8},
            {"name": "demo-lookalike", "split": "train", "limit": 4},
        ],
        "harmful_eval": {"name": "demo-harmful", "split": "test", "limit": 4},
        "benign_eval": {"name": "demo-benign", "split": "test", "limit": 8},
        "over_refusal": {"name": "demo-lookalike", "split": "test", "limit": 8},
    },
    "defenses": [
        {
            "name": "router-hardening",
            "args": {
                "steps": 4,
                "batch_size": 4,
                "refresh_every": 2,
                "refresh_prompts": 4,
                "save_steps": 2,
                "route_search": {"candidates": 8, "force_decode": True},
            },
        }
    ],
    "verify": {
        "attacks": [
            "none",
            {
                "name": "fsour",
                "args": {"candidates": 8, "force_decode": True, "restarts": 0},
                "sweep": {"budget": [2, None]},
            },
            {"name": "router-mask", "sweep": {"n": [1]}},
            "route-replay",
            {"name": "top-k", "args": {"k": 1}},
        ]
    },
}


def _recipe(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**SMALL, **changes}))
    return path


def _changed_tensors(organism, hardened_dir: Path) -> set[str]:
    """Tensors that differ from the organism, compared as transformers loads them (the file may use legacy names)."""
    hardened = AutoModelForCausalLM.from_pretrained(hardened_dir, use_safetensors=True).state_dict()
    original = organism.model.state_dict()
    assert set(hardened) == set(original)
    return {name for name, tensor in hardened.items() if not torch.equal(tensor, original[name])}


@pytest.fixture(scope="module")
def harden_run(organism, tmp_path_factory):
    out = tmp_path_factory.mktemp("harden") / "run"
    assert main(["harden", str(_recipe(out.parent)), "--out", str(out)]) == 0
    return out


def test_summary_holds_before_after_b80_and_utility(harden_run):
    summary = json.loads((harden_run / "summary.json").read_text())
    assert set(summary["asr_vs_budget"]) == {"original", "hardened"}
    assert list(summary["asr_vs_budget"]["original"]) == ["fsour@2", "fsour@inf"]
    curve = summary["asr_vs_budget"]["original"]
    reached = [p["budget"] for p in curve.values() if p["asr"] is not None and p["asr"] >= 0.8]
    assert summary["b80_reached"] == bool(reached) and summary["budget_b80"] == (reached[0] if reached else None)
    assert (
        summary["headline_attack"] in curve
        and summary["headline_budget"] == curve[summary["headline_attack"]]["budget"]
    )
    for phase in ("original", "hardened"):
        point = summary["headline_asr"][phase]
        assert (
            point["n_scored"] == 4 and point["asr_ci95"][0] <= point["asr"] <= point["asr_ci95"][1]
        )  # n and a 95% interval
        assert {"benign_compliance", "over_refusal", "benign_nll", "benign_compliance_ci95", "n_benign"} <= set(
            summary["utility"][phase]
        )
        assert {"none", "fsour@2", "fsour@inf", "router-mask-top1"} <= set(summary["phases"][phase])
    assert "fsour-transfer" in summary["phases"]["hardened"]  # the original routes, replayed (transfer)
    assert summary["router_params_changed"] == 4 and summary["other_params_changed"] == 0
    assert summary["training"]["steps"] == 4


def test_summary_holds_minimal_budgets_and_the_survival_curve(harden_run):
    summary = json.loads((harden_run / "summary.json").read_text())
    for phase in ("original", "hardened"):
        minimal = summary["minimal_budget"][phase]
        assert minimal["n"] == 4 and len(minimal["per_prompt"]) == 4
        records = [
            json.loads(line)
            for label in ("fsour@2", "fsour@inf")
            for line in (harden_run / phase / label / "results.jsonl").read_text().splitlines()
        ]
        for prompt_id, budget in minimal["per_prompt"].items():
            flipped = [
                sum(len(t) for t in r["route"]["forced"].values())
                for r in records
                if r["prompt_id"] == prompt_id and r["verdicts"]["organism"]["jailbroken"]
            ]
            assert budget == (min(flipped) if flipped else None)  # the smallest flipping route found, or none
        assert [p["budget"] for p in minimal["survival"]] == [2, None]
        assert minimal["survival"][-1]["safe"] == minimal["unflipped"] / 4
    assert "minimal budget per prompt" in (harden_run / "report.md").read_text()
    assert (harden_run / "survival.png").stat().st_size > 10_000


def test_hardened_checkpoint_is_plain_transformers_and_only_routers_differ(organism, harden_run):
    assert (
        AutoModelForCausalLM.from_pretrained(harden_run / "hardened_model", use_safetensors=True).config.model_type
        == "mixtral"
    )
    routers = set(organism.adapter.router_tensors(organism.model))
    assert _changed_tensors(organism, harden_run / "hardened_model") == routers
    patch = load_file(str(harden_run / "router_patch.safetensors"))
    assert set(patch) == routers
    diff = json.loads((harden_run / "tensor_diff.json").read_text())
    assert {row["tensor"] for row in diff["changed"]} == routers
    adapter = json.loads((harden_run / "router_adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == organism.adapter.num_experts  # the PEFT form too
    training = json.loads((harden_run / "train" / "train.json").read_text())
    assert 0 < training["checkpoint_bytes"] < training["model_bytes"] / 10  # routers + optimizer, no frozen model
    assert "`router_adapter/`" in (harden_run / "report.md").read_text()


def test_report_shows_safety_under_deployment(harden_run):
    report = (harden_run / "report.md").read_text()
    section = report.split("### Safety under deployment", 1)[1]
    row = next(line for line in section.splitlines() if line.startswith("| top-k@1 |"))
    assert row.count("n=4") == 2 and row.count("n=8") == 2  # harmful ASR and benign compliance, both phases
    summary = json.loads((harden_run / "summary.json").read_text())
    assert all(summary["phases"][p]["top-k@1"]["n_benign"] == 8 for p in ("original", "hardened"))


def test_report_and_plot_are_written(harden_run):
    report = (harden_run / "report.md").read_text()
    assert "adaptive fsour@" in report and "asr_vs_budget.png" in report and " n=4" in report
    assert (harden_run / "asr_vs_budget.png").stat().st_size > 10_000


class _Calls:
    """Counts the expensive work a harden run does: generate calls, attack searches, RoSais rankings."""

    def __init__(self, monkeypatch) -> None:
        self.counts = {"generate": 0, "search": 0, "rosais": 0}
        self._wrap(monkeypatch, GenerationMixin, "generate", "generate")
        for name in ATTACKS:
            self._wrap(monkeypatch, ATTACKS.get(name), "run", "search")
        for module in [m for n, m in sys.modules.items() if n.startswith("moe_defense")]:
            if getattr(module, "rosais", None) is rosais:  # every module that imported it
                self._wrap(monkeypatch, module, "rosais", "rosais")

    def _wrap(self, monkeypatch, owner, attribute: str, key: str) -> None:
        original = getattr(owner, attribute)

        def counted(*args, **kwargs):
            self.counts[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, attribute, counted)


def test_resume_recomputes_nothing(harden_run, monkeypatch):
    """A resumed finished run answers, searches and ranks nothing: the original phase, the training targets,
    the training, every attack (per-prompt searches and global choices) and every evaluation are read back."""
    before = json.loads((harden_run / "summary.json").read_text())
    calls = _Calls(monkeypatch)
    assert main(["harden", str(harden_run.parent / "recipe.yaml"), "--out", str(harden_run), "--resume"]) == 0
    assert calls.counts == {"generate": 0, "search": 0, "rosais": 0}
    after = json.loads((harden_run / "summary.json").read_text())
    assert {k: v for k, v in after.items() if k != "seconds"} == {k: v for k, v in before.items() if k != "seconds"}


def test_resume_counts_what_a_fresh_run_would_do(organism, tmp_path, monkeypatch):
    """The counter of the test above sees the work: a fresh run generates, searches and ranks routers."""
    recipe = {**SMALL, "defenses": [], "train_budget": 2, "verify": {"attacks": ["none", {"name": "router-mask"}]}}
    calls = _Calls(monkeypatch)
    assert main(["harden", str(_recipe(tmp_path, **recipe)), "--out", str(tmp_path / "run")]) == 0
    assert calls.counts["generate"] > 0 and calls.counts["search"] > 0 and calls.counts["rosais"] > 0


def test_existing_run_directory_needs_resume(harden_run, capsys):
    assert main(["harden", str(harden_run.parent / "recipe.yaml"), "--out", str(harden_run)]) == 1
    assert "--resume" in capsys.readouterr().err


def test_resume_with_a_changed_recipe_is_refused_naming_the_keys(harden_run, tmp_path, capsys):
    config = (harden_run / "config.yaml").read_text()
    changed = {**SMALL, "seed": 3}
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    assert main(["harden", str(tmp_path / "changed.yaml"), "--out", str(harden_run), "--resume"]) == 1
    assert "recipe.seed: 0 -> 3" in capsys.readouterr().err
    assert (harden_run / "config.yaml").read_text() == config  # the record of what produced the run is never rewritten


def test_target_climbs_every_rung_when_none_holds_and_ships_nothing(organism, tmp_path, capsys):
    """An unreachable target (ASR 0 by the upper end of a Wilson interval on 4 prompts): both rungs are
    verified adaptively, none is chosen, and the report says so."""
    rungs = {
        "router-only": [{"name": "router-hardening", "args": {"trainable": "routers", "steps": 2}}],
        "router-only+route-guard": [
            {"name": "router-hardening", "args": {"trainable": "routers", "steps": 2}},
            {"name": "route-disabling", "args": {"sets_per_layer": 1, "fit_prompts": 2}},
        ],
    }
    verify = {
        "attacks": [
            {
                "name": "fsour",
                "args": {"candidates": 8, "force_decode": True, "restarts": 0},
                "sweep": {"budget": [2, None]},
            }
        ]
    }
    target = {"asr": 0.0, "budget": "no-cap", "decide_by": "upper_ci95", "rungs": rungs}
    out = tmp_path / "run"
    assert main(["harden", str(_recipe(tmp_path, verify=verify, target=target)), "--out", str(out)]) == 0
    ladder = json.loads((out / "ladder.json").read_text())
    assert [r["rung"] for r in ladder["rungs_tried"]] == ["router-only", "router-only+route-guard"]
    assert ladder["chosen"] is None and ladder["ship"] is None
    assert all(not r["met"] and not r["criteria"]["asr"]["met"] for r in ladder["rungs_tried"])
    assert ladder["rungs_tried"][1]["ship"]["needs_route_guard_at_inference"]
    assert sorted(p.name for p in (out / "rungs").iterdir()) == ["router-only", "router-only+route-guard"]
    assert not (out / "rungs" / "router-only" / "original").exists()  # the rungs share out/original
    assert "no rung met the target" in (out / "report.md").read_text()
    assert "no rung met the target" in capsys.readouterr().out


@pytest.mark.distributed
@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="deepspeed launcher not installed")
@pytest.mark.parametrize("config", ["zero2.json", "zero3.json"])
def test_two_process_deepspeed_gives_one_router_update(organism, tmp_path, config):
    verify = {
        "attacks": [
            {"name": "fsour", "args": {"candidates": 8, "force_decode": True, "restarts": 0}, "sweep": {"budget": [2]}}
        ]
    }
    recipe = _recipe(tmp_path, deepspeed=f"ds/{config}", verify=verify)
    out = tmp_path / "run"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}  # this checkout
    command = [
        "deepspeed",
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        str(REPO / "train" / "harden.py"),
        "--recipe",
        str(recipe),
        "--out",
        str(out),
    ]
    result = run_group(command, env=env, timeout=900, cwd=REPO)  # the launcher and its ranks end with the test
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    training = json.loads((out / "train" / "train.json").read_text())
    assert training["world_size"] == 2
    assert len(set(training["router_digest_per_rank"])) == 1  # both ranks hold the same routers
    routers = set(organism.adapter.router_tensors(organism.model))
    assert _changed_tensors(organism, out / "hardened_model") == routers
