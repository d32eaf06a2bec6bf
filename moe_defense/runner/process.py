"""This process's place in a data-parallel run: the one rank/world helper, passed explicitly."""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class ProcessInfo:
    """This process's place in a data-parallel run (rank 0 of 1 when not launched by a launcher)."""

    rank: int
    world: int
    device: str | None  # where to load the model; None = the loader's default (CPU)
    state: Any = None  # accelerate.PartialState when world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wait(self) -> None:
        """Barrier across processes; a no-op in a single process."""
        if self.state is not None:
            self.state.wait_for_everyone()

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank (e.g. a default run directory named after rank 0's clock)."""
        if self.state is None:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order (a list of one in a single process)."""
        if self.world == 1:
            return [value]
        values: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(values, value)
        return values


@functools.cache
def process_info() -> ProcessInfo:
    """Create the process state once, before anything else can build it with another backend.

    Under a launcher (WORLD_SIZE > 1) this builds `accelerate.PartialState`, with the gloo backend and
    `cpu=True` when there is no GPU (without them accelerate sets up no collectives on CPU and its
    barriers return at once); otherwise accelerate is never imported. Entry points call it once and
    pass the result down.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ProcessInfo(rank=0, world=1, device="cuda" if torch.cuda.is_available() else None)
    from accelerate import PartialState

    cpu = not torch.cuda.is_available()
    state = PartialState(cpu=cpu, backend="gloo" if cpu else None)
    device = None if state.device.type == "cpu" else str(state.device)
    return ProcessInfo(rank=state.process_index, world=state.num_processes, device=device, state=state)


def exit_process(code: int) -> NoReturn:
    """End an entry point with `code`. A rank of a launched run leaves through `os._exit` once every rank got
    here: interpreter teardown after a finished DeepSpeed/gloo run sometimes aborts in native destructors
    ("terminate called without an active exception", exit status 250, after every file was written; 2 of
    ~10 two-process runs in CI, with or without destroying the process group first), which turned finished
    runs into failed launches. Everything a run keeps is written (atomically) before it returns."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        sys.exit(code)
    if code == 0:  # a rank that failed cannot count on its peers reaching the barrier
        process_info().wait()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
