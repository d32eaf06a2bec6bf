"""Shared fixtures: tiny models of every supported architecture, built once per test session, and a tiny Suite."""

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


@pytest.fixture
def tiny_suite():
    """Factory for a keyword-judged `Suite` over `harmful` with one benign prompt serving as benign and
    over-refusal set: what a test needs to run suite phases on a tiny model in seconds."""
    from moe_defense.data import Prompt, PromptSet
    from moe_defense.judges.keyword import KeywordJudge
    from moe_defense.runner.generation import GenerationConfig
    from moe_defense.runner.process import process_info
    from moe_defense.verify import Suite

    def build(specs, harmful: PromptSet, *, max_new_tokens: int = 2, **options) -> Suite:
        benign = PromptSet("b", "test", [Prompt("b0", "what is rust ?", {"label": "safe"})])
        return Suite(
            specs=specs,
            harmful=harmful,
            benign=benign,
            over_refusal=benign,
            judges=[KeywordJudge()],
            generation=GenerationConfig(max_new_tokens=max_new_tokens),
            seed=0,
            info=process_info(),
            progress=False,
            **options,
        )

    return build


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
