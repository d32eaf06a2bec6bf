"""Model loading and the per-architecture `RouterAdapter` registry."""

from moe_defense.models.adapters import (
    ADAPTERS,
    RouterAdapter,
    RouterFacts,
    adapter_for,
    register_adapter,
)
from moe_defense.models.loading import (
    LoadedModel,
    LoadOptions,
    build_tiny,
    load_model,
    model_fingerprint,
)
from moe_defense.models.params import set_trainable

__all__ = [
    "ADAPTERS",
    "LoadOptions",
    "LoadedModel",
    "RouterAdapter",
    "RouterFacts",
    "adapter_for",
    "build_tiny",
    "load_model",
    "model_fingerprint",
    "register_adapter",
    "set_trainable",
]
