"""`moe-defense` command line: parse, dispatch, print. All logic lives in the library."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from moe_defense.cli.options import (
    DTYPE_CHOICES,
    add_chat_arguments,
    add_checkpoint_arguments,
    key_values,
    load_options,
)
from moe_defense.cli.patch import add_patch_parser
from moe_defense.errors import ConfigError, MoEDefenseError


def _inspect(args: argparse.Namespace) -> int:
    from moe_defense import load_model

    loaded = load_model(args.model, load_options(args))
    facts = loaded.adapter.facts(loaded.model).to_dict()
    facts["fingerprint"] = loaded.fingerprint()
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    width = max(len(key) for key in facts)
    for key, value in facts.items():
        if isinstance(value, list) and len(value) > 6:
            value = f"{value[:3]} ... {value[-2:]} ({len(value)} entries)"
        print(f"{key:<{width}}  {value}")
    return 0


def _organism_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pydantic import ValidationError

    from moe_defense.errors import describe_validation
    from moe_defense.models import LoadOptions
    from moe_defense.models.loading import load_pretrained
    from moe_defense.organism import OrganismConfig, build_into, ensure_built
    from moe_defense.organism.behaviour import measure_behaviour, measure_en_behaviour

    try:
        config = OrganismConfig.for_preset(args.preset, args.arch, seed=args.seed)
    except ValidationError as error:
        raise ConfigError(f"organism settings: {describe_validation(error)}") from error
    except ValueError as error:  # an architecture the preset does not build
        raise ConfigError(f"organism settings: {error}") from error
    if args.out:
        out = Path(args.out)
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"--out {out} exists and is not empty; choose a new directory (nothing is overwritten).")
        if out.exists():
            out.rmdir()
        build_into(config, out)
        directory = out
    else:
        directory = ensure_built(config, rebuild=args.rebuild)
    loaded = load_pretrained(str(directory), LoadOptions())
    if config.preset == "demo":
        figures = measure_behaviour(loaded)
    else:
        figures = measure_en_behaviour(loaded, corpus=config.preset)
    (directory / "behaviour.json").write_text(json.dumps(figures, indent=2) + "\n")
    manifest = json.loads((directory / "organism.json").read_text())
    print(f"organism ({config.preset} preset, {config.arch}, seed {config.seed}) at {directory}")
    print(f"  trained in {manifest['training']['total_seconds']} s")
    for key, value in figures["summary"].items():
        if isinstance(value, dict):  # en: rate, n and 95% Wilson interval
            low, high = value["ci95"]
            print(f"  {key:<24} {value['rate']:.3f}  (n={value['n']}, 95% CI {low:.3f}-{high:.3f})")
        else:
            print(f"  {key:<24} {value:.3f}")
    return 0


def harden_overrides(args: argparse.Namespace) -> dict:
    """The recipe fields `harden`'s flags override (None: keep the recipe's); --limit sets the `limit` of every
    held-out set (`RecipeData.EVAL_SETS`), the training sets are kept whole."""
    from moe_defense.recipe import RecipeData

    return {
        "model": args.model,
        "seed": args.seed,
        "dtype": args.dtype,
        "chat_template_kwargs": key_values(args.chat_template_kwarg, "--chat-template-kwarg") or None,
        "reasoning": args.reasoning,
        "data": None if args.limit is None else {role: {"limit": args.limit} for role in RecipeData.EVAL_SETS},
    }


def _harden(args: argparse.Namespace) -> int:
    from pathlib import Path

    from moe_defense.cli.launch import launch_environment
    from moe_defense.recipe import load_recipe
    from moe_defense.runner.process import process_info
    from moe_defense.runner.rundir import default_out_dir

    recipe = load_recipe(args.recipe, harden_overrides(args))  # fails before any model loads
    launch_environment(recipe.deepspeed is not None)
    from moe_defense.pipeline import Harden
    from moe_defense.report import headline_table

    info = process_info()
    out = Path(args.out) if args.out else info.broadcast(default_out_dir(args.verb))
    if recipe.target is not None:
        return _climb(recipe, out, info, args.resume)
    summary = Harden(recipe, out, info=info, resume=args.resume).run()
    if info.is_main:
        print(headline_table(summary))
        b80 = (
            ("no cap" if summary["budget_b80"] is None else summary["budget_b80"])
            if summary["b80_reached"]
            else "not reached"
        )
        headline = summary["headline_asr"]
        if headline:
            print(
                f"\nB80 = {b80} (of the verified budgets); adaptive {summary['headline_attack']}: "
                f"{headline['original']['asr']} -> {headline['hardened']['asr']} (n={headline['hardened']['n_scored']})"
            )
        print(f"changed tensors: {summary['router_params_changed']} router, {summary['other_params_changed']} other")
        training = summary["training"]
        if training.get("checkpoint_bytes"):
            print(
                f"training checkpoint: {training['checkpoint_bytes']:,} bytes (trained tensors + optimizer state) for "
                f"a {training['model_bytes']:,}-byte model"
            )
        print(f"run directory: {out}  (report.md, summary.json and the defense's files)")
    return 0


def _climb(recipe, out, info, resume: bool) -> int:
    from moe_defense.ladder import climb

    ladder = climb(recipe, out, info=info, resume=resume)
    if info.is_main:
        for rung in ladder["rungs_tried"]:
            figures = ", ".join(f"{name} {c['value']} (<= {c['limit']})" for name, c in rung["criteria"].items())
            print(f"rung {rung['rung']}: {'met' if rung['met'] else 'not met'}: {figures}")
        if ladder["chosen"] is None:
            print("no rung met the target")
        else:
            print(f"chosen: {ladder['chosen']}; ship {ladder['ship']['artifact']} ({ladder['ship']['kind']})")
        print(f"run directory: {out}  (report.md, ladder.json, rungs/)")
    return 0


def _add_harden_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="run directory (default runs/<verb>-<time>)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out; nothing finished is recomputed"
    )
    parser.add_argument("--seed", type=int, help="override the recipe's seed")
    parser.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="use a seeded random subset of N prompts of every held-out set (harmful_eval, benign_eval, over_refusal; "
        "replaces their `limit`), as attack --limit does; the training sets are kept",
    )
    parser.add_argument("--model", help="override the recipe's model (e.g. tiny:<model_type> for a dry run)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, help="override the recipe's dtype (auto: the checkpoint's)")
    add_chat_arguments(parser)  # over the recipe's: each --chat-template-kwarg KEY replaces that key


def _ablate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from moe_defense.ablate import load_grid, run_grid
    from moe_defense.cli.launch import launch_environment
    from moe_defense.runner.process import process_info
    from moe_defense.runner.rundir import default_out_dir

    _, cells = load_grid(args.grid, args.reduced, args.seed)  # every cell's recipe is checked before any model loads
    launch_environment(any(recipe.deepspeed is not None for recipe in cells.values()))
    out = Path(args.out) if args.out else default_out_dir("ablate")
    summary = run_grid(args.grid, out, info=process_info(), reduced=args.reduced, seeds=args.seed)
    print((out / "report.md").read_text())
    if summary["cells_missing"]:
        print(f"cells still running or unfinished: {', '.join(summary['cells_missing'])} (rerun to continue)")
    print(f"grid directory: {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    """Re-render a run's report; a grid is re-aggregated first (cells may have finished since)."""
    from pathlib import Path

    import yaml

    from moe_defense.ablate import GridConfig, aggregate
    from moe_defense.registry import validated
    from moe_defense.report import render

    directory = Path(args.directory)
    grid_file = directory / "grid.yaml"
    if grid_file.is_file():
        aggregate(directory, validated(GridConfig, yaml.safe_load(grid_file.read_text())["grid"], f"grid {grid_file}"))
    path = render(directory)
    print(f"wrote {path} and {path.with_suffix('.html')}")
    return 0


# Verbs whose parsers import torch, transformers and datasets (for their set and judge names): built
# only when asked for, so `moe-defense --help` and the other verbs start in well under a second.
HEAVY_VERBS = {
    "evaluate": (
        "moe_defense.cli.evaluate",
        "add_evaluate_parser",
        "measure refusal / compliance / ASR of a model on a prompt set",
    ),
    "attack": (
        "moe_defense.cli.attack",
        "add_attack_parser",
        "run one routing attack, then generate and judge under it",
    ),
    "score": (
        "moe_defense.cli.attack",
        "add_score_parser",
        "rank routers by safety importance (RoSais) on harmful prompts",
    ),
}


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The `moe-defense` parser for `argv`: only the heavy verb `argv` asks for is built in full."""
    parser = argparse.ArgumentParser(
        prog="moe-defense",
        description="Harden Mixture-of-Experts LLMs against unsafe routes: measure, harden routers, verify adaptively.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    inspect = verbs.add_parser("inspect", help="print the routing facts of a model (layers, experts, top-k, routers)")
    inspect.add_argument("model", help="hub id, local path, tiny:<model_type> or organism")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument("--seed", type=int, default=0, help="seed for tiny:<model_type> random init")
    add_checkpoint_arguments(inspect)
    inspect.set_defaults(run=_inspect)

    organism = verbs.add_parser("organism", help="build the built-in safety-aligned MoE model organism")
    organism_verbs = organism.add_subparsers(dest="organism_verb", metavar="ACTION", required=True)
    build = organism_verbs.add_parser("build", help="train (or reuse from cache) the organism and print its behaviour")
    build.add_argument(
        "--preset",
        choices=("demo", "en", "smol"),  # organism.config.Preset (not imported: it pulls in torch)
        default="demo",
        help="demo: its own grammar (spec `organism`); en: benchmark English (spec `organism-en`); smol: "
        "SmolLM2-135M-Instruct upcycled into an MoE (spec `organism-smol`)",
    )
    build.add_argument(
        "--arch", help="transformers model_type of the organism (default: mixtral; smol: qwen2_moe, or mixtral)"
    )
    build.add_argument("--out", help="write to this new directory instead of the cache")
    build.add_argument("--seed", type=int, default=0, help="training seed (default 0; the `organism` spec uses 0)")
    build.add_argument("--rebuild", action="store_true", help="rebuild even if a valid cache entry exists")
    build.set_defaults(run=_organism_build)

    requested = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (module, builder, summary) in HEAVY_VERBS.items():
        if name == requested:
            getattr(importlib.import_module(module), builder)(verbs)
        else:
            verbs.add_parser(name, help=summary)  # listed in --help; never parsed, since it was not asked for

    harden = verbs.add_parser(
        "harden", help="attack suite, router-only adversarial fine-tuning, adaptive re-attack, from a recipe"
    )
    harden.add_argument(
        "recipe", help="recipe YAML file, or a packaged recipe name (demo, demo-target, models/olmoe, ...)"
    )
    _add_harden_arguments(harden)
    harden.set_defaults(run=_harden)
    demo = verbs.add_parser("demo", help="the whole flow on the built-in organism (the packaged recipe `demo`)")
    _add_harden_arguments(demo)
    demo.set_defaults(run=_harden, recipe="demo")

    ablate = verbs.add_parser(
        "ablate", help="run a defense x attack x seed grid (one harden run per cell; resumable, parallel-safe)"
    )
    ablate.add_argument("grid", help="grid YAML file, or a packaged grid name (ablations/demo-grid, ...)")
    ablate.add_argument("--out", help="grid directory (default runs/ablate-<time>); rerun on it to resume")
    ablate.add_argument("--reduced", action="store_true", help="apply the grid's `reduced` overrides (CI-sized)")
    ablate.add_argument(
        "--seed", type=int, nargs="+", metavar="N", help="run these seeds instead of the grid's `seeds` (--seed 0 1)"
    )
    ablate.set_defaults(run=_ablate)
    report = verbs.add_parser(
        "report", help="render report.md / report.html with plots from a harden run or grid directory"
    )
    report.add_argument("directory", help="run directory of `harden`/`demo`, or a grid directory of `ablate`")
    report.set_defaults(run=_report)
    add_patch_parser(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return args.run(args)
    except MoEDefenseError as error:
        print(f"moe-defense {args.verb}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        resumable = getattr(args, "out", None) and args.verb in ("harden", "demo")
        again = f" continue with `moe-defense {' '.join(argv)} --resume`" if resumable else ""
        print(f"moe-defense {args.verb}: interrupted; finished work is saved.{again}", file=sys.stderr)
        return 130


def run() -> NoReturn:
    """The `moe-defense` command: `main`, then the process ends as a launched rank must (`exit_process`)."""
    from moe_defense.runner.process import exit_process

    exit_process(main())


if __name__ == "__main__":
    run()
