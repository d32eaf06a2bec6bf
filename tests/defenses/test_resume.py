"""A hardening run killed after a checkpoint and resumed ends with router tensors bit-identical to an
uninterrupted run: the trainer's route-sampling RNG and the route pool are checkpointed with the model."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

import moe_defense
from moe_defense.attacks import FsourConfig
from moe_defense.data import load_prompts
from moe_defense.defenses.examples import own_answers, own_refusals
from moe_defense.defenses.trainer import HardeningConfig, train_routers
from moe_defense.judges import OrganismJudge
from moe_defense.runner.generation import GenerationConfig
from moe_defense.runner.process import ProcessInfo

INFO = ProcessInfo(0, 1, None)
CONFIG = HardeningConfig(
    steps=5,
    batch_size=2,
    refresh_every=1,
    refresh_prompts=4,  # every prompt refreshed every step: route sampling draws from the RNG from step 2 on
    save_steps=2,
    max_response_tokens=8,
    route_search=FsourConfig(candidates=4, force_decode=True, budget=2, restarts=0),
)


class KilledAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise KeyboardInterrupt  # the process dies right after checkpoint-2 is on disk


def _train(out, callbacks=(), resume=False):
    loaded = moe_defense.load_model("organism")  # a fresh process's model
    generation = GenerationConfig(max_new_tokens=8, batch_size=8)
    harmful = own_refusals(
        loaded, load_prompts("demo-harmful", split="train", limit=4).prompts, OrganismJudge(), generation, 8
    )
    benign = own_answers(loaded, load_prompts("demo-benign", split="train", limit=4).prompts, generation, 8)
    train_routers(loaded, harmful, benign, CONFIG, out, info=INFO, resume=resume, callbacks=callbacks)
    return {name: t.detach().clone() for name, t in loaded.adapter.router_tensors(loaded.model).items()}


@pytest.mark.slow
def test_killed_and_resumed_training_equals_the_uninterrupted_run(organism, tmp_path):
    uninterrupted = _train(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "killed", callbacks=[KilledAfterSave()])
    resumed = _train(tmp_path / "killed", resume=True)
    assert set(resumed) == set(uninterrupted)
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in resumed)
