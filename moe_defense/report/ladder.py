"""The report of a harden run with a target: every rung tried against it, then what to ship."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moe_defense.report.html import write_report
from moe_defense.report.ship import ROUTER_PATCH, ROUTER_PATCH_AND_EXPERT_LORA
from moe_defense.report.tables import ladder_table


def target_line(target: dict[str, Any]) -> str:
    """The target every rung is held to."""
    return (
        f"- target: adaptive ASR <= {target['asr']} at budget {target['budget']}, benign-compliance drop <= "
        f"{target['max_compliance_drop']}, over-refusal rise <= {target['max_over_refusal_rise']} (decided by the "
        f"{target['decide_by'].replace('_', ' ')})"
    )


def chosen_line(ladder: dict[str, Any]) -> str:
    """The rung chosen and where its artifact goes (`ladder["ship"]`, from `ship_kind`), or that none met."""
    ship = ladder["ship"]
    if ship is None:
        return "- **no rung met the target**: nothing to ship at this target; each rung's report shows its figures"
    where = {
        ROUTER_PATCH: "apply it to the base checkpoint (`router_patch.safetensors`, fingerprint-checked); "
        "servers that load plain checkpoints (vLLM, llama.cpp) take the rung's hardened_model/",
        ROUTER_PATCH_AND_EXPERT_LORA: f"the router patch plus the expert adapter "
        f"({ship['expert_lora_bytes']} bytes, PEFT format, on the router-patched base), or the rung's merged "
        "hardened_model/ for servers that load plain checkpoints",
    }.get(ship["kind"], "ship the rung's hardened_model/ (a plain transformers checkpoint)")
    return (
        f"- **chosen: {ladder['chosen']}** — {ship['kind']}, {100 * (ship['changed_fraction'] or 0):.3f}% of the "
        f"model's parameters changed, the patch holds {100 * (ship['patch_fraction'] or 0):.3f}% of its size; "
        f"{where}" + ("; its route guard must run at inference" if ship["needs_route_guard_at_inference"] else "")
    )


def ladder_report(out: Path, ladder: dict[str, Any]) -> Path:
    """report.md + report.html of a harden run with a target (ladder.json's content)."""
    lines = ["# Hardening to a target", "", target_line(ladder["target"]), "", *ladder_table(ladder), ""]
    lines += [f"- {r['rung']}: {r['note']}" for r in ladder["rungs_tried"] if r["note"]]
    if ladder["rungs_not_tried"]:
        lines.append(f"- not tried (a smaller rung met the target): {', '.join(ladder['rungs_not_tried'])}")
    lines.append(chosen_line(ladder))
    return write_report(out, "\n".join(lines) + "\n", "moe-defense: hardening to a target")
