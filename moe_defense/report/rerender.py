"""`moe-defense report DIR`: render a finished run's report again from its summary."""

from __future__ import annotations

import json
from pathlib import Path

from moe_defense.errors import ConfigError
from moe_defense.report.grid import GRID_SUMMARY, write_grid_report
from moe_defense.report.harden import write_harden_report


def render(directory: Path) -> Path:
    """Re-render the report of a harden run (summary.json) or an ablation grid (grid_summary.json)."""
    if (directory / GRID_SUMMARY).is_file():
        return write_grid_report(directory, json.loads((directory / GRID_SUMMARY).read_text()))
    if (directory / "summary.json").is_file():
        summary = json.loads((directory / "summary.json").read_text())
        if "asr_vs_budget" in summary:
            return write_harden_report(directory, summary)
    raise ConfigError(
        f"{directory} is neither a harden run (summary.json from `moe-defense harden`) nor an ablation grid "
        f"({GRID_SUMMARY})."
    )
