"""Launchable `moe-defense attack`: `python eval/attack.py ARGS` (or under `accelerate launch`), same arguments."""

from __future__ import annotations

import sys

from moe_defense.cli import main
from moe_defense.runner.process import exit_process

if __name__ == "__main__":
    exit_process(main(["attack", *sys.argv[1:]]))
