"""One rank of a DeepSpeed router-only run on tiny Mixtral (launched by test_deepspeed_resume.py): run `straight`
through, `killed` (every rank SIGKILLs itself once checkpoint-2 is on disk) or `resumed` from its last checkpoint.
Writes the routers it ended with and, from the last checkpoint, what the engine saved."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

from moe_defense.cli.launch import launch_environment
from moe_defense.runner.process import exit_process, process_info

launch_environment(deepspeed=True)
INFO = process_info()

from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

from moe_defense.attacks.fsour import FsourConfig  # noqa: E402
from moe_defense.defenses.checkpoint import tensor_digest  # noqa: E402
from moe_defense.defenses.trainer import HardeningConfig, train_routers  # noqa: E402
from moe_defense.models import build_tiny  # noqa: E402
from tests.defenses.sequences import random_sequences  # noqa: E402

KILLED_AT = 2
CONFIG = HardeningConfig(
    steps=4,
    batch_size=2,
    refresh_every=1,  # routes refreshed before the kill and after the resume: the pool and its RNG are checkpointed
    refresh_prompts=3,
    save_steps=KILLED_AT,
    route_search=FsourConfig(candidates=4, force_decode=True, budget=2, restarts=0),
    max_response_tokens=8,
)


class KilledAfterCheckpoint(TrainerCallback):
    """SIGKILL (no clean-up of any kind) once every rank has written its part of checkpoint-KILLED_AT."""

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == KILLED_AT:
            INFO.wait()
            os.kill(os.getpid(), signal.SIGKILL)


def engine_checkpoint(checkpoint: Path) -> dict:
    """Each file's bytes, and the tensors in the engine's module states (what a resume loads into the model; one
    file in all under ZeRO-2, one per rank under ZeRO-3)."""
    states = sorted(checkpoint.glob("global_step*/*model_states.pt"))
    modules = [torch.load(path, map_location="cpu", weights_only=False)["module"] for path in states]
    files = {str(path.relative_to(checkpoint)): path.stat().st_size for path in checkpoint.rglob("*") if path.is_file()}
    return {"files": files, "module_tensors": sorted({name for module in modules for name in module})}


def main(out: Path, deepspeed: Path, mode: str) -> None:
    loaded = build_tiny("mixtral", seed=1)
    facts = train_routers(
        loaded,
        random_sequences(4, "harm", 0),
        random_sequences(4, "benign", 1),
        CONFIG,
        out / "train",
        info=INFO,
        deepspeed=str(deepspeed),
        resume=mode == "resumed",
        callbacks=[KilledAfterCheckpoint()] if mode == "killed" else [],
    )
    checkpoint = Path(get_last_checkpoint(str(out / "train" / "trainer")))
    result = {
        "routers": {name: tensor_digest(t) for name, t in loaded.adapter.router_tensors(loaded.model).items()},
        "buffers": sorted(name for name, _ in loaded.model.named_buffers()),
        "resumed_from": facts["resumed_from"],
        "steps": facts["steps"],
        "checkpoint_bytes": facts["checkpoint_bytes"],
        "model_bytes": facts["model_bytes"],
        "checkpoint": engine_checkpoint(checkpoint),
    }
    (out / f"{mode}.rank{INFO.rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    paths = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the deepspeed launcher adds it
    main(Path(paths[0]), Path(paths[1]), paths[2])
    exit_process(0)
