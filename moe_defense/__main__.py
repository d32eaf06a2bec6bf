"""`python -m moe_defense VERB ...`: the `moe-defense` command."""

from moe_defense.cli import run

run()
