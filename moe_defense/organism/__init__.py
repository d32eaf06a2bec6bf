"""The built-in model organism: a tiny safety-aligned MoE whose refusals routing alone can flip.

Model specs `organism[:<arch>]` (the demo grammar), `organism-en[:<arch>]` (benchmark English, preset
`en`) and `organism-smol[:<arch>]` (SmolLM2-135M-Instruct upcycled, preset `smol`) resolve here: the
organism is built on first use (minutes on a CPU) and cached by its exact training settings.
"""

from __future__ import annotations

import dataclasses

from pydantic import ValidationError

from moe_defense.errors import ModelLoadError, describe_validation
from moe_defense.models.loading import (
    SPEC_RESOLVERS,
    LoadedModel,
    LoadOptions,
    load_pretrained,
)
from moe_defense.organism.cache import (
    build_into,
    cache_dir,
    ensure_built,
    is_valid,
    read_manifest,
)
from moe_defense.organism.config import OrganismConfig, Preset

__all__ = ["OrganismConfig", "build_into", "cache_dir", "ensure_built", "is_valid", "load_organism", "read_manifest"]


# Spec prefix -> preset, and the model's own benign prompt set (for attacks that contrast with benign routing).
PRESETS: dict[str, tuple[Preset, str]] = {
    "organism": ("demo", "demo-benign"),
    "organism-en": ("en", "en-benign"),
    "organism-smol": ("smol", "smol-benign"),
}


def config_from_spec(spec: str) -> OrganismConfig:
    """`organism[-en|-smol]` -> its preset's default config; `...:<arch>` -> that architecture's."""
    prefix, _, arch = spec.partition(":")
    try:
        return OrganismConfig.for_preset(PRESETS[prefix][0], arch or None)
    except ValidationError as error:
        raise ModelLoadError(f"bad organism spec {spec!r}: {describe_validation(error)}") from error
    except ValueError as error:  # an architecture the preset does not build
        raise ModelLoadError(f"bad organism spec {spec!r}: {error}") from error


@SPEC_RESOLVERS.register("organism")
@SPEC_RESOLVERS.register("organism-en")
@SPEC_RESOLVERS.register("organism-smol")
def load_organism(spec: str, options: LoadOptions) -> LoadedModel:
    """Load the cached organism for `spec`, building it first if needed."""
    directory = ensure_built(config_from_spec(spec))
    loaded = load_pretrained(str(directory), options)
    return dataclasses.replace(loaded, spec=spec, benign_set=PRESETS[spec.partition(":")[0]][1])
