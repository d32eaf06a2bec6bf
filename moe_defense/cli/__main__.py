"""`python -m moe_defense.cli VERB ...`: the `moe-defense` command (e.g. under a launcher)."""

import sys

from moe_defense.cli import main

sys.exit(main())
