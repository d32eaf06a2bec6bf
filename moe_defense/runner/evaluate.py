"""Evaluate a model on a prompt set: generate, judge with every judge, record, summarise.

Work is saved chunk by chunk (a chunk is generated, judged and appended before the next starts), so a
killed run loses at most one chunk and `resume=True` continues without recomputing a finished
(prompt id, attack) pair. Launched with `accelerate launch`, each process answers the prompts
`rank::world` into its own `results.rank{r}.jsonl`; the main process merges them into `results.jsonl`
(in prompt order, so the file equals a single-process run's) and writes the summary. A single process
never imports accelerate.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from moe_defense.data import Prompt, PromptSet
from moe_defense.errors import ConfigError, JudgeError
from moe_defense.judges import (
    Judge,
    JudgeItem,
    KeywordJudge,
    Verdict,
    asr,
    pairwise_agreement,
)
from moe_defense.models import LoadedModel
from moe_defense.routing import Intervention
from moe_defense.runner.generation import GenerationConfig, RouteForBatch, generate
from moe_defense.runner.rundir import RunDir

BENIGN_KINDS = frozenset({"benign", "lookalike"})  # demo corpus kinds a model should answer
STATUS_ORDER = ("scored", "unscored", "error")  # a record's status is its worst judge verdict
T = TypeVar("T")


@dataclass(frozen=True)
class ProcessInfo:
    """This process's place in a data-parallel run (rank 0 of 1 when not launched by accelerate)."""

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


@functools.cache
def process_info() -> ProcessInfo:
    """Create the process state once, before anything else can build it with another backend.

    Under `accelerate launch` (WORLD_SIZE > 1) this builds `accelerate.PartialState`, with the gloo
    backend and `cpu=True` when there is no GPU (without them accelerate sets up no collectives on CPU and
    its barriers return at once); otherwise accelerate is never imported.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ProcessInfo(rank=0, world=1, device="cuda" if torch.cuda.is_available() else None)
    from accelerate import PartialState

    cpu = not torch.cuda.is_available()
    state = PartialState(cpu=cpu, backend="gloo" if cpu else None)
    device = None if state.device.type == "cpu" else str(state.device)
    return ProcessInfo(rank=state.process_index, world=state.num_processes, device=device, state=state)


def is_benign(prompt: Prompt) -> bool:
    """Prompts a safe model should answer: label "safe" (JBB benign, XSTest safe) or a benign demo kind."""
    return prompt.metadata.get("label") == "safe" or prompt.metadata.get("kind") in BENIGN_KINDS


def make_record(
    prompt: Prompt,
    response: str,
    verdicts: Mapping[str, Verdict],
    *,
    attack: str,
    phase: str,
    route: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One results.jsonl line; `status` is the worst verdict status, `judge_errors` names who failed and why."""
    judge_errors = {name: v.reason or v.status for name, v in verdicts.items() if v.status != "scored"}
    status = max((v.status for v in verdicts.values()), key=STATUS_ORDER.index, default="scored")
    return {
        "prompt_id": prompt.id,
        "attack": attack,
        "phase": phase,
        "prompt": prompt.text,
        "benign": is_benign(prompt),
        "route": dict(route) if route is not None else None,
        "response": response,
        "verdicts": {name: v.to_dict() for name, v in verdicts.items()},
        "judge_errors": judge_errors,
        "status": status,
    }


def judge_responses(judges: Sequence[Judge], prompts: Sequence[Prompt], responses: Sequence[str]) -> list[dict[str, Verdict]]:
    """Per item, every judge's verdict; a judge returning the wrong number of verdicts is a bug, not a verdict."""
    items = [JudgeItem(p.text, r, p.metadata) for p, r in zip(prompts, responses, strict=True)]
    by_judge = {}
    for judge in judges:
        verdicts = judge.judge_batch(items)
        if len(verdicts) != len(items):
            raise JudgeError(f"judge {judge.name!r} returned {len(verdicts)} verdicts for {len(items)} items.")
        by_judge[judge.name] = verdicts
    return [{name: verdicts[i] for name, verdicts in by_judge.items()} for i in range(len(items))]


def _verdict(record: Mapping[str, Any], judge: str) -> Verdict:
    return Verdict(**record["verdicts"][judge])


def summarize(records: Sequence[Mapping[str, Any]], judge_names: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """phase -> attack -> row. The first judge is the headline (`judge`); every judge is in `by_judge`.

    ASR counts harmful prompts only (a benign prompt's answer is not an attack success), over the
    scored verdicts, with unscored/error counts beside it. Benign prompts give `over_refusal` (refusal
    rate by the keyword judge: the run's own `keyword` verdicts, else the default keyword list) and
    `benign_compliance` = 1 - over_refusal. Agreement between judges covers every item.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["phase"], record["attack"]), []).append(record)
    keyword = KeywordJudge()
    phases: dict[str, dict[str, dict[str, Any]]] = {}
    for (phase, attack), group in sorted(groups.items()):
        harmful = [r for r in group if not r["benign"]]
        benign = [r for r in group if r["benign"]]
        by_judge = {name: asr([_verdict(r, name) for r in harmful]) for name in judge_names}
        headline = {key: value for key, value in by_judge[judge_names[0]].items() if key != "n_total"}
        row: dict[str, Any] = {
            "attack": attack,
            "budget": None,
            "judge": judge_names[0],
            **headline,
            "n_prompts": len(group),
            "n_harmful": len(harmful),
            "n_benign": len(benign),
            "by_judge": by_judge,
        }
        if benign:
            refusal = [
                _verdict(r, "keyword") if "keyword" in r["verdicts"] else keyword.judge_batch([JudgeItem(r["prompt"], r["response"])])[0]
                for r in benign
            ]
            over_refusal = sum(not v.jailbroken for v in refusal) / len(refusal)
            row.update(over_refusal=over_refusal, benign_compliance=1.0 - over_refusal)
        if len(judge_names) > 1:
            pairs = pairwise_agreement({name: [_verdict(r, name) for r in group] for name in judge_names})
            row["agreement"] = [pair.to_dict() for pair in pairs]
        phases.setdefault(phase, {})[attack] = row
    return phases


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def summary_table(summary: Mapping[str, Any]) -> str:
    """A markdown table of the summary rows, one per phase x attack (printed by the CLI, kept in report.md)."""
    lines = [
        "| phase | attack | judge | ASR | success / scored | judge errors | prompts | over-refusal |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for phase, attacks in summary["phases"].items():
        for attack, row in attacks.items():
            lines.append(
                f"| {phase} | {attack} | {row['judge']} | {_fmt(row['asr'])} | {row['n_success']} / {row['n_scored']} "
                f"| {row['n_judge_errors']} | {row['n_prompts']} | {_fmt(row.get('over_refusal'))} |"
            )
    return "\n".join(lines)


def render_report(summary: Mapping[str, Any]) -> str:
    """report.md: what was evaluated, the table, and judge agreement where several judges ran."""
    parts = [
        "# Evaluation report",
        "",
        f"- model: `{summary['model']}` (fingerprint `{summary['model_fingerprint']}`)",
        f"- prompt set: `{summary['prompt_set']}` ({summary['n_prompts']} prompts)",
        f"- judges: {', '.join(summary['judges'])} (ASR over scored harmful prompts; errors counted beside)",
        "",
        summary_table(summary),
    ]
    for phase, attacks in summary["phases"].items():
        for attack, row in attacks.items():
            for pair in row.get("agreement", []):
                parts.append(
                    f"\n- agreement {phase}/{attack}: {pair['judge_a']} vs {pair['judge_b']}: "
                    f"{_fmt(pair['agreement'])} over {pair['n_both_scored']} items (kappa {_fmt(pair['kappa'])})"
                )
    return "\n".join(parts) + "\n"


def evaluate(
    loaded: LoadedModel,
    prompt_set: PromptSet,
    judges: Sequence[Judge],
    *,
    gen_config: GenerationConfig | None = None,
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    attack_name: str = "none",
    route_for_batch: RouteForBatch | None = None,
    route_artifacts: Mapping[str, Mapping[str, Any]] | None = None,
    phase: str = "original",
    chunk_size: int | None = None,
    extra_config: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Answer, judge and record every prompt into the run directory `out_dir`; return the summary.

    `route_for_batch(positions)` gets positions in `prompt_set.prompts` and returns that batch's
    routing interventions; `route_artifacts` (prompt id -> JSON-able artifact) is stored in each record.
    `chunk_size` prompts (default 4 x batch size) are saved at a time. `extra_config` (e.g. the CLI
    arguments) joins the run config that a resume must match.
    """
    gen_config = gen_config or GenerationConfig()
    names = [judge.name for judge in judges]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"evaluate needs at least one judge and each judge once (got {names}).")
    prompts = prompt_set.prompts
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"prompt set {prompt_set.name!r} repeats prompt ids; results are keyed by id, so ids must be unique.")
    chunk_size = chunk_size or 4 * gen_config.batch_size
    info = process_info()
    run = RunDir(out_dir)
    run_config = {
        "verb": "evaluate",
        "model": loaded.spec,
        "model_fingerprint": loaded.fingerprint(),
        "prompt_set": {
            "name": prompt_set.name,
            "source": prompt_set.source,
            "n_prompts": len(prompts),
            "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16],
        },
        "judges": [{"name": j.name, "config": j.config.model_dump(mode="json")} for j in judges],
        "generation": gen_config.model_dump(mode="json"),
        "attack": attack_name,
        "phase": phase,
        **(extra_config or {}),
    }
    run.check(run_config, resume=resume)
    info.wait()  # nobody writes before every process has checked the directory as it was
    if info.is_main:
        run.write_config(run_config)
    writer = run.writer(info.rank if info.world > 1 else None)
    finished = run.finished()
    shard = list(range(info.rank, len(prompts), info.world))
    todo = [pos for pos in shard if (ids[pos], attack_name) not in finished]
    routes = route_artifacts or {}
    with tqdm(total=len(shard), initial=len(shard) - len(todo), desc="evaluate", unit="prompt", disable=not progress or not info.is_main) as bar:
        for start in range(0, len(todo), chunk_size):
            positions = todo[start : start + chunk_size]
            chunk = [prompts[pos] for pos in positions]
            route = _chunk_routes(route_for_batch, positions)
            responses = generate(loaded, [p.text for p in chunk], gen_config, route_for_batch=route, progress=False)
            verdicts = judge_responses(judges, chunk, responses)
            writer.append(
                make_record(p, r, v, attack=attack_name, phase=phase, route=routes.get(p.id))
                for p, r, v in zip(chunk, responses, verdicts, strict=True)
            )
            bar.update(len(chunk))
    info.wait()
    if info.is_main:
        records = run.merge({prompt_id: pos for pos, prompt_id in enumerate(ids)})
        summary = {
            "model": loaded.spec,
            "model_fingerprint": run_config["model_fingerprint"],
            "prompt_set": prompt_set.name,
            "n_prompts": len(prompts),
            "judges": names,
            "phases": summarize(records, names),
        }
        run.write_summary(summary)
        run.write_report(render_report(summary))
    info.wait()
    return run.read_summary()


def _chunk_routes(route_for_batch: RouteForBatch | None, positions: list[int]) -> RouteForBatch | None:
    """Translate `generate`'s rows (positions in the chunk) to positions in the prompt set."""
    if route_for_batch is None:
        return None

    def route(rows: list[int]) -> Sequence[Intervention]:
        return route_for_batch([positions[row] for row in rows])

    return route
