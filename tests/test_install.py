"""A non-editable install: the wheel, in a fresh venv, run from another directory, finds its packaged recipes."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what a wheel is built from: the source, not this checkout's build outputs (a stale build/ would leak into it)
NOT_SOURCE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "runs", ".cache", ".venv", "__pycache__")
CHECK = """
import json, moe_defense
from moe_defense.recipe import RECIPES, load_recipe
demo, olmoe = load_recipe("demo"), load_recipe("recipes/models/olmoe.yaml")
print(json.dumps({"module": moe_defense.__file__, "recipes": str(RECIPES), "model": demo.model,
                  "defenses": [d.name for d in demo.defenses], "deepspeed": olmoe.deepspeed}))
"""


def _run(command: list, cwd: Path | None = None) -> str:
    # without PYTHONPATH: a checkout on it (as when testing a worktree) would be imported instead of the wheel
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result.stdout


def _site_directories() -> list[str]:
    """Where this interpreter finds its packages: its site-packages (a venv's, and the base's when the venv has
    system site-packages) and the user's, in the order it searches them."""
    directories = site.getsitepackages()
    if site.ENABLE_USER_SITE:
        directories.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(directories) if Path(d).is_dir()]


def _see_this_environment(python: Path) -> None:
    """Let the venv of `python` import what this interpreter imports. `venv --system-site-packages` exposes the
    base interpreter's site-packages only: where pytest itself runs in a venv, torch & co. are in that venv's. A .pth
    file in the new venv adds this interpreter's site directories after its own (their .pth files processed, as
    system site-packages are), so the installed wheel still comes first."""
    own = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    lines = [f"import site; site.addsitedir({d!r})" for d in _site_directories()]
    (Path(own) / "_running_environment.pth").write_text("\n".join(lines) + "\n")


@pytest.mark.e2e
@pytest.mark.slow
def test_wheel_in_a_fresh_venv_finds_the_packaged_demo_recipe_from_another_directory(tmp_path):
    source, dist, venv, elsewhere = (tmp_path / name for name in ("src", "dist", "venv", "elsewhere"))
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    # no build isolation: the build backend (setuptools) comes from this environment, nothing is downloaded
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", source, "-w", dist])
    (wheel,) = dist.glob("moe_defense-*.whl")
    # torch, transformers, ... come from this environment's site-packages; only the wheel is installed (by this
    # environment's pip: a venv without its own pip is made in seconds)
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv])
    python = venv / "bin" / "python"
    _see_this_environment(python)
    install = ["install", "-q", "--no-deps", "--no-index", "--force-reinstall", wheel]
    _run([sys.executable, "-m", "pip", "--python", python, *install])
    elsewhere.mkdir()

    facts = json.loads(_run([python, "-c", CHECK], cwd=elsewhere).strip().splitlines()[-1])
    assert Path(facts["module"]).is_relative_to(venv)  # the wheel's copy, not this checkout or an editable install
    assert Path(facts["recipes"]).is_relative_to(venv)
    assert facts["model"] == "organism" and facts["defenses"] == ["router-hardening"]
    assert facts["deepspeed"] == str(Path(facts["recipes"]) / "ds" / "zero2.json")  # resolved inside the package
    assert "demo" in _run([python, "-m", "moe_defense", "--help"], cwd=elsewhere)
    assert "--out OUT" in _run([venv / "bin" / "moe-defense", "demo", "--help"], cwd=elsewhere)  # the console script
