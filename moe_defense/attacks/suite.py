"""Run one attack end to end: search (resumable, saved per prompt), then generate + judge via the runner."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from moe_defense.attacks.artifacts import RouteArtifact
from moe_defense.attacks.base import Attack, AttackContext, AttackResult
from moe_defense.data.prompts import PromptSet
from moe_defense.judges import Judge
from moe_defense.models.loading import LoadedModel
from moe_defense.runner.evaluate import evaluate
from moe_defense.runner.rundir import RecordWriter, RunDir, atomic_write, read_jsonl

ATTACK_RESULTS = "attack_results.jsonl"
ATTACK_RESULTS_GLOB = "attack_results*.jsonl"
ARTIFACTS = "artifacts.jsonl"  # the found routes alone, for route-replay and hardening


def _load_results(out_dir: Path) -> dict[str, AttackResult]:
    results = {}
    for path in sorted(out_dir.glob(ATTACK_RESULTS_GLOB)):
        for record in read_jsonl(path, repair=True):
            artifact = RouteArtifact.from_json(record["artifact"]) if record.get("artifact") else None
            results[record["prompt_id"]] = AttackResult(
                record["prompt_id"],
                artifact,
                record.get("response"),
                record.get("extra", {}),
                prompt_text=record.get("prompt_text"),
            )
    return results


def _record(result: AttackResult) -> dict[str, Any]:
    return {
        "prompt_id": result.prompt_id,
        "artifact": result.artifact.to_json() if result.artifact else None,
        "response": result.response,
        "extra": result.extra,
        "prompt_text": result.prompt_text,
    }


def search_all(
    loaded: LoadedModel,
    prompt_set: PromptSet,
    attack: Attack,
    context: AttackContext,
    out_dir: Path,
    resume: bool,
    progress: bool,
) -> list[AttackResult]:
    """The attack's result per prompt; per-prompt searches (`attack.per_prompt`) are saved one prompt at a
    time, so a kill loses one prompt, and resume from `attack_results*.jsonl`. A global choice (one for every
    prompt, e.g. RoSais-ranked routers) is saved at once and not remade on resume.

    Data-parallel runs split the searches: rank r searches every world-th open prompt and appends to
    its own `attack_results.rank<r>.jsonl`, so no two processes write one file.
    """
    info = context.info
    if not resume and info.is_main:
        for path in out_dir.glob(ATTACK_RESULTS_GLOB):
            path.unlink()
    info.wait()
    if not attack.per_prompt:
        stored = _load_results(out_dir) if resume else {}
        info.wait()  # every rank has read the stored choice before anyone rewrites it: all decide alike
        if all(p.id in stored for p in prompt_set.prompts):  # one choice for every prompt, already made
            return [stored[p.id] for p in prompt_set.prompts]
        results = attack.run(loaded, prompt_set.prompts, context)
        if info.is_main:
            (out_dir / ATTACK_RESULTS).unlink(missing_ok=True)
            RecordWriter(out_dir / ATTACK_RESULTS).append(_record(r) for r in results)
        info.wait()
        return results
    done = _load_results(out_dir)
    info.wait()  # every rank has read the finished prompts before anyone appends
    writer = RecordWriter(out_dir / (ATTACK_RESULTS if info.world == 1 else f"attack_results.rank{info.rank}.jsonl"))
    todo = [p for p in prompt_set.prompts if p.id not in done][info.rank :: info.world]
    for prompt in tqdm(todo, desc=f"{attack.label()} search", unit="prompt", disable=not progress or not info.is_main):
        done[prompt.id] = attack.run(loaded, [prompt], context)[0]
        writer.append([_record(done[prompt.id])])
    info.wait()
    done = _load_results(out_dir)
    return [done[p.id] for p in prompt_set.prompts]


def run_attack(
    loaded: LoadedModel,
    prompt_set: PromptSet,
    attack: Attack,
    judges: Sequence[Judge],
    *,
    out_dir: str | Path,
    context: AttackContext | None = None,
    resume: bool = False,
    label: str | None = None,
    phase: str = "original",
    progress: bool = True,
) -> dict[str, Any]:
    """Search, replay the found routes (and send the attack's prompt texts) while generating, judge against the
    original requests, and write the run directory."""
    context = context or AttackContext()
    label = label or attack.label()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prompt_set = attack.evaluated(prompt_set, context)
    config = attack.config.model_dump(mode="json")  # in the run config a resume must match, and beside the ASR
    results = search_all(loaded, prompt_set, attack, context, out_dir, resume, progress)
    artifacts = {r.prompt_id: r.artifact.to_json() for r in results if r.artifact is not None}
    if artifacts and context.info.is_main:
        atomic_write(out_dir / ARTIFACTS, "".join(json.dumps(a, sort_keys=True) + "\n" for a in artifacts.values()))
    with attack.applied(loaded):
        summary = evaluate(
            loaded,
            prompt_set,
            judges,
            gen_config=context.generation,
            out_dir=out_dir,
            resume=resume,
            attack_name=label,
            phase=phase,
            route_artifacts=artifacts,
            prompt_texts={r.prompt_id: r.prompt_text for r in results if r.prompt_text is not None},
            info=context.info,
            route_for_batch=lambda rows: attack.interventions(loaded, [results[row] for row in rows]),
            extra_config={"attack_config": config},
            progress=progress,
        )
    row = summary["phases"][phase][label]
    row["budget"] = config  # the whole config: every knob the ASR was measured under
    row["search"] = attack.summarize(results)
    if context.info.is_main:
        RunDir(out_dir).write_summary(summary)
    return summary
