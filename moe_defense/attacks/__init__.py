"""The attack suite: one registry (`ATTACKS`) of routing attacks, plus RoSais router ranking."""

from moe_defense.attacks import expert_silence, fsour, route_replay, router_mask  # noqa: F401  (registers each)
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
    AttackResult,
    register_attack,
)
from moe_defense.attacks.fsour import Fsour, FsourConfig
from moe_defense.attacks.rosais import RosaisConfig, RouterImportance, rosais
from moe_defense.attacks.router_mask import RouterMaskAttack, RouterMaskConfig

__all__ = [
    "ATTACKS", "Attack", "AttackConfig", "AttackResult", "Fsour", "FsourConfig", "RosaisConfig",
    "RouteArtifact", "RouterImportance", "RouterMaskAttack", "RouterMaskConfig", "interventions_for",
    "read_artifacts", "register_attack", "rosais", "write_artifacts",
]
