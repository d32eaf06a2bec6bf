"""Launchable `moe-defense report`: `python eval/report.py ARGS` (or under `accelerate launch`), same arguments."""

from __future__ import annotations

import sys

from moe_defense.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
