"""Router training under sampled deployment changes: which changes train, the same change on both models of
the KL, and a training run that moves only routers."""

from __future__ import annotations

import random

import pytest
import torch

from moe_defense.attacks.base import AttackSpec
from moe_defense.data.prompts import Prompt
from moe_defense.defenses.deployment_changes import deployment_changes
from moe_defense.defenses.examples import collate
from moe_defense.defenses.objective import HardeningObjective, LossWeights, Reference
from moe_defense.defenses.trainer import HardeningConfig, train_routers
from moe_defense.models import build_tiny
from moe_defense.runner.generation import GenerationConfig
from tests.defenses.sequences import INFO, random_sequences

pytestmark = pytest.mark.timeout(300)

CHANGES = [
    AttackSpec(name="top-k", sweep={"k": [1, 3]}),
    AttackSpec(name="expert-prune", args={"n": 2, "criterion": "reap"}),
    AttackSpec(name="capacity-drop", args={"factor": 0.5}),
    AttackSpec(name="router-noise", args={"sigma": 2.0}),
    AttackSpec(name="quantize", args={"bits": 4}),
]
TERMS = LossWeights(deployment_refusal=1.0, deployment_output_kl=1.0)
CALIBRATION = [Prompt(f"c{i}", text, {}) for i, text in enumerate(["what is rust ?", "name a colour .", "hi there"])]


@pytest.mark.parametrize(
    ("changes", "loss", "message"),
    [
        ([AttackSpec(name="fsour")], TERMS, "not a deployment change"),
        ([], TERMS, "set deployment_changes"),
        (CHANGES, LossWeights(), "give one of those terms a weight"),
    ],
)
def test_only_trainable_deployment_changes_with_their_terms_validate(changes, loss, message):
    with pytest.raises(ValueError, match=message):
        HardeningConfig(deployment_changes=changes, loss=loss)


def test_every_sweep_point_is_one_change_with_its_choice_made_once():
    loaded = build_tiny("mixtral", seed=5)
    changes = deployment_changes(loaded, CHANGES, CALIBRATION, GenerationConfig(), INFO)
    assert [c.label for c in changes] == [
        "top-k@1",
        "top-k@3",
        "expert-prune-reap@2",
        "capacity-drop@0.5",
        "router-noise@2.0",
        "quantize-both@int4",
    ]
    pruned = changes[2].choice.extra["pruned"]
    assert set(map(int, pruned)) == set(loaded.adapter.moe_layers()) and all(len(e) == 2 for e in pruned.values())


@pytest.mark.parametrize("change", range(6))  # every change of CHANGES (top-k sweeps two)
def test_the_reference_meets_the_same_change_so_an_untrained_model_has_zero_kl_and_a_changed_output(change):
    """At step 0 the model is the original: under the same change (the same noise draws too) the KL is 0,
    while the change itself moves the outputs (so a zero is not a change that did nothing)."""
    loaded = build_tiny("mixtral", seed=6)
    changes = deployment_changes(loaded, CHANGES, CALIBRATION, GenerationConfig(), INFO)
    batch = collate(random_sequences(4, "benign", 1), loaded.tokenizer.pad_token_id)
    objective = HardeningObjective(loaded, TERMS, Reference(loaded, "routers"), changes=[changes[change]])
    terms = objective._under_deployment(loaded.model, batch, batch, changes[change], random.Random(0))
    assert float(terms["deployment_output_kl"].detach()) == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(terms["deployment_refusal"]) and terms["deployment_refusal"].requires_grad
    with torch.no_grad():
        plain = loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with changes[change].applied(loaded, 4, random.Random(0)):
            changed = loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(plain, changed)


@pytest.mark.parametrize("specs", [CHANGES, CHANGES[-1:]], ids=["all", "quantize"])
def test_training_under_deployment_changes_logs_both_terms_and_moves_only_routers(tmp_path, specs):
    """Under quantization alone too: its straight-through gradient moves the routers (a rounding with no
    gradient would leave them as they were) and nothing else, the experts it rounds included."""
    loaded = build_tiny("mixtral", seed=7)
    before = {n: t.clone() for n, t in loaded.model.state_dict().items()}
    config = HardeningConfig(
        steps=2,
        batch_size=4,
        save_steps=100,
        max_response_tokens=8,
        refresh_every=0,
        initial_routes="none",
        loss=TERMS.model_copy(update={"adversarial_refusal": 0.0}),
        deployment_changes=specs,
    )
    changes = deployment_changes(loaded, specs, CALIBRATION, GenerationConfig(), INFO)
    facts = train_routers(
        loaded,
        random_sequences(4, "harm", 0),
        random_sequences(4, "benign", 1),
        config,
        tmp_path,
        info=INFO,
        changes=changes,
    )
    terms = {key for entry in facts["log"] for key in entry if key.startswith("term/")}
    assert {"term/deployment_refusal", "term/deployment_output_kl"} <= terms
    after = loaded.model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == set(loaded.adapter.router_tensors(loaded.model))
