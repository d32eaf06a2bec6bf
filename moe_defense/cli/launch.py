"""Launch settings for entry points: the process environment DeepSpeed needs, set before anything runs.

Only entry points call this (the library never writes `os.environ`): `harden`, `demo` and `ablate`
over a recipe with `deepspeed:`.
"""

from __future__ import annotations

import os

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
        # MASTER_PORT 0: rank 0's store binds a port the OS picks as it listens (torch's env:// rendezvous), and a
        # world of one has no other rank to tell. A port probed and released here could be taken by another
        # process before the store binds it (two in-process runs starting together).
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="0")
