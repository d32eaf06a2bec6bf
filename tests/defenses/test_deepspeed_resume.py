"""Under DeepSpeed ZeRO-2 and ZeRO-3 (2 processes, CPU) a router-only run SIGKILLed after a checkpoint and resumed
ends with routers bit-identical to an uninterrupted run, from engine checkpoints that hold no frozen tensor."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from moe_defense.recipe import RECIPES
from tests.processes import free_port, run_group

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("resume_worker.py")


def _launch(out: Path, config: str, mode: str):
    command = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), WORKER, out, RECIPES / "ds" / config]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return run_group([*command, mode], env=env, timeout=400, cwd=REPO)  # the launcher and its ranks end with it


def _ranks(out: Path, mode: str) -> list[dict]:
    return [json.loads((out / f"{mode}.rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(1500)
@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="deepspeed launcher not installed")
@pytest.mark.parametrize("config", ["zero2.json", "zero3.json"])
def test_killed_and_resumed_deepspeed_run_equals_the_uninterrupted_one(tmp_path, config):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    for out, mode in ((straight, "straight"), (interrupted, "killed"), (interrupted, "resumed")):
        result = _launch(out, config, mode)
        output = f"{mode}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
        if mode == "killed":  # every rank killed itself once checkpoint-2 was complete
            assert result.returncode != 0 and not list(out.glob("killed.rank*.json")), output
            checkpoints = [p.name for p in (out / "train" / "trainer").glob("checkpoint-*")]
            assert checkpoints == ["checkpoint-2"], output
        else:
            assert result.returncode == 0, output
    uninterrupted, resumed = _ranks(straight, "straight"), _ranks(interrupted, "resumed")
    assert all(rank["resumed_from"].endswith("checkpoint-2") and rank["steps"] == 4 for rank in resumed)
    assert uninterrupted[0]["routers"] == uninterrupted[1]["routers"]
    assert all(rank["routers"] == uninterrupted[0]["routers"] for rank in resumed)  # sha256 of every router's bytes
    for rank in (*uninterrupted, *resumed):
        held = rank["checkpoint"]["module_tensors"]
        assert set(held) - set(rank["buffers"]) == set(rank["routers"])  # the engine saved no frozen weight
        assert rank["checkpoint_bytes"] < rank["model_bytes"] / 4
