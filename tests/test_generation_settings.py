"""benchmarks/generation_settings.py: a tiny run times every variant and ends with its figures as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "generation_settings.py"


@pytest.mark.timeout(300)
def test_smoke_run_reports_every_variant_against_the_default():
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}
    args = ["--model", "tiny:mixtral", "--prompts", "4", "--max-new-tokens", "3", "--batch-size", "2", "--repeats", "1"]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["prompts"] == 4 and figures["default"]["vs_default"] == 1.0
    for variant in ("static_cache", "threads_1"):
        assert figures[variant]["seconds"] > 0
        assert figures[variant]["answers_identical"] == (figures[variant]["answers_differing"] == 0)
