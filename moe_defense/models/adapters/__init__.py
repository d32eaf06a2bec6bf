"""Router adapters, one file per architecture, registered by `config.model_type`.

Importing this package imports every module in it, so an adapter file that exists is registered.
"""

from moe_defense.models.adapters.base import (
    ADAPTERS,
    RouterAdapter,
    RouterFacts,
    adapter_for,
    register_adapter,
)
from moe_defense.registry import discover

discover(__name__, group="moe_defense.adapters")

__all__ = ["ADAPTERS", "RouterAdapter", "RouterFacts", "adapter_for", "register_adapter"]
