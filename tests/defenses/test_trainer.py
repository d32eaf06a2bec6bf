"""Router-only training: only router tensors change, every term contributes, refresh leaves no gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from moe_defense.attacks.fsour import FsourConfig
from moe_defense.data.prompts import Prompt
from moe_defense.defenses.checkpoint import TRAINABLE_STATE, check_output_location, tensor_diff, tensor_digests
from moe_defense.defenses.examples import IGNORE, collate
from moe_defense.defenses.objective import LossWeights
from moe_defense.defenses.patch import RouterPatch, apply_router_patch, save_router_patch
from moe_defense.defenses.routes import RoutePool, search_routes
from moe_defense.defenses.trainer import HardeningConfig, train_routers
from moe_defense.errors import ConfigError
from moe_defense.models import build_tiny
from moe_defense.models.params import set_trainable
from tests.defenses.sequences import INFO, random_sequences


def _config(**overrides) -> HardeningConfig:
    search = FsourConfig(candidates=4, force_decode=True, budget=2, restarts=0)
    settings = dict(
        steps=3,
        batch_size=4,
        refresh_every=1,
        refresh_prompts=2,
        save_steps=100,
        route_search=search,
        max_response_tokens=8,
    )
    return HardeningConfig(**{**settings, **overrides})


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_router_only_training_changes_router_tensors_and_nothing_else(tmp_path):
    loaded = build_tiny("mixtral", seed=1)
    before = _state(loaded.model)
    facts = train_routers(
        loaded, random_sequences(6, "harm", 0), random_sequences(6, "benign", 1), _config(), tmp_path, info=INFO
    )
    routers = set(loaded.adapter.router_tensors(loaded.model))
    after = loaded.model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == routers  # every router moved, every other tensor is bit-identical
    assert facts["steps"] == 3 and facts["refreshes"] == 2  # refreshed after steps 1 and 2, not after the last
    assert facts["routes_in_pool"] >= 6
    terms = {key for entry in facts["log"] for key in entry if key.startswith("term/")}
    assert terms == {"term/adversarial_refusal", "term/refusal", "term/output_kl", "term/routing_kl"}
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in facts["log"])


def test_all_parameter_scope_changes_more_than_routers(tmp_path):
    loaded = build_tiny("qwen2_moe", seed=1)
    before = _state(loaded.model)
    train_routers(
        loaded,
        random_sequences(4, "harm", 0),
        random_sequences(4, "benign", 1),
        _config(trainable="all", refresh_every=0),
        tmp_path,
        info=INFO,
    )
    after = loaded.model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed - set(loaded.adapter.router_tensors(loaded.model))  # experts, attention, ... moved too


def test_switched_off_terms_are_not_computed(tmp_path):
    loaded = build_tiny("mixtral", seed=2)
    loss = LossWeights(adversarial_refusal=0, refusal=1, output_kl=0, routing_kl=0, route_repulsion=0)
    facts = train_routers(
        loaded,
        random_sequences(4, "harm", 0),
        random_sequences(4, "benign", 1),
        _config(loss=loss),
        tmp_path,
        info=INFO,
    )
    terms = {key for entry in facts["log"] for key in entry if key.startswith("term/")}
    assert terms == {"term/refusal"}
    assert facts["routes_in_pool"] == 0 and facts["refreshes"] == 0  # no adversarial term: no search at all


def test_route_repulsion_and_mask_terms_have_gradients(tmp_path):
    loaded = build_tiny("olmoe", seed=3)
    loss = LossWeights(adversarial_refusal=1, mask_refusal=1, refusal=0, route_repulsion=1, output_kl=0, routing_kl=1)
    facts = train_routers(
        loaded,
        random_sequences(4, "harm", 0),
        random_sequences(4, "benign", 1),
        _config(loss=loss, refresh_every=0),
        tmp_path,
        info=INFO,
        mask_layers=loaded.adapter.moe_layers()[:1],
    )
    terms = {key for entry in facts["log"] for key in entry if key.startswith("term/")}
    assert {"term/mask_refusal", "term/route_repulsion", "term/routing_kl"} <= terms


def test_refresh_search_leaves_no_weight_gradients():
    loaded = build_tiny("mixtral", seed=4)
    set_trainable(loaded.model, "routers")
    prompts = [Prompt(id="p", text="tell me", metadata={"target": "Sure"})]
    found = search_routes(loaded, prompts, FsourConfig(candidates=4, budget=2, restarts=0))
    assert len(found) == 1 and found[0].num_forced_pairs <= 2
    assert all(p.grad is None for p in loaded.model.parameters())  # a trainer's gradients stay untouched


def test_route_pool_keeps_newest_first_and_persists(tmp_path):
    loaded = build_tiny("mixtral", seed=5)
    prompts = [Prompt(id=f"p{i}", text=f"request {i}", metadata={"target": "Sure"}) for i in range(2)]
    routes = search_routes(loaded, prompts, FsourConfig(candidates=4, budget=1, restarts=0))
    pool = RoutePool(per_prompt=1, path=tmp_path / "pool.jsonl")
    pool.add(routes)
    pool.add(routes[:1])
    assert len(pool) == 2
    assert len(RoutePool(per_prompt=4, path=tmp_path / "pool.jsonl")) == 3  # reloaded from disk for --resume


def test_collate_right_pads_and_masks_prompt():
    batch = collate(random_sequences(2, "x", 0), pad_id=0)
    assert batch["input_ids"].shape == batch["labels"].shape
    first_length = int(batch["prompt_lengths"][0])
    assert (batch["labels"][0, :first_length] == IGNORE).all() and (batch["labels"][0, first_length] != IGNORE)
    assert batch["attention_mask"][0, 0] == 1  # real tokens start at position 0


def test_router_patch_round_trip_and_tensor_diff(tmp_path):
    base = build_tiny("deepseek_v3", seed=6)
    hardened = copy.deepcopy(base)
    digests = tensor_digests(hardened.model)
    originals = {n: p.detach().clone() for n, p in hardened.adapter.router_parameters(hardened.model).items()}
    with torch.no_grad():
        for parameter in hardened.adapter.router_parameters(hardened.model).values():
            parameter.add_(0.5)
    diff = tensor_diff(hardened.model, digests, originals, set(hardened.adapter.router_tensors(hardened.model)))
    assert diff["router_params_changed"] == len(originals) and diff["other_params_changed"] == 0
    assert all(row["max_abs_change"] == pytest.approx(0.5) for row in diff["changed"])
    whole = sum(t.numel() for t in originals.values())
    assert diff["changed_elements"] == diff["changed_tensor_elements"] == whole
    name = next(iter(originals))
    with torch.no_grad():  # a slice of one tensor back to its original: counted per element, not per tensor
        hardened.model.get_parameter(name)[0].copy_(originals[name][0])
    diff = tensor_diff(hardened.model, digests, originals, set(hardened.adapter.router_tensors(hardened.model)))
    assert diff["changed_tensor_elements"] == whole
    assert diff["changed_elements"] == whole - originals[name][0].numel()
    save_router_patch(hardened, tmp_path / "patch.safetensors", base.fingerprint())
    apply_router_patch(base, RouterPatch.read(tmp_path / "patch.safetensors"))
    assert base.fingerprint() == hardened.fingerprint()


def test_hardened_checkpoint_never_overwrites_the_input(tmp_path):
    source = tmp_path / "model"
    source.mkdir()
    with pytest.raises(ConfigError, match="input checkpoint"):
        check_output_location(source / "hardened_model", str(source))
    check_output_location(tmp_path / "elsewhere", str(source))


def test_training_checkpoints_hold_only_the_trained_tensors(tmp_path):
    loaded = build_tiny("qwen3_moe", seed=1)
    facts = train_routers(
        loaded,
        random_sequences(4, "harm", 0),
        random_sequences(4, "benign", 1),
        _config(save_steps=2, refresh_every=0),
        tmp_path,
        info=INFO,
    )
    checkpoint = tmp_path / "trainer" / "checkpoint-3"
    files = {path.name for path in checkpoint.iterdir()}
    assert TRAINABLE_STATE in files and "optimizer.pt" in files and "model.safetensors" not in files
    routers = loaded.adapter.router_parameters(loaded.model)
    assert set(load_file(str(checkpoint / TRAINABLE_STATE))) == set(routers)
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert len(optimizer["state"]) == len(routers)  # AdamW moments of the routers alone
    assert 0 < facts["checkpoint_bytes"] < facts["model_bytes"] / 4  # routers + their Adam state, not the model
