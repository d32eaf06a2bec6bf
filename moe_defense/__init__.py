"""moe-defense: measure, harden and verify the routing safety of Mixture-of-Experts language models."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moe_defense.models import LoadedModel, LoadOptions

__version__ = "0.1.0"


def load_model(spec: str, options: LoadOptions | None = None) -> LoadedModel:
    """Load any model spec, the built-in `organism` included (its resolver registers on import)."""
    import moe_defense.organism  # noqa: F401
    from moe_defense.models import load_model as load

    return load(spec, options)
