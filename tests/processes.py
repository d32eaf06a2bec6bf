"""For tests that start other processes: ports from the OS, and the whole process group ended however the test ends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port the OS has just handed out (bound to port 0, then closed), for a launcher's --master_port; never a
    constant, which a second run, or anything else on the machine, may hold."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _end_group(process: subprocess.Popen) -> None:
    """SIGKILL to the process group the command leads (the launcher, its ranks, their workers), then reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group is gone already
        pass
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def run_group(
    command: Sequence[str | Path], *, env: Mapping[str, str], timeout: float, cwd: Path
) -> subprocess.CompletedProcess:
    """`command` as its own session and process group, its output captured. Whatever ends the test (the command
    returning, `timeout` passing, pytest-timeout, an interrupt) the whole group is killed on the way out, so no rank or
    DeepSpeed worker outlives the test; past `timeout` the test fails with the output so far."""
    args = [str(c) for c in command]
    process = subprocess.Popen(
        args, env=dict(env), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _end_group(process)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            stdout, stderr = "", "(no output: a process outside the group holds the pipes)"
        pytest.fail(f"{args[0]} ran past {timeout} s, its process group killed:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    finally:
        _end_group(process)  # also what the command left running after it returned
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)
