"""`python -m moe_defense VERB ...`: the `moe-defense` command."""

import sys

from moe_defense.cli import main

sys.exit(main())
