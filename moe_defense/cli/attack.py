"""The `attack` and `score` verbs: validate everything, load the model, run, print a table.

Attack settings are not flags of their own: `--attack NAME --attack-arg key=value ...` fills the
attack's config class (values read as YAML: `budget=8`, `layers=[0,2]`, `judge=organism`,
`budget=null`), and `--sweep key=v1,v2,...` runs one attack per value, so a new attack needs no CLI edit.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from moe_defense.attacks.base import ATTACKS, AttackContext, AttackSpec
from moe_defense.attacks.rosais import RosaisConfig, rosais
from moe_defense.attacks.suite import run_attack
from moe_defense.cli.evaluate import (
    JudgedRun,
    PreparedRun,
    add_model_data_arguments,
    add_run_arguments,
    load_for_run,
    prepare_run,
    run_verb,
)
from moe_defense.cli.options import key_value, key_values, yaml_value
from moe_defense.data import Prompt, load_prompts
from moe_defense.registry import validated
from moe_defense.runner.rundir import RunDir, atomic_write


def add_attack_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("attack", description="Run one routing attack, then generate and judge under it.")
    add_run_arguments(parser)
    parser.add_argument("--attack", required=True, help=f"attack name ({', '.join(ATTACKS.names())})")
    parser.add_argument(
        "--attack-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a field of the attack's config (repeatable; VALUE is read as YAML), e.g. budget=8, force_decode=true",
    )
    parser.add_argument(
        "--sweep", metavar="KEY=V1,V2,...", help="one run per value of a config field, e.g. budget=1,2,4,8,null"
    )
    parser.set_defaults(run=run_attack_verb)


def attack_spec(args: argparse.Namespace) -> AttackSpec:
    """The attack spec from --attack, --attack-arg and --sweep; the run's --seed where the config has one."""
    attack_args = key_values(args.attack_arg, "--attack-arg")
    if args.attack in ATTACKS and "seed" in ATTACKS.get(args.attack).config_class.model_fields:
        attack_args.setdefault("seed", args.seed)
    sweep = {}
    if args.sweep:
        key, listed = key_value(args.sweep, "--sweep")
        sweep[key] = [yaml_value(value, f"--sweep {key}") for value in listed.split(",")]
    return validated(AttackSpec, {"name": args.attack, "args": attack_args, "sweep": sweep}, f"--attack {args.attack}")


def run_attack_verb(args: argparse.Namespace) -> int:
    def body(run: JudgedRun) -> dict[str, Any]:
        spec = attack_spec(args)  # every config of the sweep checked before loading
        attacks = spec.build()
        loaded = load_for_run(args, run)
        judges = run.judges(loaded)
        benign = load_prompts_or_none(loaded.benign_set)
        context = AttackContext(
            generation=run.gen_config, benign=benign, info=run.info
        )  # one context: a sweep shares its searches
        summaries = {}
        for label, attack in attacks:
            out = run.out if len(attacks) == 1 else run.out / label
            summaries[label] = run_attack(
                loaded, run.prompt_set, attack, judges, out_dir=out, context=context, resume=args.resume, label=label
            )
        if len(summaries) == 1:
            return next(iter(summaries.values()))
        merged = dict(next(iter(summaries.values())))
        merged["phases"] = {"original": {label: s["phases"]["original"][label] for label, s in summaries.items()}}
        RunDir(run.out).write_summary(merged)
        return merged

    return run_verb("attack", args, body)


def load_prompts_or_none(name: str | None) -> list[Prompt] | None:
    """The model's own benign set (the organism declares one), for attacks that contrast with benign routing."""
    return None if name is None else load_prompts(name).prompts


ROSAIS_FILE = "rosais.json"


def add_score_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "score", description="Rank routers by safety importance (RoSais) on harmful prompts."
    )
    add_model_data_arguments(parser)  # RoSais reads next-token log-probs: nothing is generated or judged
    parser.add_argument(
        "--samples", type=int, default=RosaisConfig().samples, help="random masks per router and prompt"
    )
    parser.set_defaults(run=run_score)


def run_score(args: argparse.Namespace) -> int:
    def body(run: PreparedRun) -> dict[str, Any]:
        config = validated(RosaisConfig, {"samples": args.samples, "seed": args.seed}, "RoSais", flag_style=True)
        loaded = load_for_run(args, run)
        run_dir, scores = RunDir(run.out), run.out / ROSAIS_FILE
        run_config = {
            "verb": "score",
            "model": loaded.spec,
            "model_fingerprint": loaded.fingerprint(),
            **run.extra_config,
            "rosais": config.model_dump(),
        }
        run_dir.check(run_config, resume=args.resume)  # a used --out needs --resume, and the same settings
        if scores.is_file():  # a resumed run that had finished: nothing is recomputed
            payload = json.loads(scores.read_text())
        else:
            importance = rosais(loaded, run.prompt_set.prompts, config)
            payload = {
                "model": loaded.spec,
                "model_fingerprint": run_config["model_fingerprint"],
                "prompt_set": run.prompt_set.name,
                "n_prompts": len(run.prompt_set.prompts),
                "config": config.model_dump(),
                "rosais": {str(layer): score for layer, score in importance.scores.items()},  # JSON keys
                "ranking": importance.ranking(),
            }
            if run.info.is_main:
                run_dir.write_config(run_config)
                atomic_write(scores, json.dumps(payload, indent=2) + "\n")
        return {"table": rosais_table(payload), "files": str(scores)}

    return run_verb(
        "score",
        args,
        body,
        render=lambda summary: f"{summary['table']}\n\nscores: {summary['files']}",
        prepare=prepare_run,
    )


def rosais_table(payload: dict[str, Any]) -> str:
    """The routers of a rosais.json payload, most safety-important first."""
    rows = [
        f"{rank:>4}  {layer:>5}  {payload['rosais'][str(layer)]:+.4f}"
        for rank, layer in enumerate(payload["ranking"], start=1)
    ]
    return "\n".join([f"{'rank':>4}  {'layer':>5}  RoSais", *rows])
