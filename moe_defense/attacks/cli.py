"""The `attack` and `score` verbs: validate everything, load the model, run, print a table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from moe_defense.attacks.base import ATTACKS, Attack
from moe_defense.attacks.fsour import Fsour
from moe_defense.attacks.rosais import RosaisConfig, rosais
from moe_defense.attacks.suite import run_attack
from moe_defense.errors import ConfigError, MoEDefenseError, describe_validation
from moe_defense.runner.cli import (
    PreparedRun,
    add_run_arguments,
    load_for_run,
    run_verb,
)
from moe_defense.runner.rundir import RunDir, atomic_write, default_out_dir

# CLI flag -> attack config field; a flag given to an attack whose config lacks the field is an error.
ATTACK_FLAGS = {
    "mode": "mode", "candidates": "candidates", "restarts": "restarts", "budget": "budget",
    "force_decode": "force_decode", "layers": "layers", "in_loop_judge": "judge", "n": "n",
    "selection": "selection", "artifacts": "artifacts", "force_transfer": "force_transfer", "per_layer": "per_layer",
    "benign_set": "benign_set", "sweeps": "sweeps", "budget_strategy": "budget_strategy",
}


def add_attack_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("attack", description="Run one routing attack, then generate and judge under it.")
    add_run_arguments(parser)
    parser.add_argument("--attack", required=True, help=f"attack name ({', '.join(ATTACKS.names())})")
    knobs = parser.add_argument_group("attack settings (each applies to the attacks whose config has it)")
    knobs.add_argument("--mode", choices=["fast", "reference"], help="fsour: search mode (default fast)")
    knobs.add_argument("--candidates", type=int, help="fsour: random subsets per (token, layer) pair (default 10)")
    knobs.add_argument("--restarts", type=int, help="fsour: judged restarts with a new seed (default 5)")
    knobs.add_argument("--sweeps", type=int, help="fsour fast: passes over the (token, layer) pairs (default 1)")
    knobs.add_argument("--budget", type=int, help="fsour: max forced (token, layer) pairs (default: no cap)")
    knobs.add_argument("--budget-strategy", choices=["greedy", "prune", "best"], help="fsour fast under --budget: add pairs greedily, prune an uncapped route, or both (default best)")
    knobs.add_argument("--budget-sweep", help="fsour: comma-separated budgets, one run each, for the ASR-vs-budget curve")
    knobs.add_argument("--force-decode", action="store_true", default=None, help="fsour: also force routes at answer positions")
    knobs.add_argument("--layers", type=int, nargs="+", help="MoE layers the attack may touch (default: all)")
    knobs.add_argument("--in-loop-judge", help="fsour: judge of the restarts (default: P(target) decides)")
    knobs.add_argument("--n", type=int, help="router-mask: routers masked")
    knobs.add_argument("--selection", choices=["rosais", "random"], help="router-mask: top-n by RoSais or n random")
    knobs.add_argument("--artifacts", help="route-replay: artifacts.jsonl of an earlier fsour run")
    knobs.add_argument("--force-transfer", action="store_true", default=None, help="route-replay: allow another model's artifacts")
    knobs.add_argument("--per-layer", type=int, help="expert-silence: experts silenced per layer")
    knobs.add_argument("--benign-set", help="expert-silence: benign prompts to contrast with (default demo-benign)")
    parser.set_defaults(run=run_attack_verb)


def build_attack(args: argparse.Namespace, budget: int | None = None) -> Attack:
    """The attack from its name and the flags that apply to it (errors name the flag)."""
    attack_class = ATTACKS.get(args.attack)
    fields = attack_class.config_class.model_fields
    values: dict[str, Any] = {"seed": args.seed} if "seed" in fields else {}
    for flag, field in ATTACK_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if field not in fields:
            raise ConfigError(f"--{flag.replace('_', '-')} does not apply to attack {args.attack!r}.")
        values[field] = value
    if budget is not None:
        values["budget"] = budget
    try:
        config = attack_class.config_class(**values)
    except ValidationError as error:
        raise ConfigError(f"attack {args.attack!r} settings: {describe_validation(error)}") from error
    return attack_class(config)


def _sweep(args: argparse.Namespace) -> list[int | None]:
    if not args.budget_sweep:
        return [None]
    if args.attack != "fsour":
        raise ConfigError("--budget-sweep applies to the fsour attack only.")
    try:
        budgets = sorted({int(b) for b in args.budget_sweep.split(",")})
    except ValueError as error:
        raise ConfigError(f"--budget-sweep {args.budget_sweep!r} must be comma-separated integers, e.g. 1,2,4,8.") from error
    if budgets[0] < 1:
        raise ConfigError("--budget-sweep budgets must be >= 1.")
    return budgets


def run_attack_verb(args: argparse.Namespace) -> int:
    def body(run: PreparedRun) -> dict[str, Any]:
        budgets = _sweep(args)
        attacks = [build_attack(args, budget) for budget in budgets]  # every config checked before loading
        loaded = load_for_run(args, run)
        summaries = {}
        uncapped: dict = {}  # a budget sweep prunes one uncapped search per prompt to every budget
        for budget, attack in zip(budgets, attacks):
            if isinstance(attack, Fsour):
                attack.generation = run.gen_config
                attack.uncapped = uncapped
            label = attack.name if budget is None else f"{attack.name}@{budget}"
            out = run.out if budget is None else run.out / f"budget-{budget}"
            summaries[label] = run_attack(
                loaded, run.prompt_set, attack, run.judges, out_dir=out, gen_config=run.gen_config, resume=args.resume, label=label
            )
        if len(summaries) == 1:
            return next(iter(summaries.values()))
        merged = dict(next(iter(summaries.values())))
        merged["phases"] = {"original": {label: s["phases"]["original"][label] for label, s in summaries.items()}}
        RunDir(run.out).write_summary(merged)
        return merged

    return run_verb("attack", args, body)


def add_score_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("score", description="Rank routers by safety importance (RoSais) on harmful prompts.")
    parser.add_argument("model", help="hub id, local path, tiny:<model_type> or organism")
    parser.add_argument("--data", required=True, help="harmful prompt set (registered name, file or hub id)")
    parser.add_argument("--split", help="train|test for the demo sets")
    parser.add_argument("--data-file", help="read a registered set from this local copy")
    parser.add_argument("--prompt-column", help="prompt column of a file")
    parser.add_argument("--limit", type=int, help="use a seeded random subset of N prompts")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling and of the random masks")
    parser.add_argument("--samples", type=int, default=RosaisConfig().samples, help="random masks per router and prompt")
    parser.add_argument("--out", help="output directory (default runs/score-<time>)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code")
    parser.set_defaults(run=run_score)


def run_score(args: argparse.Namespace) -> int:
    from moe_defense import load_model
    from moe_defense.data import load_prompts
    from moe_defense.models import LoadOptions

    try:
        config = RosaisConfig(samples=args.samples, seed=args.seed)
        prompts = load_prompts(args.data, split=args.split, limit=args.limit, seed=args.seed,
                               prompt_column=args.prompt_column, data_file=args.data_file)
        loaded = load_model(args.model, LoadOptions(seed=args.seed, trust_remote_code=args.trust_remote_code))
        importance = rosais(loaded, prompts.prompts, config)
    except (MoEDefenseError, ValidationError) as error:
        print(f"moe-defense score: error: {error}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else default_out_dir("score")
    out.mkdir(parents=True, exist_ok=True)
    payload = {"model": loaded.spec, "model_fingerprint": loaded.fingerprint(), "prompt_set": prompts.name,
               "n_prompts": len(prompts.prompts), "config": config.model_dump(), "rosais": importance.scores,
               "ranking": importance.ranking()}
    atomic_write(out / "rosais.json", json.dumps(payload, indent=2) + "\n")
    print(f"{'rank':>4}  {'layer':>5}  RoSais")
    for rank, layer in enumerate(importance.ranking(), start=1):
        print(f"{rank:>4}  {layer:>5}  {importance.scores[layer]:+.4f}")
    print(f"\nscores: {out / 'rosais.json'}")
    return 0
