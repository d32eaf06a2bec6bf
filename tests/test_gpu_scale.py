"""benchmarks/gpu_scale.py: its CPU smoke mode runs the whole path and ends with the JSON figures;
without CUDA the GPU mode says so in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_scale.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cpu_smoke_run_ends_with_the_figures_as_json():
    result = _run("--device", "cpu", "--tiny", "--prompts", "1", "--steps", "3", "--candidates", "2", "--budget", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["steps"] == 3 and figures["prompts"] == 1 and figures["dtype"] == "float32"
    assert figures["seconds_per_search"] > 0 and figures["seconds_per_step"] > 0
    assert 0 < figures["router_patch_bytes"] < figures["full_model_bytes"]
    assert figures["router_parameters"] == 2 * 8 * 64  # 2 layers of 8-expert routers over hidden 64
    assert figures["peak_gpu_gib_search"] is None and figures["peak_gpu_gib_train"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_the_gpu_mode_exits_2_in_one_line():
    result = _run()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "gpu_scale: no CUDA device here; run it on a GPU machine, or --device cpu --tiny"
    )
