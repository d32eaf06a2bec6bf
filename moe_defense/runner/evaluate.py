"""Evaluate a model on a prompt set: generate, judge with every judge, record, summarise.

Work is saved chunk by chunk (a chunk is generated, judged and appended before the next starts), so a
killed run loses at most one chunk and `resume=True` continues without recomputing a finished
(prompt id, attack) pair. Launched with `accelerate launch`, each process answers the prompts
`rank::world` into its own `results.rank{r}.jsonl`; the main process merges them into `results.jsonl`
(in prompt order, so the file equals a single-process run's) and writes the summary. A single process
never imports accelerate.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from moe_defense.data import Prompt, PromptSet
from moe_defense.errors import ConfigError, JudgeError
from moe_defense.judges import (
    Judge,
    JudgeItem,
    Verdict,
    asr,
    pairwise_agreement,
)
from moe_defense.models import LoadedModel
from moe_defense.models.chat import Reply
from moe_defense.routing import Intervention
from moe_defense.runner.generation import GenerationConfig, RouteForBatch, generate_replies
from moe_defense.runner.process import ProcessInfo, process_info
from moe_defense.runner.rundir import RunDir
from moe_defense.stats import fmt, wilson

BENIGN_KINDS = frozenset({"benign", "lookalike"})  # demo corpus kinds a model should answer
STATUS_ORDER = ("scored", "unscored", "error")  # a record's status is its worst judge verdict


def is_benign(prompt: Prompt) -> bool:
    """Prompts a safe model should answer: label "safe" (JBB benign, XSTest safe) or a benign demo kind."""
    return prompt.metadata.get("label") == "safe" or prompt.metadata.get("kind") in BENIGN_KINDS


def make_record(
    prompt: Prompt,
    reply: Reply,
    verdicts: Mapping[str, Verdict],
    *,
    attack: str,
    phase: str,
    route: Mapping[str, Any] | None = None,
    attack_prompt: str | None = None,
) -> dict[str, Any]:
    """One results.jsonl line; `status` is the worst verdict status, `judge_errors` names who failed and why.

    `prompt` is the original request (what the judges read); `attack_prompt` the text the model was given
    instead (a prompt attack such as GCG; null: the request itself).
    `response` is the final answer the judges read; `reasoning` the thinking before it (null: none), and
    `reasoning_cut_off` marks a reply stopped mid-thought, whose final answer is empty."""
    judge_errors = {name: v.reason or v.status for name, v in verdicts.items() if v.status != "scored"}
    status = max((v.status for v in verdicts.values()), key=STATUS_ORDER.index, default="scored")
    return {
        "prompt_id": prompt.id,
        "attack": attack,
        "phase": phase,
        "prompt": prompt.text,
        "attack_prompt": attack_prompt,
        "benign": is_benign(prompt),
        "route": dict(route) if route is not None else None,
        "response": reply.answer,
        "reasoning": reply.reasoning,
        "reasoning_cut_off": reply.cut_off,
        "verdicts": {name: v.to_dict() for name, v in verdicts.items()},
        "judge_errors": judge_errors,
        "status": status,
    }


def judge_responses(
    judges: Sequence[Judge], prompts: Sequence[Prompt], responses: Sequence[str]
) -> list[dict[str, Verdict]]:
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


def summarize(
    records: Sequence[Mapping[str, Any]], judge_names: Sequence[str], refusal_judge: str = "keyword"
) -> dict[str, dict[str, dict[str, Any]]]:
    """phase -> attack -> row. The first judge is the headline (`judge`); every judge is in `by_judge`.

    ASR counts harmful prompts only (a benign prompt's answer is not an attack success), over the
    scored verdicts, with unscored/error counts and a 95% Wilson interval beside it. Benign prompts give
    `over_refusal` (refusal rate by `refusal_judge`, over its scored verdicts) and `benign_compliance`
    = 1 - over_refusal, each with its interval. Agreement between judges covers every item.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["phase"], record["attack"]), []).append(record)
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
            answered = asr([_verdict(r, refusal_judge) for r in benign])  # "jailbroken" on a benign prompt = answered
            n, complied = int(answered["n_scored"]), int(answered["n_success"])
            row.update(
                refusal_judge=refusal_judge,
                n_benign_scored=n,
                over_refusal=None if not n else (n - complied) / n,
                over_refusal_ci95=wilson(n - complied, n),
                benign_compliance=answered["asr"],
                benign_compliance_ci95=answered["asr_ci95"],
            )
        if len(judge_names) > 1:
            pairs = pairwise_agreement({name: [_verdict(r, name) for r in group] for name in judge_names})
            row["agreement"] = [pair.to_dict() for pair in pairs]
        phases.setdefault(phase, {})[attack] = row
    return phases


def summary_table(summary: Mapping[str, Any]) -> str:
    """A markdown table of the summary rows, one per phase x attack (printed by the CLI, kept in report.md)."""
    lines = [
        "| phase | attack | judge | ASR | success / scored | judge errors | prompts | over-refusal |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for phase, attacks in summary["phases"].items():
        for attack, row in attacks.items():
            lines.append(
                f"| {phase} | {attack} | {row['judge']} | {fmt(row['asr'])} | {row['n_success']} / {row['n_scored']} "
                f"| {row['n_judge_errors']} | {row['n_prompts']} | {fmt(row.get('over_refusal'))} |"
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
                    f"{fmt(pair['agreement'])} over {pair['n_both_scored']} items (kappa {fmt(pair['kappa'])})"
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
    prompt_texts: Mapping[str, str] | None = None,
    phase: str = "original",
    chunk_size: int | None = None,
    extra_config: Mapping[str, Any] | None = None,
    progress: bool = True,
    refusal_judge: str = "keyword",
    info: ProcessInfo | None = None,
) -> dict[str, Any]:
    """Answer, judge and record every prompt into the run directory `out_dir`; return the summary.

    `route_for_batch(positions)` gets positions in `prompt_set.prompts` and returns that batch's
    routing interventions; `route_artifacts` (prompt id -> JSON-able artifact) is stored in each record;
    `prompt_texts` (prompt id -> text) replaces a prompt's text in generation only (judges read the original).
    `chunk_size` prompts (default 4 x batch size) are saved at a time. `extra_config` (e.g. the CLI
    arguments) joins the run config that a resume must match. Over-refusal on benign prompts is read
    from `refusal_judge`, which must be one of `judges` when the set holds benign prompts.
    """
    gen_config = gen_config or GenerationConfig()
    _check_inputs(prompt_set, judges, refusal_judge)
    info = info or process_info()
    run = RunDir(out_dir)
    run_config = _run_config(loaded, prompt_set, judges, gen_config, attack_name, phase, extra_config)
    run.check(run_config, resume=resume)
    info.wait()  # nobody writes before every process has checked the directory as it was
    if info.is_main:
        run.write_config(run_config)
    finished = run.finished()
    shard = list(range(info.rank, len(prompt_set.prompts), info.world))
    todo = [pos for pos in shard if (prompt_set.prompts[pos].id, attack_name) not in finished]
    answer = _Answerer(
        loaded, prompt_set.prompts, judges, gen_config, attack_name, phase,
        route_for_batch, route_artifacts or {}, prompt_texts or {},
    )  # fmt: skip
    writer = run.writer(info.rank if info.world > 1 else None)
    chunk_size = chunk_size or 4 * gen_config.batch_size
    disable = not progress or not info.is_main
    with tqdm(total=len(shard), initial=len(shard) - len(todo), desc="evaluate", unit="prompt", disable=disable) as bar:
        for start in range(0, len(todo), chunk_size):
            positions = todo[start : start + chunk_size]
            writer.append(answer(positions))  # one chunk saved before the next starts
            bar.update(len(positions))
    info.wait()
    if info.is_main:
        names = [j.name for j in judges]
        _write_summary(run, loaded, prompt_set, names, run_config["model_fingerprint"], refusal_judge)
    info.wait()
    return run.read_summary()


@dataclass(frozen=True)
class _Answerer:
    """Answers and judges a chunk of prompts (positions in `prompts`) into their records."""

    loaded: LoadedModel
    prompts: Sequence[Prompt]
    judges: Sequence[Judge]
    gen_config: GenerationConfig
    attack_name: str
    phase: str
    route_for_batch: RouteForBatch | None
    route_artifacts: Mapping[str, Mapping[str, Any]]
    prompt_texts: Mapping[str, str]

    def __call__(self, positions: list[int]) -> list[dict[str, Any]]:
        chunk = [self.prompts[pos] for pos in positions]
        sent = [self.prompt_texts.get(p.id) for p in chunk]
        replies = generate_replies(
            self.loaded,
            [p.text if s is None else s for p, s in zip(chunk, sent, strict=True)],
            self.gen_config,
            route_for_batch=_chunk_routes(self.route_for_batch, positions),
            progress=False,
        )
        verdicts = judge_responses(self.judges, chunk, [reply.answer for reply in replies])  # never the reasoning
        return [
            make_record(
                p,
                r,
                v,
                attack=self.attack_name,
                phase=self.phase,
                route=self.route_artifacts.get(p.id),
                attack_prompt=s,
            )
            for p, r, v, s in zip(chunk, replies, verdicts, sent, strict=True)
        ]


def _run_config(
    loaded: LoadedModel,
    prompt_set: PromptSet,
    judges: Sequence[Judge],
    gen_config: GenerationConfig,
    attack_name: str,
    phase: str,
    extra_config: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Everything the records depend on: a resume must find it unchanged."""
    ids = [p.id for p in prompt_set.prompts]
    return {
        "verb": "evaluate",
        "model": loaded.spec,
        "model_fingerprint": loaded.fingerprint(),
        "prompt_set": {
            "name": prompt_set.name,
            "source": prompt_set.source,
            "n_prompts": len(ids),
            "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16],
        },
        "judges": [{"name": j.name, "config": j.config.model_dump(mode="json")} for j in judges],
        "generation": gen_config.model_dump(mode="json"),
        "attack": attack_name,
        "phase": phase,
        **(extra_config or {}),
    }


def _check_inputs(prompt_set: PromptSet, judges: Sequence[Judge], refusal_judge: str) -> None:
    """Refuse what would give a wrong or unreadable summary, before any model runs."""
    names = [judge.name for judge in judges]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"evaluate needs at least one judge and each judge once (got {names}).")
    ids = [p.id for p in prompt_set.prompts]
    if len(set(ids)) != len(ids):
        raise ConfigError(
            f"prompt set {prompt_set.name!r} repeats prompt ids; results are keyed by id, so ids must be unique."
        )
    if refusal_judge not in names and any(is_benign(p) for p in prompt_set.prompts):
        raise ConfigError(
            f"prompt set {prompt_set.name!r} holds benign prompts, whose over-refusal is read from judge "
            f"{refusal_judge!r}, "
            f"which is not among the judges {names}: add it."
        )


def _write_summary(
    run: RunDir, loaded: LoadedModel, prompt_set: PromptSet, names: list[str], fingerprint: str, refusal_judge: str
) -> None:
    """Merge the ranks' records in prompt order, then the summary and report.md from them."""
    records = run.merge({p.id: pos for pos, p in enumerate(prompt_set.prompts)})
    summary = {
        "model": loaded.spec,
        "model_fingerprint": fingerprint,
        "prompt_set": prompt_set.name,
        "n_prompts": len(prompt_set.prompts),
        "judges": names,
        "phases": summarize(records, names, refusal_judge),
    }
    run.write_summary(summary)
    run.write_report(render_report(summary))


def _chunk_routes(route_for_batch: RouteForBatch | None, positions: list[int]) -> RouteForBatch | None:
    """Translate `generate`'s rows (positions in the chunk) to positions in the prompt set."""
    if route_for_batch is None:
        return None

    def route(rows: list[int]) -> Sequence[Intervention]:
        return route_for_batch([positions[row] for row in rows])

    return route
