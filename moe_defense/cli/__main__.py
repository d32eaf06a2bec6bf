"""`python -m moe_defense.cli VERB ...`: the `moe-defense` command (e.g. under a launcher)."""

from moe_defense.cli import run

run()
