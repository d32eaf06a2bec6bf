"""Defenses: one registry (`DEFENSES`) of router hardening, route disabling and the no-defense baseline.

Importing this package imports every module in it, so a defense file that exists is registered.
"""

from moe_defense.defenses.base import (
    DEFENSES,
    Defended,
    Defense,
    DefenseConfig,
    DefenseContext,
    DefenseSpec,
    register_defense,
)
from moe_defense.registry import discover

discover(__name__, group="moe_defense.defenses")

__all__ = ["DEFENSES", "Defended", "Defense", "DefenseConfig", "DefenseContext", "DefenseSpec", "register_defense"]
