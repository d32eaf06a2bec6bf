"""ZeRO-3 router-only training: the config checks (no model), and a 2-process CPU run that trains."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from moe_defense.defenses.zero3 import check_zero3_config, local_forwards, suspended
from moe_defense.recipe import RECIPES
from tests.processes import free_port, run_group

REPO = Path(__file__).resolve().parents[2]
ZERO3 = RECIPES / "ds" / "zero3.json"
WORKER = Path(__file__).with_name("zero3_worker.py")


def _config(tmp_path: Path, **zero) -> Path:
    settings = json.loads(ZERO3.read_text())
    settings["zero_optimization"].update(zero)
    settings["zero_optimization"] = {k: v for k, v in settings["zero_optimization"].items() if v is not None}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(settings))
    return path


def test_shipped_zero2_and_zero3_configs_pass():
    for name in ("zero0.json", "zero2.json", "zero3.json"):
        check_zero3_config(RECIPES / "ds" / name, ["routers"])


@pytest.mark.parametrize(
    ("zero", "scopes", "named"),
    [
        ({"leaf_module": None}, ["routers"], "leaf_module.classes: [] (got None"),
        ({"leaf_module": {"classes": ["MixtralSparseMoeBlock"]}}, ["routers"], "leaf_module.classes"),
        ({"stage3_param_persistence_threshold": None}, ["routers"], "stage3_param_persistence_threshold"),
        ({"stage3_param_persistence_threshold": 0}, ["routers"], "stage3_param_persistence_threshold"),
        ({}, ["routers", "all"], "trainable: routers only (got ['all'])"),
    ],
)
def test_zero3_config_that_would_fail_is_refused_naming_the_field(tmp_path, zero, scopes, named):
    with pytest.raises(ValueError) as error:
        check_zero3_config(_config(tmp_path, **zero), scopes)
    assert named in str(error.value)


def test_suspended_hooks_do_not_fire_and_return_in_their_order():
    layer, calls = torch.nn.Linear(2, 2), []
    handles = [layer.register_forward_hook(lambda m, i, o, n=n: calls.append(n)) for n in range(4)]
    layer.register_forward_pre_hook(lambda m, i: calls.append("pre"))
    with suspended([handles[0], handles[2]]):
        layer(torch.zeros(1, 2))
        assert calls == ["pre", 1, 3]
        extra = layer.register_forward_hook(lambda m, i, o: calls.append("extra"))
    calls.clear()
    layer(torch.zeros(1, 2))
    assert calls == ["pre", 0, 1, 2, 3, "extra"]  # the suspended ones back in place, the one added meanwhile last
    extra.remove()


def test_local_forwards_without_a_zero3_engine_changes_nothing():
    layer = torch.nn.Linear(2, 2)
    with local_forwards(None, layer), local_forwards(torch.nn.Module(), layer):
        assert layer(torch.zeros(1, 2)).shape == (1, 2)


def _environment() -> dict[str, str]:
    return {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="deepspeed launcher not installed")
def test_two_process_zero3_trains_the_routers_only_and_ranks_agree(tmp_path):
    command = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), WORKER, tmp_path, ZERO3]
    result = run_group(command, env=_environment(), timeout=540, cwd=REPO)  # the launcher and its ranks end with it
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for trained in ranks:
        assert trained["world_size"] == 2 and trained["refreshes"] == 2  # route refresh ran under ZeRO-3 too
        assert trained["changed"] == trained["routers"]  # every router moved, every other tensor is bit-identical
        losses = [entry["loss"] for entry in trained["log"]]
        assert len(set(losses)) == len(losses)
        assert trained["log"][-1]["term/routing_kl"] > 0  # the KL reference is the original routers, not the current
    assert len(set(ranks[0]["digests"])) == 1 and ranks[0]["digests"] == ranks[1]["digests"]


@pytest.mark.slow
@pytest.mark.distributed
def test_zero3_with_routers_partitioned_fails_before_step_one(tmp_path):
    config = _config(tmp_path, stage3_param_persistence_threshold=10)  # tiny Mixtral's routers have 256 elements
    command = [sys.executable, str(WORKER), str(tmp_path / "run"), str(config)]
    (tmp_path / "run").mkdir()
    result = run_group(command, env=_environment(), timeout=300, cwd=REPO)
    assert result.returncode != 0
    assert "stage3_param_persistence_threshold to at least 256" in result.stderr
    assert not (tmp_path / "run" / "rank0.json").exists()
