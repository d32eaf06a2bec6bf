"""Launchable router hardening: `deepspeed train/harden.py --recipe R`, `accelerate launch train/harden.py
--recipe R`, or `python train/harden.py --recipe R`; the same run as `moe-defense harden R`."""

from __future__ import annotations

import sys

from moe_defense.cli import main
from moe_defense.runner.process import exit_process

if __name__ == "__main__":
    argv = sys.argv[1:]
    argv = [
        a for a in argv if not a.startswith("--local_rank")
    ]  # the deepspeed launcher appends it; LOCAL_RANK carries it
    if "--recipe" in argv:
        i = argv.index("--recipe")
        argv = [argv[i + 1], *argv[:i], *argv[i + 2 :]]
    exit_process(main(["harden", *argv]))
