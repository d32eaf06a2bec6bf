"""routers+expert-lora: routers train fully, experts through PEFT LoRA factors merged at the end; the
adapter is saved in PEFT format and a killed training resumes to the same tensors."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from moe_defense.attacks.fsour import FsourConfig
from moe_defense.defenses.lora import EXPERT_LORA, expert_targets
from moe_defense.defenses.trainer import HardeningConfig, train_routers
from moe_defense.models import build_tiny
from tests.defenses.sequences import INFO, random_sequences


def _config(**changes) -> HardeningConfig:
    settings = dict(
        trainable="routers+expert-lora",
        lora_rank=2,
        steps=4,
        batch_size=2,
        learning_rate=0.05,
        refresh_every=0,
        save_steps=2,
        max_response_tokens=8,
        route_search=FsourConfig(candidates=2, force_decode=True, budget=1, restarts=0),
    )
    return HardeningConfig(**{**settings, **changes})


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe", "deepseek_v3"])
def test_expert_lora_changes_routers_and_experts_only_and_saves_a_peft_adapter(model_type, tmp_path):
    loaded = build_tiny(model_type, seed=1)
    before = {n: t.clone() for n, t in loaded.model.state_dict().items()}
    facts = train_routers(
        loaded,
        random_sequences(4, "harm", 0, varied_lengths=False),
        random_sequences(4, "benign", 1, varied_lengths=False),
        _config(),
        tmp_path,
        info=INFO,
    )
    after = loaded.model.state_dict()
    assert set(after) == set(before)  # merged: a plain model again, no LoRA tensors left
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    routers = set(loaded.adapter.router_parameters(loaded.model))  # trained router tensors (not bias buffers)
    assert routers <= changed and changed - routers  # the experts moved too
    assert all(".experts." in n for n in changed - routers)  # and nothing else
    assert (tmp_path / EXPERT_LORA / "adapter_config.json").is_file()
    assert 0 < facts["expert_lora_numbers"] < sum(before[n].numel() for n in changed - routers)
    assert expert_targets(loaded.model)


class KilledAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise KeyboardInterrupt


def _train(out, callbacks=(), resume=False) -> dict[str, torch.Tensor]:
    loaded = build_tiny("mixtral", seed=2)
    train_routers(
        loaded,
        random_sequences(4, "harm", 0, varied_lengths=False),
        random_sequences(4, "benign", 1, varied_lengths=False),
        _config(),
        out,
        info=INFO,
        resume=resume,
        callbacks=callbacks,
    )
    return {n: t.clone() for n, t in loaded.model.state_dict().items()}


def test_killed_and_resumed_expert_lora_training_equals_the_uninterrupted_run(tmp_path):
    straight = _train(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "killed", callbacks=[KilledAfterSave()])
    resumed = _train(tmp_path / "killed", resume=True)
    assert all(torch.equal(resumed[n], straight[n]) for n in straight)
