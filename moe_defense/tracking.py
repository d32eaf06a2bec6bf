"""Experiment tracking: `report_to` trackers get the training logs and, for tensorboard, the verified figures.

HF Trainer's own integrations log the hardening (loss, objective terms, learning rate) to every tracker
in `report_to`. After the adaptive verification, the run's figures (ASR vs budget per phase, B80,
headline ASR, utility) join the training's tensorboard run: its event directory is known (the training
facts name it), so the figures land beside the training curves. The other trackers' runs are closed
by their Trainer callbacks and cannot be reopened from here, so they receive the training logs only
(the figures stay in summary.json), and a warning says so.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

# tracker name (as HF TrainingArguments.report_to spells it) -> the package that provides it (= pip name)
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
VERIFICATION_DIR = "tensorboard"  # under the run directory, when no training wrote a tensorboard run


class ScalarWriter(Protocol):
    """What the figures are written through (tensorboard's SummaryWriter)."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> None: ...


def check_report_to(names: Sequence[str]) -> list[str]:
    """The trackers, each supported and installed; otherwise a ValueError naming it and the install line."""
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"report_to {name!r} is not a supported tracker (supported: {', '.join(TRACKERS)})")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ValueError(
                f"report_to {name!r} needs the {TRACKERS[name]!r} package, which is not installed: "
                f"pip install {TRACKERS[name]}"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"report_to names each tracker once (got {list(names)})")
    return list(names)


def verification_figures(summary: Mapping[str, Any]) -> Iterator[tuple[str, float, int]]:
    """(tag, value, step) of a harden summary's figures; ASR-vs-budget points are stepped by their budget,
    the uncapped point gets a tag of its own, and missing values are skipped rather than logged as 0."""
    for phase, points in summary.get("asr_vs_budget", {}).items():
        for point in points.values():
            if point["asr"] is None:
                continue
            if point["budget"] is None:
                yield f"verify/asr_uncapped/{phase}", point["asr"], 0
            else:
                yield f"verify/asr_vs_budget/{phase}", point["asr"], point["budget"]
    if summary.get("budget_b80") is not None:
        yield "verify/b80", summary["budget_b80"], 0
    for phase, point in (summary.get("headline_asr") or {}).items():
        if point["asr"] is not None:
            yield f"verify/headline_asr/{phase}", point["asr"], 0
    for phase, figures in summary.get("utility", {}).items():
        for key in ("benign_compliance", "over_refusal", "benign_nll"):
            if figures.get(key) is not None:
                yield f"utility/{key}/{phase}", figures[key], 0


def write_figures(writer: ScalarWriter, summary: Mapping[str, Any]) -> int:
    """Write the summary's figures through `writer`; returns how many were written."""
    count = 0
    for tag, value, step in verification_figures(summary):
        writer.add_scalar(tag, float(value), global_step=step)
        count += 1
    return count


def log_verification(report_to: Sequence[str], summary: Mapping[str, Any], out: Path) -> Path | None:
    """Log the figures to the training's tensorboard run (else `out/tensorboard`); the directory, or None."""
    untracked = [name for name in report_to if name != "tensorboard"]
    if untracked:
        warnings.warn(
            f"report_to {untracked}: these trackers receive the training logs only; the verified figures "
            "(ASR vs budget, B80, utility) are logged to tensorboard and written to summary.json.",
            UserWarning,
            stacklevel=2,
        )
    if "tensorboard" not in report_to:
        return None
    from torch.utils.tensorboard import SummaryWriter

    directory = Path(summary.get("training", {}).get("tensorboard_dir") or out / VERIFICATION_DIR)
    writer = SummaryWriter(log_dir=str(directory))
    try:
        write_figures(writer, summary)
    finally:
        writer.close()
    return directory
