"""Route guards revert banned or implausible executed expert sets to the router's own choice."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from moe_defense.attacks.artifacts import RouteArtifact
from moe_defense.data.prompts import Prompt
from moe_defense.defenses.route_disabling import RouteDisablingConfig, RouteGuard, benign_set_counts, fit_route_guard
from moe_defense.errors import RoutingError
from moe_defense.routing import ForcedRoute, intervene, record_routing
from moe_defense.routing.guard import guarded

IDS = torch.randint(3, 200, (1, 6), generator=torch.Generator().manual_seed(0))


def _executed(loaded, *contexts) -> tuple[list[list[int]], torch.Tensor]:
    from contextlib import ExitStack

    with ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        recorder = stack.enter_context(record_routing(loaded))
        logits = loaded.model(input_ids=IDS).logits
    return recorder.trace()[loaded.adapter.moe_layers()[0]].indices[0].sort(-1).values.tolist(), logits


@pytest.mark.parametrize("model_type", ["mixtral", "qwen2_moe", "deepseek_v3"])
def test_banned_forced_set_reverts_to_the_router_choice_and_natural_routing_is_untouched(tiny_model, model_type):
    loaded = tiny_model(model_type)
    layer = loaded.adapter.moe_layers()[0]
    k = loaded.adapter.top_k
    own, plain_logits = _executed(loaded)
    unusual = next(
        s for s in (list(range(i, i + k)) for i in range(loaded.adapter.num_experts - k + 1)) if s not in own
    )
    forced = ForcedRoute({layer: torch.tensor([[unusual] * IDS.shape[1]])}, scope="all")
    attacked, _ = _executed(loaded, intervene(loaded, forced))
    assert all(row == unusual for row in attacked)
    guard = RouteGuard({layer: [unusual]})
    defended, _ = _executed(loaded, guarded(loaded, guard), intervene(loaded, forced))
    assert defended == own  # every forced token fell back to the router's own choice
    _, guarded_logits = _executed(loaded, guarded(loaded, guard))
    assert torch.equal(guarded_logits, plain_logits)  # no attack: the guard changes nothing


def test_rank_limit_reverts_experts_far_below_the_router_preference(tiny_model):
    loaded = tiny_model("olmoe")
    layer = loaded.adapter.moe_layers()[0]
    with record_routing(loaded) as recorder:
        loaded.model(input_ids=IDS)
    worst = (
        recorder.trace()[layer].logits[0].argsort(-1)[:, : loaded.adapter.top_k]
    )  # each token's least preferred experts
    forced = ForcedRoute({layer: worst[None]}, scope="all")
    own, _ = _executed(loaded)
    defended, _ = _executed(
        loaded, guarded(loaded, RouteGuard(max_rank=loaded.adapter.top_k)), intervene(loaded, forced)
    )
    assert defended == own


def test_guard_rejects_bad_settings(tiny_model):
    loaded = tiny_model("mixtral")
    with pytest.raises(RoutingError, match="experts"):
        with guarded(loaded, RouteGuard({0: [[0, 99]]})):
            pass
    with pytest.raises(RoutingError, match="max_rank"):
        with guarded(loaded, RouteGuard(max_rank=1)):
            pass


def test_fit_bans_the_sets_unsafe_routes_overuse(tiny_model):
    loaded = tiny_model("mixtral")
    artifacts = [
        RouteArtifact("f", f"p{i}", "fsour", 4, "all", forced={0: {0: [3, 1], 1: [1, 3], 2: [0, 1]}}) for i in range(3)
    ]
    # (0, 1) is as common on benign prompts as anything; (1, 3) never appears there: it is the one to ban
    guard, facts = fit_route_guard(
        artifacts, {0: Counter({(0, 1): 50, (2, 3): 50})}, RouteDisablingConfig(sets_per_layer=1, min_count=2)
    )
    assert facts["banned"] == {"0": [[1, 3]]}
    assert guard.revert(0, torch.zeros(2, 4), torch.tensor([[3, 1], [0, 2]])).tolist() == [True, False]
    counts = benign_set_counts(loaded, [Prompt(id="b", text="bake bread")])
    tokens = len(
        loaded.tokenizer(
            loaded.tokenizer.apply_chat_template(
                [{"role": "user", "content": "bake bread"}], tokenize=False, add_generation_prompt=True
            ),
            add_special_tokens=False,
        ).input_ids
    )
    assert sum(counts[0].values()) == tokens  # one executed set per prompt token
