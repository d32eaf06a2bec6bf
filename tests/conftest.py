"""Shared fixtures: tiny models of every supported architecture, built once per test session."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from moe_defense.models import ADAPTERS, LoadedModel, build_tiny

ARCHITECTURES = ADAPTERS.names()
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@functools.cache
def _tiny(model_type: str) -> LoadedModel:
    return build_tiny(model_type, seed=0)


@pytest.fixture(params=ARCHITECTURES)
def tiny(request) -> LoadedModel:
    """A tiny random-init model per architecture (cached; tests must leave it as they found it)."""
    loaded = _tiny(request.param)
    loaded.model.eval()
    return loaded


@pytest.fixture
def tiny_model():
    """Factory for one architecture's cached tiny model."""
    return _tiny


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def organism() -> LoadedModel:
    """The default organism (~3 min to build on 2 cores the first time, then from the cache); shared, read-only."""
    import moe_defense

    return moe_defense.load_model("organism")
