"""Reports people would rather look at than read: report.md, report.html and PNG plots of a run.

Three kinds, one writer module each: a harden run (`harden.py`), an ablation grid (`grid.py`) and a
harden run with a target (`ladder.py`). They share the cell formats (`cells.py`), the tables
(`tables.py`), the plots (`plots.py`), the HTML page (`html.py`) and the one decision of what a run
ships (`ship.py`); `rerender.py` renders a finished run again.
"""

from moe_defense.report.cells import MISSING, NOT_RUN, fmt, rate
from moe_defense.report.grid import GRID_SUMMARY, write_grid_report
from moe_defense.report.harden import (
    ASR_VS_BUDGET,
    ROSAIS_PLOT,
    SURVIVAL_PLOT,
    USAGE_PLOT,
    minimal_budget_line,
    shipping_line,
    write_harden_report,
)
from moe_defense.report.html import markdown_to_html, write_report
from moe_defense.report.ladder import ladder_report
from moe_defense.report.plots import (
    plot_asr_vs_budget,
    plot_expert_usage,
    plot_grid_bars,
    plot_grid_curves,
    plot_grid_matrix,
    plot_rosais,
    plot_survival,
)
from moe_defense.report.rerender import render
from moe_defense.report.ship import FULL_CHECKPOINT, ROUTER_PATCH, ROUTER_PATCH_AND_EXPERT_LORA, ShipKind, ship_kind
from moe_defense.report.tables import NOT_RATES, UTILITY, deployment_table, headline_table, task_rows

__all__ = [
    "ASR_VS_BUDGET",
    "FULL_CHECKPOINT",
    "GRID_SUMMARY",
    "MISSING",
    "NOT_RATES",
    "NOT_RUN",
    "ROSAIS_PLOT",
    "ROUTER_PATCH",
    "ROUTER_PATCH_AND_EXPERT_LORA",
    "SURVIVAL_PLOT",
    "USAGE_PLOT",
    "UTILITY",
    "ShipKind",
    "deployment_table",
    "fmt",
    "headline_table",
    "ladder_report",
    "markdown_to_html",
    "minimal_budget_line",
    "plot_asr_vs_budget",
    "plot_expert_usage",
    "plot_grid_bars",
    "plot_grid_curves",
    "plot_grid_matrix",
    "plot_rosais",
    "plot_survival",
    "rate",
    "render",
    "shipping_line",
    "ship_kind",
    "task_rows",
    "write_grid_report",
    "write_harden_report",
    "write_report",
]
