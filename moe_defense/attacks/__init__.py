"""The attack suite: one registry (`ATTACKS`) of routing attacks, plus RoSais router ranking.

Importing this package imports every module in it (and the `moe_defense.attacks` entry points), so
an attack file that exists is registered.
"""

from moe_defense.attacks.artifacts import (
    RouteArtifact,
    interventions_for,
    read_artifacts,
    write_artifacts,
)
from moe_defense.attacks.base import (
    ATTACKS,
    Attack,
    AttackConfig,
    AttackContext,
    AttackResult,
    AttackSpec,
    SearchCost,
    SharedCache,
    register_attack,
)
from moe_defense.attacks.fsour import Fsour, FsourConfig
from moe_defense.attacks.rosais import RosaisConfig, RouterImportance, rosais
from moe_defense.attacks.router_mask import RouterMaskAttack, RouterMaskConfig
from moe_defense.registry import discover

discover(__name__, group="moe_defense.attacks")

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackConfig",
    "AttackContext",
    "AttackResult",
    "AttackSpec",
    "Fsour",
    "FsourConfig",
    "RosaisConfig",
    "RouteArtifact",
    "RouterImportance",
    "RouterMaskAttack",
    "RouterMaskConfig",
    "SearchCost",
    "SharedCache",
    "interventions_for",
    "read_artifacts",
    "register_attack",
    "rosais",
    "write_artifacts",
]
