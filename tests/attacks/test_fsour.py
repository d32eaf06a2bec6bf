"""F-SOUR: fast scoring is exact, fast needs fewer forward passes, and found routes are what replays."""

from __future__ import annotations

import pytest
import torch

from moe_defense.attacks import AttackContext, Fsour, FsourConfig
from moe_defense.attacks.fsour import RouteSearch
from moe_defense.attacks.objective import TargetProblem
from moe_defense.data.prompts import Prompt
from moe_defense.runner.generation import GenerationConfig

PROMPT = Prompt("p0", "how do i bake bread ?", {"target": "Sure, here is"})


ALL_ARCHS = [
    "deepseek_v2",
    "deepseek_v3",
    "gpt_oss",
    "granitemoe",
    "mixtral",
    "olmoe",
    "phimoe",
    "qwen2_moe",
    "qwen3_moe",
]


@pytest.mark.parametrize("model_type", ALL_ARCHS)
@pytest.mark.parametrize("force_decode", [False, True])
def test_prefix_cached_scoring_equals_full_scoring(tiny_model, model_type, force_decode):
    """Scoring from the cropped cache is exact, also after an accepted candidate hands its cache on."""
    loaded = tiny_model(model_type)
    problem = TargetProblem.build(loaded, PROMPT.text, "Sure, here is")
    search = RouteSearch(loaded, problem, FsourConfig(force_decode=force_decode), seed=0)
    layer = search.layers[-1]
    search.route[search.layers[0]][0, 1] = torch.arange(loaded.adapter.top_k)
    for token in (0, 2, search.span - 1):
        candidates = search._with(layer, token, search._uniform(4))
        torch.testing.assert_close(
            search._score_from(token, candidates), search._score_full(candidates), rtol=1e-4, atol=1e-4
        )
    candidates = search._with(layer, 3, search._uniform(4))
    scores = search._score_from(3, candidates)
    search.value = float(scores.min()) - 1.0  # make sure one is accepted
    assert search._accept(candidates, scores) and search._current is not None
    passes = search.cost.forward_calls
    later = search._with(search.layers[0], search.span - 2, search._uniform(3))
    torch.testing.assert_close(
        search._score_from(search.span - 2, later), search._score_full(later), rtol=1e-4, atol=1e-4
    )
    assert search.cost.forward_calls == passes + 2  # the cached scoring needed no prefix forward, then the full check


def test_fast_mode_costs_fewer_forward_passes_and_respects_the_budget(tiny_model):
    loaded = tiny_model("olmoe")
    generation = GenerationConfig(max_new_tokens=4)
    for mode in ("reference", "fast"):
        budgeted = Fsour(FsourConfig(mode=mode, restarts=0, candidates=4, budget=3))
        result = budgeted.run(loaded, [PROMPT], AttackContext(generation=generation))[0]
        assert result.artifact.num_forced_pairs <= 3
        assert result.artifact.model_fingerprint == loaded.fingerprint()
    passes = {
        mode: Fsour(FsourConfig(mode=mode, restarts=0, candidates=8))
        .run(loaded, [PROMPT], AttackContext(generation=generation))[0]
        .extra["forward_calls"]
        for mode in ("reference", "fast")
    }
    assert passes["fast"] * 2 < passes["reference"]


@pytest.mark.parametrize("budget", [2, None])
def test_search_never_lowers_the_objective(tiny_model, budget):
    """Budgeted rounds add one pair, uncapped rounds a chain of pairs: either way the value reported is
    the full-sequence score of the route kept, and never below the unforced one."""
    loaded = tiny_model("qwen3_moe")
    problem = TargetProblem.build(loaded, PROMPT.text, "Sure, here is")
    # max_rows=5 splits every round's 24 candidate rows over several forwards
    search = RouteSearch(loaded, problem, FsourConfig(candidates=4, budget=budget, max_rows=5), seed=1)
    start = search.value
    search.fast()
    assert search.value > start and search.forced_pairs >= 1
    assert search.value == pytest.approx(float(search._score_full(search.route)[0]), abs=1e-4)


@pytest.mark.parametrize("strategy", ["greedy", "prune", "best"])
def test_budget_strategies_respect_the_budget_and_report_their_objective(tiny_model, strategy):
    loaded = tiny_model("mixtral")
    problem = TargetProblem.build(loaded, PROMPT.text, "Sure, here is")
    search = RouteSearch(
        loaded, problem, FsourConfig(candidates=4, budget=3, budget_strategy=strategy, force_decode=True), seed=2
    )
    search.fast()
    assert search.forced_pairs <= 3
    assert search.config.budget == 3  # the uncapped search inside prune restores the budget
    assert search.value == pytest.approx(float(search._score_full(search.route)[0]), abs=1e-4)


def test_best_strategy_is_at_least_as_good_as_greedy(tiny_model):
    loaded = tiny_model("mixtral")
    problem = TargetProblem.build(loaded, PROMPT.text, "Sure, here is")
    values = {}
    for strategy in ("greedy", "best"):
        search = RouteSearch(
            loaded, problem, FsourConfig(candidates=4, budget=4, budget_strategy=strategy, force_decode=True), seed=3
        )
        search.fast()
        values[strategy] = search.value
    assert values["best"] >= values["greedy"] - 1e-6


def test_uniform_weight_search_scores_and_replays_with_uniform_weights(tiny_model):
    """forced_weights="uniform": the search scores uniform-mixed routes, and the artifact replays them so."""
    loaded = tiny_model("mixtral")
    config = FsourConfig(candidates=4, budget=3, restarts=0, forced_weights="uniform")
    attack = Fsour(config)
    result = attack.run(loaded, [PROMPT], AttackContext(generation=GenerationConfig(max_new_tokens=4)))[0]
    assert result.artifact.weights == "uniform" and result.artifact.num_forced_pairs <= 3
    (route,) = attack.interventions(loaded, [result])
    assert route.weights == "uniform"
    problem = TargetProblem.build(loaded, PROMPT.text, "Sure, here is")
    search = RouteSearch(loaded, problem, config, seed=0)
    search.route[search.layers[0]][0, 1] = torch.arange(loaded.adapter.top_k)
    router_weighted = RouteSearch(loaded, problem, config.model_copy(update={"forced_weights": "router"}), seed=0)
    router_weighted.route[search.layers[0]][0, 1] = torch.arange(loaded.adapter.top_k)
    # the same forced set scores differently once the router no longer mixes it
    assert float(search._score_full(search.route)[0]) != float(router_weighted._score_full(router_weighted.route)[0])


def test_target_suffix_lengthens_the_forced_answer_span(tiny_model):
    """A suffix after the prompt's own target: with force_decode the route may cover those positions too."""
    loaded = tiny_model("mixtral")
    config = FsourConfig(candidates=2, budget=1, restarts=0, force_decode=True)
    plain = Fsour(config).search(loaded, PROMPT, seed=0)
    longer = Fsour(config.model_copy(update={"target_suffix": " : step one ,"})).search(loaded, PROMPT, seed=0)
    suffix = loaded.tokenizer(" : step one ,", add_special_tokens=False).input_ids
    assert longer.span == plain.span + len(suffix)
    assert longer.problem.target_ids[: plain.problem.target_ids.numel()].tolist() == plain.problem.target_ids.tolist()
