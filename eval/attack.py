"""Launchable `moe-defense attack`: `python eval/attack.py ARGS` (or under `accelerate launch`), same arguments."""

from __future__ import annotations

import sys

from moe_defense.cli import main

if __name__ == "__main__":
    sys.exit(main(["attack", *sys.argv[1:]]))
