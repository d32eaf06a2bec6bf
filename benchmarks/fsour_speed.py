"""F-SOUR `reference` vs `fast` on the same prompts, budget and seed.

Part 1 (default `--model organism`): single-shot ASR judged by the content-aware organism judge,
forward passes and wall time of each mode, and their ratios (target: fast ASR >= reference ASR at
<= 1/4 of the forward passes and <= 1/4 of the wall time).
Part 2 (`--wide-model tiny:olmoe`, 64 experts top-8 like OLMoE): the route space is large, so it
compares the target log-probability each mode reaches per forward pass.

The last line printed is one JSON object with every figure and ratio.
"""

from __future__ import annotations

import argparse
import json
import time

import moe_defense
from moe_defense.attacks import AttackContext, Fsour, FsourConfig
from moe_defense.data.prompts import Prompt, load_prompts
from moe_defense.models import ADAPTERS, build_tiny
from moe_defense.runner.generation import GenerationConfig


def run_mode(loaded, prompts, mode: str, args, judge: str | None) -> dict:
    config = FsourConfig(
        mode=mode, candidates=args.candidates, restarts=0, budget=args.budget, seed=args.seed, judge=judge
    )
    attack = Fsour(config)
    started = time.perf_counter()
    results = attack.run(
        loaded, prompts, AttackContext(generation=GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=1))
    )
    seconds = time.perf_counter() - started
    return {
        "asr": sum(r.extra["single_shot_success"] for r in results) / len(results),
        "forward_passes": sum(r.extra["forward_passes"] for r in results),
        "sequences": sum(r.extra["sequences"] for r in results),
        "seconds": round(seconds, 2),
        "mean_objective": sum(r.artifact.objective for r in results) / len(results),
        "mean_forced_pairs": sum(r.artifact.num_forced_pairs for r in results) / len(results),
        "mean_objective_gain": sum(r.extra["objective_gain"] for r in results) / len(results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--data", default="demo-harmful")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--budget", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--judge", default="organism", help="in-loop judge of both modes (none: P(target) decides)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--wide-model", default="tiny:olmoe")
    parser.add_argument("--wide-experts", type=int, default=64)
    parser.add_argument("--wide-top-k", type=int, default=8)
    args = parser.parse_args()

    figures: dict = {"model": args.model, "prompts": args.limit, "candidates": args.candidates, "budget": args.budget}
    loaded = moe_defense.load_model(args.model)
    prompts = load_prompts(args.data, limit=args.limit, seed=args.seed).prompts
    for mode in ("reference", "fast"):
        figures[mode] = run_mode(loaded, prompts, mode, args, judge=None if args.judge == "none" else args.judge)
        print(mode, figures[mode], flush=True)
    ref, fast = figures["reference"], figures["fast"]
    figures["fast_vs_reference_forward_ratio"] = round(fast["forward_passes"] / ref["forward_passes"], 3)
    figures["fast_vs_reference_wall_ratio"] = round(fast["seconds"] / ref["seconds"], 3)
    figures["fast_minus_reference_asr"] = round(fast["asr"] - ref["asr"], 3)

    if args.wide_model:
        model_type = args.wide_model.removeprefix("tiny:")
        experts_key = ADAPTERS.get(model_type).num_experts_key
        wide = build_tiny(model_type, **{experts_key: args.wide_experts, "num_experts_per_tok": args.wide_top_k})
        wide_prompts = [
            Prompt(f"w{i}", p.text, {"target": p.metadata.get("target", "Sure, here is")})
            for i, p in enumerate(prompts[:2])
        ]
        for mode in ("reference", "fast"):
            result = run_mode(wide, wide_prompts, mode, args, judge=None)
            result["objective_gain_per_1k_forward"] = round(
                1000 * result["mean_objective_gain"] / max(1, result["forward_passes"]), 4
            )
            figures[f"wide_{mode}"] = result
            print(f"wide {mode}", result, flush=True)
        figures["wide_fast_vs_reference_forward_ratio"] = round(
            figures["wide_fast"]["forward_passes"] / figures["wide_reference"]["forward_passes"], 3
        )
        figures["wide_fast_vs_reference_gain_per_forward_ratio"] = round(
            figures["wide_fast"]["objective_gain_per_1k_forward"]
            / max(1e-9, figures["wide_reference"]["objective_gain_per_1k_forward"]),
            3,
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
