"""Router-only training of bf16 checkpoints: the frozen weights stay bf16 and bit-identical, the routers train
in fp32 master weights (so their optimizer state is fp32) and are stored back in bf16, and the loss falls."""

from __future__ import annotations

import pytest
import torch

from moe_defense.attacks import FsourConfig
from moe_defense.defenses.objective import LossWeights
from moe_defense.defenses.trainer import HardeningConfig, HardeningTrainer, train_routers
from moe_defense.errors import ConfigError
from moe_defense.models import build_tiny
from moe_defense.models.adapters import ADAPTERS
from moe_defense.models.training import trainer_defaults
from tests.defenses.sequences import INFO, random_sequences


class OptimizerDtypes(HardeningTrainer):
    """Records the dtype of every tensor the optimizer holds state for, once training has stepped."""

    seen: set[torch.dtype] = set()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        for group in self.optimizer.param_groups:
            for parameter in group["params"]:
                OptimizerDtypes.seen.add(parameter.dtype)
                OptimizerDtypes.seen.update(
                    v.dtype for v in self.optimizer.state.get(parameter, {}).values() if v.dim()
                )
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


@pytest.mark.parametrize("model_type", ADAPTERS.names())
def test_bf16_router_only_training_keeps_frozen_weights_and_lowers_the_loss(model_type, tmp_path, monkeypatch):
    loaded = build_tiny(model_type, seed=1, dtype="bfloat16")
    before = {name: t.detach().clone() for name, t in loaded.model.state_dict().items()}
    OptimizerDtypes.seen = set()
    monkeypatch.setattr("moe_defense.defenses.trainer.HardeningTrainer", OptimizerDtypes)
    config = HardeningConfig(
        steps=12,
        batch_size=4,
        learning_rate=5e-2,
        refresh_every=0,
        initial_routes="none",
        save_steps=100,
        loss=LossWeights(adversarial_refusal=0.0, output_kl=0.0, routing_kl=0.0),  # plain refusal CE: must fall
        route_search=FsourConfig(candidates=4, budget=2, restarts=0),
        max_response_tokens=8,
    )
    harmful = random_sequences(4, "harm", 0, varied_lengths=False)
    facts = train_routers(loaded, harmful, random_sequences(4, "benign", 1), config, tmp_path, info=INFO)
    after = loaded.model.state_dict()
    routers = set(loaded.adapter.router_parameters(loaded.model))
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    losses = [entry["loss"] for entry in facts["log"]]
    if loaded.adapter.scoring.startswith("sparsemixer"):
        # PhiMoE's sparsemixer estimator gives this tiny router a zero gradient on most steps (in fp32 too):
        # only routers may move, and some do, but the loss is flat
        assert changed and changed <= routers
    else:
        assert changed == routers  # every router moved; every frozen tensor is bit-identical
        assert losses[-1] < losses[0]
    assert all(t.dtype == torch.bfloat16 for t in after.values() if t.is_floating_point())  # stored as it ships
    assert OptimizerDtypes.seen == {torch.float32}  # master weights and Adam moments in fp32


def test_trainer_precision_flags_follow_the_weights():
    flags = {
        dtype: trainer_defaults(steps=10, batch_size=1, learning_rate=1e-3, seed=0, precision=dtype)
        for dtype in (torch.float32, torch.bfloat16, torch.float16)
    }
    assert (flags[torch.float32]["bf16"], flags[torch.float32]["fp16"]) == (False, False)
    assert (flags[torch.bfloat16]["bf16"], flags[torch.bfloat16]["fp16"]) == (True, False)
    assert (flags[torch.float16]["bf16"], flags[torch.float16]["fp16"]) == (False, True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 trains on CUDA")
def test_float16_training_on_cpu_is_one_clear_error(tmp_path):
    loaded = build_tiny("mixtral", dtype="float16")
    config = HardeningConfig(steps=1, batch_size=1, refresh_every=0, initial_routes="none")
    with pytest.raises(ConfigError, match="float16 weights train only on CUDA"):
        train_routers(loaded, random_sequences(1, "h", 0), random_sequences(1, "b", 1), config, tmp_path, info=INFO)
