"""RASA: the risk difference of a forced route, the experts it selects, the routing-consistency term, and a
run that repairs only the detected experts and the routers, and resumes phase by phase."""

from __future__ import annotations

import json
import random

import pytest
import torch

from moe_defense.attacks.artifacts import RouteArtifact
from moe_defense.attacks.fsour import FsourConfig
from moe_defense.data import Prompt
from moe_defense.defenses import DefenseContext, rasa
from moe_defense.defenses.examples import collate
from moe_defense.defenses.objective import HardeningObjective, HarmfulBatch, LossWeights, Reference
from moe_defense.defenses.rasa import Rasa, RasaConfig, risk_differences, select_unsafe_experts
from moe_defense.defenses.routes import RoutePool
from moe_defense.errors import ConfigError
from moe_defense.judges import KeywordJudge
from moe_defense.models import build_tiny
from moe_defense.models.params import keep_only_experts, set_trainable
from moe_defense.runner.generation import GenerationConfig
from tests.defenses.sequences import INFO, random_sequences

pytestmark = pytest.mark.timeout(300)


def _forcing(loaded, sequences, layer: int, experts: list[int]) -> list[RouteArtifact]:
    """Routes forcing `experts` at every prompt token of MoE `layer`."""
    fingerprint = loaded.fingerprint()
    return [
        RouteArtifact(
            fingerprint,
            s.prompt.id,
            "test",
            s.prompt_length,
            forced={layer: dict.fromkeys(range(s.prompt_length), experts)},
        )
        for s in sequences
    ]


def test_a_forced_route_raises_the_risk_of_its_experts_and_leaves_earlier_layers_at_zero():
    loaded = build_tiny("mixtral", seed=3)
    layers = loaded.adapter.moe_layers()
    sequences = random_sequences(6, "h", 0)
    risk = risk_differences(loaded, sequences, _forcing(loaded, sequences, layers[1], [0, 1]), batch_size=4)
    assert risk.shape == (len(layers), loaded.adapter.num_experts)
    assert torch.equal(risk[0], torch.zeros_like(risk[0]))  # routing before the forced layer is unchanged
    assert float(risk[1, :2].min()) > 0 and float(risk[1, 2:].max()) <= 0  # at the forced layer its router is too
    # each token runs top_k experts in both runs, so the rates of a layer sum to the same: differences sum to 0
    assert torch.allclose(risk.sum(-1), torch.zeros(len(layers)), atol=1e-6)


def test_the_highest_risks_above_the_threshold_are_selected_per_layer():
    risk = torch.tensor([[0.3, -0.1, 0.0], [0.05, 0.2, 0.4]])
    assert select_unsafe_experts(risk, [2, 5], 3, 0.0) == {2: [0], 5: [1, 2]}
    assert select_unsafe_experts(risk, [2, 5], 10, 0.1) == {2: [0], 5: [1, 2]}
    assert select_unsafe_experts(risk, [2, 5], 1, 0.0) == {5: [2]}


def test_only_the_kept_experts_of_each_layer_move():
    loaded = build_tiny("mixtral", seed=4)
    model = loaded.model
    set_trainable(model, "experts")
    layers = loaded.adapter.moe_layers()
    keep = {layers[0]: [1, 3]}  # the other layers keep none
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    handles = keep_only_experts(model, keep)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0)
    ids = torch.randint(3, 200, (4, 10), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    for handle in handles:
        handle.remove()
    experts = loaded.adapter.experts(model)
    for layer in layers:
        for name, parameter in experts[layer].named_parameters(recurse=False):
            full = next(n for n, p in model.named_parameters() if p is parameter)
            moved = [e for e in range(parameter.shape[0]) if not torch.equal(parameter[e], before[full][e])]
            assert moved == keep.get(layer, []), (layer, name)


def test_routing_consistency_is_positive_under_a_route_and_trains_only_routers():
    loaded = build_tiny("mixtral", seed=5)
    set_trainable(loaded.model, "routers")
    sequences = random_sequences(4, "h", 1)
    routes = _forcing(loaded, sequences, loaded.adapter.moe_layers()[0], [2, 3])
    tensors = collate(sequences, loaded.tokenizer.pad_token_id)
    weights = LossWeights(**{**dict.fromkeys(LossWeights.model_fields, 0.0), "routing_consistency": 1.0})
    objective = HardeningObjective(loaded, weights, Reference(loaded, "routers"))
    batch = HarmfulBatch(tensors, routes, RoutePool(1).interventions(loaded, routes, tensors["prompt_lengths"]))
    terms = objective(loaded.model, batch, {}, random.Random(0))
    assert float(terms["routing_consistency"].detach()) > 0 and set(terms) == {"routing_consistency", "loss"}
    terms["loss"].backward()
    routers = loaded.adapter.router_parameters(loaded.model)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in routers.values())
    assert all(p.grad is None for n, p in loaded.model.named_parameters() if n not in routers)


def _context(tmp_path, resume: bool = False) -> DefenseContext:
    return DefenseContext(
        harmful_train=[
            Prompt(f"h{i}", text, {"target": "Sure"})
            for i, text in enumerate(["pick a lock", "hack a bank", "make a bomb"])
        ],
        benign_train=[Prompt("b0", "bake bread", {})],
        judge=KeywordJudge(),
        generation=GenerationConfig(max_new_tokens=4),
        budget=2,
        route_search=None,
        seed=0,
        out=tmp_path,
        info=INFO,
        resume=resume,
    )


SMALL = RasaConfig(
    unsafe_experts=3,
    rounds=2,
    expert_steps=2,
    router_steps=2,
    expert_learning_rate=0.05,
    router_learning_rate=0.05,
    batch_size=2,
    fit_prompts=3,
    route_search=FsourConfig(candidates=2, restarts=0, budget=2),
    max_response_tokens=4,
    refusal_fallback="I cannot help with that.",
)


def _routers(loaded) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in loaded.adapter.router_parameters(loaded.model).items()}


def _changed_experts(loaded, original) -> dict[int, list[int]]:
    changed = {}
    for layer, module in loaded.adapter.experts(loaded.model).items():
        for parameter, before in zip(module.parameters(recurse=False), original[layer], strict=True):
            rows = [e for e in range(parameter.shape[0]) if not torch.equal(parameter[e], before[e])]
            if rows:
                changed.setdefault(layer, set()).update(rows)
    return {layer: sorted(rows) for layer, rows in changed.items()}


def test_rasa_changes_only_the_detected_experts_and_the_routers_and_resumes_each_finished_phase(tmp_path, monkeypatch):
    loaded = build_tiny("mixtral", seed=6)
    experts = loaded.adapter.experts(loaded.model)
    original = {layer: [p.detach().clone() for p in m.parameters(recurse=False)] for layer, m in experts.items()}
    routers_before = _routers(loaded)
    defended = Rasa(SMALL).apply(loaded, _context(tmp_path))
    detected = json.loads((tmp_path / "train" / rasa.RASA_EXPERTS).read_text())["unsafe_experts"]
    assert 1 <= sum(map(len, detected.values())) <= 3
    assert _changed_experts(defended.loaded, original) == {int(l): e for l, e in detected.items()}
    routers_after = _routers(defended.loaded)
    assert any(not torch.equal(routers_after[n], routers_before[n]) for n in routers_before)
    phases = [(p["round"], p["phase"]) for p in defended.facts["training"]["phases"]]
    assert phases == [(1, "experts"), (1, "routers"), (2, "experts"), (2, "routers")]
    assert defended.facts["other_params_changed"] > 0 and defended.facts["router_params_changed"] > 0

    # interrupted before the last phase finished: a new process resumes; the three finished phases are read back
    (tmp_path / "train" / "train.json").unlink()
    (tmp_path / "train" / "round2-routers" / rasa.PHASE_DONE).unlink()
    calls = []
    real = rasa.train_routers
    monkeypatch.setattr(rasa, "train_routers", lambda *a, **k: calls.append(a[3].trainable) or real(*a, **k))
    monkeypatch.setattr(rasa, "search_routes", lambda *a, **k: pytest.fail("the jailbreaks are read back"))
    resumed = Rasa(SMALL).apply(build_tiny("mixtral", seed=6), _context(tmp_path, resume=True))
    assert calls == ["routers"]
    state, again = defended.loaded.model.state_dict(), resumed.loaded.model.state_dict()
    assert all(torch.equal(state[n], again[n]) for n in state)


def test_rasa_says_so_when_no_expert_is_over_used_enough(tmp_path):
    config = SMALL.model_copy(update={"rounds": 1, "min_risk_diff": 1.0})  # a rate difference never exceeds 1
    with pytest.raises(ConfigError, match="no expert's risk difference exceeds min_risk_diff=1.0"):
        Rasa(config).apply(build_tiny("mixtral", seed=6), _context(tmp_path))
