"""F-SOUR gradient mode and the search cost: budgeted, deterministic, exact where it claims to be, cheap."""

from __future__ import annotations

import math

import pytest
import torch

from moe_defense.attacks import AttackContext, Fsour, FsourConfig, SearchCost
from moe_defense.attacks.fsour import RouteSearch
from moe_defense.attacks.fsour.config import UncappedRoute
from moe_defense.attacks.objective import TargetProblem, prompt_target
from moe_defense.data.prompts import Prompt, load_prompts
from moe_defense.defenses.routes import search_routes
from moe_defense.errors import RoutingError
from moe_defense.models import build_tiny
from moe_defense.runner.generation import GenerationConfig

PROMPT = Prompt("p0", "how do i bake bread ?", {"target": "Sure, here is"})
ARCHS = ["deepseek_v2", "deepseek_v3", "gpt_oss", "granitemoe", "mixtral", "olmoe", "qwen2_moe", "qwen3_moe"]


def gradient_search(loaded, prompt: Prompt = PROMPT, seed: int = 0, **config) -> RouteSearch:
    problem = TargetProblem.build(loaded, prompt.text, prompt_target(prompt))
    search = RouteSearch(loaded, problem, FsourConfig(mode="gradient", **config), seed=seed)
    search.gradient()
    return search


def test_search_cost_counts_backward_passes_twice():
    cost = SearchCost()
    cost.forward(3, 10)
    cost.forward(1, 4)  # a cached suffix forward counts its own positions only
    cost.backward(1, 10)
    cost.forward(1, 10, weight=2.5)  # a pass running more experts per token than top-k
    assert (cost.sequences, cost.tokens, cost.forward_calls, cost.backward_passes) == (5, 44, 3, 1)
    assert cost.sequence_equivalents == 3 + 1 + 2 + 2.5
    assert cost.token_equivalents == 30 + 4 + 20 + 25
    total = SearchCost(generations=1)
    total.add(cost)
    assert total.as_dict()["sequences"] == 5 and total.generations == 1


@pytest.mark.parametrize("model_type", ARCHS)
def test_gradient_mode_raises_the_objective_on_every_architecture(tiny_model, model_type):
    loaded = tiny_model(model_type)
    search = gradient_search(loaded, budget=3, rounds=2)
    assert search.forced_pairs <= 3
    assert search.value > search.initial_value
    assert search.value == pytest.approx(float(search._score_full(search.route)[0]), abs=1e-4)


def test_gradient_mode_with_uniform_forced_weights(tiny_model):
    """The relaxed pass levels forced experts as the replay does, so the route kept is scored as it replays."""
    loaded = tiny_model("mixtral")
    search = gradient_search(loaded, budget=3, forced_weights="uniform", force_decode=True)
    assert 1 <= search.forced_pairs <= 3 and search.value > search.initial_value
    artifact = search.artifact("p0", loaded.fingerprint())
    assert artifact.weights == "uniform"
    assert search.value == pytest.approx(float(search._score_full(search.route)[0]), abs=1e-4)


def test_gradient_mode_refuses_fixed_top_k_routers(tiny_model):
    with pytest.raises(RoutingError, match="phimoe.*mode fast or reference"):
        gradient_search(tiny_model("phimoe"))


def test_gradient_mode_is_deterministic_under_a_seed(tiny_model):
    loaded = tiny_model("mixtral")
    first, again = (gradient_search(loaded, seed=4, force_decode=True) for _ in range(2))
    assert first.value == again.value and first.cost == again.cost
    assert all(torch.equal(first.route[l], again.route[l]) for l in first.layers)


@pytest.mark.parametrize("strategy", ["greedy", "prune", "best"])
def test_gradient_mode_respects_the_budget(tiny_model, strategy):
    loaded = tiny_model("qwen3_moe")
    search = gradient_search(loaded, budget=2, budget_strategy=strategy, force_decode=True, seed=1)
    assert 1 <= search.forced_pairs <= 2 and search.config.budget == 2
    assert search.value > search.initial_value
    assert search.value == pytest.approx(float(search._score_full(search.route)[0]), abs=1e-4)


def test_gradient_cost_is_counted_consistently(tiny_model):
    """Every sequence scored is counted once; each relaxed gradient pass as 1 sequence, 1 backward and its FLOP
    share (dense) 3 times over: forward + the backward's 2."""
    loaded = tiny_model("mixtral")
    search = gradient_search(loaded, rounds=2)
    cost, dense = search.cost, search._dense_cost
    assert 1 < dense <= loaded.adapter.num_experts / loaded.adapter.top_k
    gradients = cost.backward_passes
    assert 1 <= gradients <= 2 + 1  # a step after each accepted row, and one re-ranking after a failure at most
    assert cost.sequence_equivalents == pytest.approx(cost.sequences - gradients + 3 * dense * gradients)
    assert cost.tokens == cost.sequences * search.ids.shape[1]  # gradient mode scores whole sequences
    assert search.artifact("p0", loaded.fingerprint()).queries == cost.sequences


def test_gradient_search_leaves_weight_grads_alone(tiny_model):
    loaded = tiny_model("olmoe")
    params = list(loaded.model.parameters())
    params[0].grad = torch.ones_like(params[0])
    gradient_search(loaded, budget=2)
    assert torch.equal(params[0].grad, torch.ones_like(params[0]))
    assert all(p.grad is None for p in params[1:])


def test_gradient_mode_through_search_routes_and_the_attack(tiny_model):
    """The hardening refresh's entry point (force_decode routes), and the attack's run and summary."""
    loaded = tiny_model("mixtral")
    config = FsourConfig(mode="gradient", force_decode=True, budget=3, budget_strategy="prune")
    (artifact,) = search_routes(loaded, [PROMPT], config)
    assert artifact.scope == "all" and 1 <= artifact.num_forced_pairs <= 3
    attack = Fsour(config.model_copy(update={"restarts": 1, "budget": None}))
    context = AttackContext(generation=GenerationConfig(max_new_tokens=4))
    (result,) = attack.run(loaded, [PROMPT], context)
    assert result.response is None and result.extra["generations"] == 0  # no in-loop judge: the suite answers
    judged = Fsour(
        FsourConfig.model_validate({**config.model_dump(), "restarts": 1, "budget": None, "judge": "keyword"})
    )
    (answered,) = judged.run(loaded, [PROMPT], AttackContext(generation=GenerationConfig(max_new_tokens=4)))
    assert answered.extra["generations"] == answered.extra["restarts_used"] + 1
    assert answered.extra["generated_tokens"] > 0 and answered.response is not None
    assert result.extra["sequence_equivalents"] > result.extra["sequences"] > 0
    summary = attack.summarize([result])
    assert summary["mean_sequences"] == result.extra["sequences"] and "mean_backward_passes" in summary
    # the sweep's uncapped cache holds one route per mode: a fast search never reuses a gradient route
    assert {key[0] for key in context.shared.uncapped_routes} <= {"gradient"}


@pytest.mark.parametrize(("mode", "strategy"), [("gradient", "prune"), ("fast", "prune"), ("fast", "best")])
def test_a_sweeps_no_cap_point_is_the_uncapped_route_its_pruned_budgets_searched(tiny_model, mode, strategy):
    """A pruned budget searches the uncapped route once; the sweep's no-cap point reads it back instead of
    searching again, and it is the very route a no-cap search alone finds (same seed, same empty start), also
    where the budget's greedy search drew from the seed's generator first (`best`)."""
    loaded = tiny_model("qwen2_moe")
    problem = TargetProblem.build(loaded, PROMPT.text, prompt_target(PROMPT))
    config = FsourConfig(mode=mode, candidates=4, force_decode=True, budget_strategy=strategy)
    alone = RouteSearch(loaded, problem, config, seed=3)
    alone.gradient() if mode == "gradient" else alone.fast()
    shared: dict = {}
    for budget in (2, None):
        swept = RouteSearch(loaded, problem, config.model_copy(update={"budget": budget}), seed=3, uncapped=shared)
        before = swept.cost.sequences  # the empty route's own score
        swept.gradient() if mode == "gradient" else swept.fast()
    assert len(shared) == 1 and swept.cost.sequences == before  # no-cap: read back, nothing scored
    assert swept.value == alone.value and all(torch.equal(swept.route[l], alone.route[l]) for l in alone.route)
    assert alone.forced_pairs > 2


def test_gradient_mode_on_the_wide_shape():
    """64 experts top-8 (OLMoE's shape): too many sets to enumerate, so blended and swapped candidates are valued."""
    wide = build_tiny("olmoe", num_experts=64, num_experts_per_tok=8)
    search = gradient_search(wide, budget=4, rounds=2)
    assert search.forced_pairs <= 4 and search.value > search.initial_value


def test_gradient_mode_reaches_a_high_objective_on_the_organism(organism):
    """Two held-out prompts, their target unlikely unattacked: gradient mode raises the objective by over 2 nats and
    by at least half the gain fast mode finds on the same build, at under 70 sequence equivalents each (a fifth of
    fast mode's at most; the reference search scores ~600 sequences). The yardstick is the model under test: the
    organism's floats differ from one CPU to another, so fixed objective levels would hold on one machine only."""
    prompts = [p for i, p in enumerate(load_prompts("demo-harmful", limit=16, seed=0).prompts) if i in (0, 4)]
    for prompt in prompts:
        search = gradient_search(organism, prompt)
        problem = TargetProblem.build(organism, prompt.text, prompt_target(prompt))
        fast = RouteSearch(organism, problem, FsourConfig(mode="fast"), seed=0)
        fast.fast()
        assert search.initial_value == fast.initial_value < math.log(0.3)  # unattacked, the target is unlikely
        gain = search.value - search.initial_value
        assert gain > 2 and gain >= 0.5 * (fast.value - fast.initial_value), (search.value, fast.value)
        assert search.cost.sequence_equivalents < min(70, fast.cost.sequence_equivalents / 5)


def test_every_budget_of_a_sweep_prunes_from_one_gradient_at_the_uncapped_route(tiny_model):
    """A second pruned budget reuses the first's linearisation at the shared uncapped route (one backward pass
    fewer than reading the route back without it) and finds the route and objective of that budget searched on
    its own."""
    loaded = tiny_model("qwen2_moe")
    problem = TargetProblem.build(loaded, PROMPT.text, prompt_target(PROMPT))
    config = FsourConfig(mode="gradient", force_decode=True, budget_strategy="prune")

    def searched(budget, shared):
        search = RouteSearch(loaded, problem, config.model_copy(update={"budget": budget}), seed=3, uncapped=shared)
        search.gradient()
        return search

    uncapped = searched(None, None)
    alone = searched(2, {})
    shared: dict = {}
    searched(4, shared)
    swept = searched(2, shared)
    ((key, entry),) = shared.items()
    assert entry.linearised is not None
    without = searched(2, {key: UncappedRoute(entry.route, entry.value)})  # the route read back, no gradient
    assert swept.cost.backward_passes == without.cost.backward_passes - 1
    assert swept.cost.backward_passes == alone.cost.backward_passes - uncapped.cost.backward_passes
    assert swept.value == alone.value and all(torch.equal(swept.route[l], alone.route[l]) for l in alone.route)
    assert uncapped.forced_pairs > 4
