"""The router-only methods of issue 13: recovery after a forced opening, spread refusal, the perturbed
utility KL and the budget curriculum: each switchable, each computed, each doing what it says."""

from __future__ import annotations

import pytest
import torch

from moe_defense.attacks.fsour import FsourConfig
from moe_defense.defenses.examples import IGNORE, collate, recovery_sequences
from moe_defense.defenses.objective import LossWeights, random_forcing
from moe_defense.defenses.routes import RoutePool
from moe_defense.defenses.trainer import HardeningConfig, RouteRefresh, train_routers
from moe_defense.models import build_tiny
from tests.defenses.sequences import INFO, random_sequences


def test_recovery_sequence_puts_the_target_before_the_refusal_and_trains_only_the_refusal():
    loaded = build_tiny("mixtral", seed=1)
    refusal = random_sequences(1, "harm", 0, target="Sure, here is")[0]
    recovery = recovery_sequences(loaded, [refusal])[0]
    target = recovery.response_ids[: recovery.unlabelled]
    assert recovery.unlabelled > 0 and torch.equal(recovery.prompt_ids, refusal.prompt_ids)
    assert torch.equal(recovery.response_ids[recovery.unlabelled :], refusal.response_ids)
    labels = recovery.labels
    assert (labels[: refusal.prompt_length + target.numel()] == IGNORE).all()  # prompt and target carry no loss
    assert torch.equal(labels[refusal.prompt_length + target.numel() :], refusal.response_ids)


def test_random_forcing_forces_the_asked_pairs_within_prompt_and_opening():
    loaded = build_tiny("olmoe", seed=2)
    batch = collate(random_sequences(3, "harm", 1, target="Sure, here is"), loaded.tokenizer.pad_token_id)
    forcing = random_forcing(loaded, batch, pairs=5, generator=torch.Generator().manual_seed(0))
    forced = torch.stack([(route >= 0).all(-1) for route in forcing.routes.values()])  # (layers, B, T)
    assert forced.sum(dim=(0, 2)).tolist() == [5, 5, 5]
    lengths = batch["attention_mask"].sum(-1)
    for row in range(3):
        assert not forced[:, row, int(lengths[row]) :].any()  # never on padding
    forcing.bind(loaded.adapter)  # valid: top-k distinct experts per forced pair
    again = random_forcing(loaded, batch, pairs=5, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(forcing.routes[layer], again.routes[layer]) for layer in forcing.routes)  # seeded


def test_new_terms_are_computed_and_train_only_routers(tmp_path):
    loaded = build_tiny("mixtral", seed=3)
    before = {n: t.clone() for n, t in loaded.model.state_dict().items()}
    loss = LossWeights(recovery=1, spread_refusal=1, perturbed_output_kl=1, adversarial_refusal=1)
    config = HardeningConfig(
        steps=2,
        batch_size=4,
        refresh_every=1,
        refresh_prompts=2,
        save_steps=100,
        max_response_tokens=8,
        spread_pairs=4,
        loss=loss,
        route_search=FsourConfig(candidates=4, force_decode=True, budget=2, restarts=0),
    )
    facts = train_routers(
        loaded,
        random_sequences(4, "harm", 0, target="Sure, here is"),
        random_sequences(4, "benign", 1, target="Sure, here is"),
        config,
        tmp_path,
        info=INFO,
    )
    terms = {key for entry in facts["log"] for key in entry if key.startswith("term/")}
    assert {"term/recovery", "term/spread_refusal", "term/perturbed_output_kl"} <= terms
    assert all(entry["term/perturbed_output_kl"] >= 0 for entry in facts["log"])
    assert facts["refreshes"] == 1 and facts["route_budgets"] == [2, 2]  # the search at step 0, then one refresh
    after = loaded.model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == set(loaded.adapter.router_tensors(loaded.model))


def test_curriculum_walks_its_budgets_in_order_over_the_refreshes():
    loaded = build_tiny("mixtral", seed=4)
    search = FsourConfig(budget=8)
    refresh = RouteRefresh(loaded, [], RoutePool(1), search, 10, 1, INFO, curriculum=[2, 4, 8, None], total_refreshes=7)
    assert [refresh.budget(i) for i in range(8)] == [2, 2, 4, 4, 8, 8, None, None]
    assert refresh.schedule(initial=True) == [2, 2, 4, 4, 8, 8, None, None]  # what training.json reports
    assert refresh.schedule(initial=False) == [2, 4, 4, 8, 8, None, None]
    plain = RouteRefresh(loaded, [], RoutePool(1), search, 10, 1, INFO)
    assert plain.budget(5) == 8  # no curriculum: the training budget
    assert plain.schedule(initial=True) == [8]  # no refresh within the training: the step-0 search only


def test_a_curriculum_without_refreshes_is_refused_since_it_would_stay_on_its_first_budget():
    with pytest.raises(ValueError, match="set refresh_every > 0"):
        HardeningConfig(budget_curriculum=[2, 4, None], refresh_every=0)
    assert HardeningConfig(budget_curriculum=[2, 4, None], refresh_every=5).budget_curriculum == [2, 4, None]
