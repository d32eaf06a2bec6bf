"""benchmarks/fsour_speed.py: a tiny run goes through all three modes and ends with every figure as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fsour_speed.py"


@pytest.mark.slow
def test_smoke_run_reports_every_cost_ratio(organism):
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}
    args = [
        "--limit",
        "1",
        "--restarts",
        "0",
        "--judge",
        "none",
        "--settings",
        "budget2",
        "--budget",
        "2",
        "--max-new-tokens",
        "4",
        "--layers",
        "2,3",  # the organism's last two; part 2's wide model has layers 0 and 1 only and searches all of them
    ]
    wide = ["--wide-experts", "8", "--wide-top-k", "2", "--wide-prompts", "1"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args, *wide], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["layers"] == "2,3" and figures["prompts"] == 1  # given flags win over the model's defaults
    block = figures["budget2"]
    assert {"reference", "fast", "gradient"} <= set(block) and block["gradient"]["n"] == 1
    assert block["gradient"]["mean_forced_pairs"] <= 2 and block["gradient"]["backward_passes"] >= 1
    assert set(block["gradient_vs_reference"]) == {
        "sequences",
        "tokens",
        "sequence_equivalents",
        "forward_calls",
        "seconds",
    }
    assert block["reference"]["sequences"] == block["reference"]["forward_calls"]  # one sequence a call
    assert set(block["gradient_targets"]) == {"asr", "sequences", "sequence_equivalents", "seconds"}
    assert figures["wide_gradient_vs_reference"]["objective_gain_per_sequence_equivalent"] > 0
