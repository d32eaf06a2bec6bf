"""Launchable `moe-defense ablate`: `python eval/ablate.py ARGS` (or under `accelerate launch`), same arguments."""

from __future__ import annotations

import sys

from moe_defense.cli import main

if __name__ == "__main__":
    sys.exit(main(["ablate", *sys.argv[1:]]))
