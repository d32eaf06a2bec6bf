"""One rank of a ZeRO-3 router-only run on tiny Mixtral (launched by test_zero3.py): writes what it trained."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from moe_defense.cli.launch import launch_environment
from moe_defense.runner.process import exit_process, process_info

launch_environment(deepspeed=True)
INFO = process_info()

from moe_defense.attacks.fsour import FsourConfig  # noqa: E402
from moe_defense.defenses.trainer import HardeningConfig, train_routers  # noqa: E402
from moe_defense.models import build_tiny  # noqa: E402
from tests.defenses.sequences import random_sequences  # noqa: E402


def main(out: Path, deepspeed: Path) -> None:
    loaded = build_tiny("mixtral", seed=1)
    before = {name: tensor.detach().clone() for name, tensor in loaded.model.state_dict().items()}
    config = HardeningConfig(
        steps=3,
        batch_size=2,
        refresh_every=1,
        refresh_prompts=3,  # 2 prompts on rank 0, 1 on rank 1: the ranks' refreshes make different numbers of forwards
        save_steps=100,
        route_search=FsourConfig(candidates=4, force_decode=True, budget=2, restarts=0),
        max_response_tokens=8,
    )
    facts = train_routers(
        loaded,
        random_sequences(4, "harm", 0),
        random_sequences(4, "benign", 1),
        config,
        out / "train",
        info=INFO,
        deepspeed=str(deepspeed),
    )
    after = loaded.model.state_dict()
    result = {
        "changed": sorted(name for name in before if not torch.equal(before[name], after[name])),
        "routers": sorted(loaded.adapter.router_tensors(loaded.model)),
        "digests": facts["router_digest_per_rank"],
        "world_size": facts["world_size"],
        "refreshes": facts["refreshes"],
        "log": facts["log"],
    }
    (out / f"rank{INFO.rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    paths = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the deepspeed launcher adds it
    main(Path(paths[0]), Path(paths[1]))
    exit_process(0)
