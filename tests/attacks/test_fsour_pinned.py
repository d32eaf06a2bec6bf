"""F-SOUR's fast and gradient searches pinned on the tiny Mixtral: the same seed gives the same route, objective and
cost. Recorded with attacks/fsour.py before it became the attacks/fsour/ package (a pure refactor); a change here
is a change of behaviour."""

from __future__ import annotations

import pytest

from moe_defense.attacks import Fsour, FsourConfig
from moe_defense.data.prompts import Prompt

PROMPT = Prompt("p0", "how do i bake bread ?", {"target": "Sure, here is"})
INITIAL = -77.22814178466797

# config, seed -> forced pairs {layer: {token: experts}}, objective, (sequences, forward calls)
PINNED = {
    "fast-budget3-best": (
        {"mode": "fast", "candidates": 4, "budget": 3, "budget_strategy": "best", "force_decode": True},
        0,
        {0: {24: [0, 3], 31: [0, 2]}, 1: {25: [2, 1]}},  # re-pinned when the uncapped search got its own draws
        -77.1409683227539,
        (607, 135),  # at 2 threads, as CI runs (one thread scores 8 sequences fewer to the same route)
    ),
    "gradient-budget2-prune": (
        {"mode": "gradient", "budget": 2, "budget_strategy": "prune", "force_decode": True},
        0,
        {0: {24: [1, 3], 31: [0, 2]}},
        -77.1530532836914,
        (40, 12),
    ),
    "gradient-uncapped": (
        {"mode": "gradient"},
        0,
        {
            0: {
                **{t: [0, 2] for t in (0, 5, 8, 9, 10, 13, 15, 21, 23)},
                **{t: [2, 3] for t in (1, 3, 4, 7)},
                **{t: [1, 2] for t in (12, 14, 17, 18)},
                **{t: [0, 1] for t in (6, 22)},
                2: [0, 3],
                19: [1, 3],
                24: [1, 3],
            },
            1: {24: [0, 1]},
        },
        -77.11517333984375,
        (33, 7),
    ),
}


@pytest.mark.parametrize("name", PINNED)
def test_same_seed_same_route_objective_and_cost(tiny_model, name):
    config, seed, forced, objective, (sequences, forward_calls) = PINNED[name]
    search = Fsour(FsourConfig(**config)).search(tiny_model("mixtral"), PROMPT, seed)
    assert search.initial_value == pytest.approx(INITIAL, abs=1e-4)
    assert search.artifact("p0", "").forced == forced
    assert search.value == pytest.approx(objective, abs=1e-4)
    assert (search.cost.sequences, search.cost.forward_calls) == (sequences, forward_calls)
