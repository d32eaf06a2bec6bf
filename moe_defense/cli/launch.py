"""Launch settings for entry points: the process environment DeepSpeed needs, set before anything runs.

Only entry points call this (the library never writes `os.environ`): `harden`, `demo` and `ablate`
over a recipe with `deepspeed:`.
"""

from __future__ import annotations

import os
import socket

import torch


def launch_environment(deepspeed: bool) -> None:
    """DeepSpeed needs a process-group environment even in one process.

    Under a launcher (`deepspeed`, `accelerate launch`, `torchrun`) RANK is set and nothing changes;
    in-process it describes a world of one. Without a GPU, DeepSpeed is told to use its CPU accelerator.
    """
    if not deepspeed:
        return
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
