"""`harden` with a target: climb the ladder of scopes, stop at the first rung whose adaptive verification meets it.

    out/
      original/                the original model's suite, once, shared by every rung
      rungs/<rung>/            a harden run per rung tried (summary.json, report.md, hardened_model/ ...)
      ladder.json              every rung tried: its figures against the target, met or not; the chosen rung
      report.md, report.html   the ladder table, then what to ship

A finished rung (summary.json) is read, never rerun, so `--resume` continues at the rung that was cut.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moe_defense.pipeline import Harden
from moe_defense.recipe import Recipe, compose_defenses
from moe_defense.report import FULL_CHECKPOINT, ROUTER_PATCH, ROUTER_PATCH_AND_EXPERT_LORA, ladder_report, ship_kind
from moe_defense.runner.process import ProcessInfo
from moe_defense.runner.rundir import RunDir, atomic_write
from moe_defense.target import assess

LADDER = "ladder.json"


def rung_recipes(recipe: Recipe) -> dict[str, Recipe]:
    """Each rung as a plain recipe (no target): its defenses merged over the recipe's own."""
    assert recipe.target is not None
    base = recipe.model_dump(mode="json")
    return {
        name: Recipe.model_validate({**base, "target": None, "defenses": compose_defenses(specs, base["defenses"])})
        for name, specs in recipe.target.rungs.items()
    }


def shipped(summary: dict[str, Any], directory: Path) -> dict[str, Any]:
    """What to ship from a rung (`ship_kind` decides, as in the rung's own report) and where it lies."""
    kind = ship_kind(summary)
    guard = summary.get("route_guard") is not None or summary.get("route_reviewers", 0) > 0
    patch = directory / "router_patch.safetensors"
    artifact = {
        ROUTER_PATCH_AND_EXPERT_LORA: f"{patch} + {directory / 'train' / 'expert_lora'}",
        ROUTER_PATCH: str(patch),
        FULL_CHECKPOINT: str(directory / "hardened_model"),
    }[kind]
    return {
        "artifact": artifact,
        "kind": kind,
        "expert_lora_bytes": summary.get("expert_lora_bytes", 0),
        "changed_fraction": summary.get("changed_fraction"),
        "patch_fraction": summary.get("patch_fraction", summary.get("changed_fraction")),
        "router_patch_bytes": summary.get("router_patch_bytes"),
        "needs_route_guard_at_inference": guard,
    }


def climb(
    recipe: Recipe, out: Path, *, info: ProcessInfo, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Verify rung after rung (smallest patch first) until one meets `recipe.target`; write ladder.json + report."""
    assert recipe.target is not None
    run_dir = RunDir(out)
    run_config = {"verb": "harden", "recipe": recipe.model_dump(mode="json")}
    run_dir.check(run_config, resume=resume)
    info.wait()
    if info.is_main:
        run_dir.write_config(run_config)
    tried, chosen = [], None
    for name, rung in rung_recipes(recipe).items():
        directory = out / "rungs" / name
        if progress and info.is_main:
            print(f"ladder: rung {name}")
        finished = directory / "summary.json"
        if finished.is_file():
            summary = json.loads(finished.read_text())
        else:
            summary = Harden(
                rung, directory, info=info, resume=resume, progress=progress, original_dir=out / "original"
            ).run()
        verdict = assess(summary, recipe.target)
        tried.append(
            {
                "rung": name,
                "directory": str(directory),
                "defenses": [spec.model_dump(mode="json") for spec in rung.defenses],
                "trainable": summary["trainable"],
                **verdict,
                "headline_asr": summary["headline_asr"],
                "minimal_budget_median": {
                    phase: (summary.get("minimal_budget") or {}).get(phase, {}).get("median")
                    for phase in ("original", "hardened")
                },
                "ship": shipped(summary, directory),
            }
        )
        if verdict["met"]:
            chosen = name
            break
    ladder = {
        "target": recipe.target.model_dump(mode="json", exclude={"rungs"}),
        "rungs_tried": tried,
        "rungs_not_tried": [name for name in recipe.target.rungs if name not in {t["rung"] for t in tried}],
        "chosen": chosen,
        "ship": next((t["ship"] for t in tried if t["rung"] == chosen), None),
    }
    if info.is_main:
        atomic_write(out / LADDER, json.dumps(ladder, indent=2) + "\n")
        ladder_report(out, ladder)
    info.wait()
    return ladder
