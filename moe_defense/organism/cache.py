"""Build-once cache of organisms, keyed by the exact training settings.

An entry is written to a temporary directory and renamed into place, and its manifest (written
last) records the sha256 of the weights; an entry without a manifest, with another key or with
weights that do not hash to the recorded value is partial or corrupt, and is rebuilt, never loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers

from moe_defense.errors import ModelLoadError
from moe_defense.organism.build import train_organism
from moe_defense.organism.config import OrganismConfig, cache_root
from moe_defense.organism.smol import sha256_of

MANIFEST = "organism.json"
WEIGHTS = "model.safetensors"


def cache_dir(config: OrganismConfig) -> Path:
    prefix = "" if config.preset == "demo" else f"{config.preset}-"
    return cache_root() / "organism" / f"{prefix}{config.arch}-{config.cache_key()}"


def read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_valid(directory: Path, config: OrganismConfig) -> bool:
    """True only for a complete entry of exactly this config whose weights hash as recorded."""
    manifest = read_manifest(directory)
    if manifest is None or manifest.get("cache_key") != config.cache_key():
        return False
    weights = directory / WEIGHTS
    return weights.is_file() and sha256_of(weights) == manifest.get("weights_sha256")


def build_into(config: OrganismConfig, out_dir: Path) -> dict[str, Any]:
    """Train and write a complete organism directory at `out_dir` (which must not exist yet)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        model, tokenizer, facts = train_organism(config, staging / "work")
        shutil.rmtree(staging / "work", ignore_errors=True)
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        manifest = {
            "cache_key": config.cache_key(),
            "config": config.model_dump(),
            "training": facts,
            "weights_sha256": sha256_of(staging / WEIGHTS),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def ensure_built(config: OrganismConfig, rebuild: bool = False) -> Path:
    """The cache directory of `config`, built first if missing, partial or corrupt."""
    directory = cache_dir(config)
    if not rebuild and is_valid(directory, config):
        return directory
    if directory.exists():
        shutil.rmtree(directory)
    try:
        build_into(config, directory)
    except OSError as error:
        if is_valid(directory, config):  # another process finished the same build first
            return directory
        raise ModelLoadError(f"cannot write the organism cache at {directory}: {error}") from error
    return directory
