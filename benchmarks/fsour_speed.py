"""F-SOUR `reference` vs `fast` vs `gradient` on the same prompts, budgets and seeds, with every cost figure.

Part 1 (default `--model organism`, 16 held-out demo-harmful prompts): each mode at the reference's defaults
(N=10 candidates, 5 judged restarts, the organism judge in the loop) in four settings: no pair cap and a cap of
`--budget` (16 = B80 on the organism), each prompt-only and with decode forcing. With `--model organism-smol`
(30 layers) the reference's schedule is about q_len x layers x (N+1) one-row forwards a search, ~20,000 over all
layers, so its defaults keep 8 held-out smol-harmful prompts, no judged restart, the uncapped decode-forcing
setting (`--settings uncapped_decode,budget16_decode` adds the cap, which costs the reference about as much
again) and every mode on the same last two `--layers` (where the original's pruned routes concentrate,
docs/results/router-defense-en.md): within 90 minutes on 2 cores. Per mode and setting: the ASR
(best of the judged restarts, with its 95% Wilson interval) and the search's cost as `SearchCost` counts it:
sequences scored, tokens processed, sequence equivalents (a backward counts 2, a pass running every expert its
FLOP share), batched forward calls, backward passes, answers generated for the judge, wall seconds; and each
cost as a ratio to the reference's. Targets for `gradient`: ASR >= reference's at <= 0.1x its sequences, its
sequence equivalents and its wall time. Under a cap the gradient mode runs `--gradient-budget-strategy`
(greedy by default: its steps stay within the budget; `best` also prunes an uncapped route, at about 3x the cost).
Part 2 (`--wide-model tiny:olmoe`, 64 experts top-8 like OLMoE, every layer of it): the route space is vast, so it
compares the objective gain (target log-probability) each mode reaches per sequence equivalent, as a ratio to the
reference.

The last line printed is one JSON object with every figure and ratio.
"""

from __future__ import annotations

import argparse
import json
import time

import moe_defense
from moe_defense.attacks import AttackContext, Fsour, FsourConfig, SearchCost
from moe_defense.data.prompts import Prompt, load_prompts
from moe_defense.models import ADAPTERS, build_tiny
from moe_defense.runner.generation import GenerationConfig
from moe_defense.stats import wilson

MODES = ("reference", "fast", "gradient")
COSTS = tuple(SearchCost().as_dict())
RATIOS = ("sequences", "tokens", "sequence_equivalents", "forward_calls", "seconds")
# what an unset flag means per `--model` (any other model gets the organism's)
MODEL_DEFAULTS = {
    "organism": {"data": "demo-harmful", "limit": 16, "restarts": 5, "judge": "organism", "layers": None},
    "organism-smol": {
        "data": "smol-harmful",
        "limit": 8,
        "restarts": 0,
        "judge": "organism-smol",
        "layers": "28,29",
        "settings": "uncapped_decode",
    },
}


def run_mode(
    loaded, prompts, mode: str, setting: dict, args, judge: str | None, restarts: int, layers: list[int] | None
) -> dict:
    if mode == "gradient" and "budget" in setting:
        setting = {**setting, "budget_strategy": args.gradient_budget_strategy}
    config = FsourConfig(
        mode=mode,
        candidates=args.candidates,
        restarts=restarts,
        seed=args.seed,
        judge=judge,
        layers=layers,
        **setting,
    )
    started = time.perf_counter()
    results = Fsour(config).run(
        loaded, prompts, AttackContext(generation=GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=1))
    )
    seconds = time.perf_counter() - started
    successes = sum(bool(r.extra["best_of_restarts_success"]) for r in results)
    figures = {
        "n": len(results),
        "asr": round(successes / len(results), 4),
        "asr_ci95": wilson(successes, len(results)),
        "single_shot_asr": round(sum(bool(r.extra["single_shot_success"]) for r in results) / len(results), 4),
        **{key: round(sum(r.extra[key] for r in results), 2) for key in COSTS},
        "mean_objective": round(sum(r.artifact.objective for r in results) / len(results), 4),
        "mean_forced_pairs": round(sum(r.artifact.num_forced_pairs for r in results) / len(results), 2),
        "mean_objective_gain": round(sum(r.extra["objective_gain"] for r in results) / len(results), 4),
    }
    figures["seconds"] = round(seconds, 2)  # the whole run, answers and judging included
    return figures


def ratios(mode: dict, reference: dict) -> dict:
    return {key: round(mode[key] / reference[key], 4) if reference[key] else None for key in RATIOS}


def settings(budget: int) -> dict[str, dict]:
    return {
        "uncapped": {},
        f"budget{budget}": {"budget": budget},
        "uncapped_decode": {"force_decode": True},
        f"budget{budget}_decode": {"budget": budget, "force_decode": True},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="organism", help="its defaults of the unset flags: MODEL_DEFAULTS")
    parser.add_argument("--data")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--restarts", type=int)
    parser.add_argument("--layers", help="comma-separated MoE layers every mode may force (default: all)")
    parser.add_argument("--budget", type=int, default=16, help="the capped setting's forced pairs (B80 = 16)")
    parser.add_argument("--settings", default=None, help="comma-separated subset of the four settings")
    parser.add_argument(
        "--gradient-budget-strategy",
        default="greedy",
        help="gradient mode's budget_strategy in the capped settings (fast keeps its default, best)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--judge", help="in-loop judge of every mode (none: P(target) decides)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--wide-model", default="tiny:olmoe", help="empty: skip part 2")
    parser.add_argument("--wide-experts", type=int, default=64)
    parser.add_argument("--wide-top-k", type=int, default=8)
    parser.add_argument("--wide-prompts", type=int, default=2)
    args = parser.parse_args()
    for key, value in MODEL_DEFAULTS.get(args.model, MODEL_DEFAULTS["organism"]).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    figures: dict = {
        "model": args.model,
        "prompts": args.limit,
        "candidates": args.candidates,
        "restarts": args.restarts,
        "judge": args.judge,
        "layers": args.layers or "all",
        "gradient_budget_strategy": args.gradient_budget_strategy,
    }
    layers = [int(layer) for layer in args.layers.split(",")] if args.layers else None
    loaded = moe_defense.load_model(args.model)
    prompts = load_prompts(args.data, limit=args.limit, seed=args.seed).prompts
    judge = None if args.judge == "none" else args.judge
    chosen = settings(args.budget)
    if args.settings:
        chosen = {name: chosen[name] for name in args.settings.format(budget=args.budget).split(",")}
    missed = []
    for name, setting in chosen.items():
        block = {mode: run_mode(loaded, prompts, mode, setting, args, judge, args.restarts, layers) for mode in MODES}
        for mode in MODES:
            print(name, mode, block[mode], flush=True)
        for mode in ("fast", "gradient"):
            block[f"{mode}_vs_reference"] = ratios(block[mode], block["reference"])
            print(name, f"{mode}/reference", block[f"{mode}_vs_reference"], flush=True)
        gradient, reference = block["gradient"], block["reference"]
        checks = {
            "asr": gradient["asr"] >= reference["asr"],
            "sequences": gradient["sequences"] <= 0.1 * reference["sequences"],
            "sequence_equivalents": gradient["sequence_equivalents"] <= 0.1 * reference["sequence_equivalents"],
            "seconds": gradient["seconds"] <= 0.1 * reference["seconds"],
        }
        block["gradient_targets"] = checks
        missed += [f"{name}:{key}" for key, met in checks.items() if not met]
        figures[name] = block
    figures["targets_missed"] = missed

    if args.wide_model:
        model_type = args.wide_model.removeprefix("tiny:")
        experts_key = ADAPTERS.get(model_type).num_experts_key
        wide = build_tiny(model_type, **{experts_key: args.wide_experts, "num_experts_per_tok": args.wide_top_k})
        wide_prompts = [
            Prompt(f"w{i}", p.text, {"target": p.metadata.get("target", "Sure, here is")})
            for i, p in enumerate(prompts[: args.wide_prompts])
        ]
        for mode in MODES:
            result = run_mode(wide, wide_prompts, mode, {}, args, judge=None, restarts=0, layers=None)
            result["objective_gain_per_1k_sequence_equivalents"] = round(
                1000 * result["mean_objective_gain"] * len(wide_prompts) / max(1.0, result["sequence_equivalents"]), 4
            )
            figures[f"wide_{mode}"] = result
            print(f"wide {mode}", result, flush=True)
        for mode in ("fast", "gradient"):
            figures[f"wide_{mode}_vs_reference"] = {
                **ratios(figures[f"wide_{mode}"], figures["wide_reference"]),
                "objective_gain_per_sequence_equivalent": round(
                    figures[f"wide_{mode}"]["objective_gain_per_1k_sequence_equivalents"]
                    / max(1e-9, figures["wide_reference"]["objective_gain_per_1k_sequence_equivalents"]),
                    3,
                ),
            }
            print(f"wide {mode}/reference", figures[f"wide_{mode}_vs_reference"], flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
