"""GCG with batched candidate scoring vs one candidate per forward: same prompts, seed and candidates.

Both runs make the same search (same gradient, same candidate draws, same accepted swaps), so the final
suffix and loss must agree (asserted); only the scoring differs: B candidates in one forward from the
prefix KV cache, or B forwards of one candidate each. Prints the wall time of the whole search and of
candidate scoring alone, and their ratios (target: >= 5x on 2 cores).

The last line printed is one JSON object with every figure and ratio.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import moe_defense
from moe_defense.attacks import AttackContext
from moe_defense.attacks.gcg import Gcg, GcgConfig, SuffixSearch
from moe_defense.data.prompts import load_prompts

SCORING = {"seconds": 0.0}
_score = SuffixSearch.score


def timed_score(self: SuffixSearch, suffixes: torch.Tensor):
    started = time.perf_counter()
    try:
        return _score(self, suffixes)
    finally:
        SCORING["seconds"] += time.perf_counter() - started


def run(loaded, prompts, config: GcgConfig) -> dict:
    SCORING["seconds"] = 0.0
    started = time.perf_counter()
    results = Gcg(config).run(loaded, prompts, AttackContext())
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "scoring_seconds": round(SCORING["seconds"], 3),
        "queries": sum(r.extra["queries"] for r in results),
        "forward_calls": sum(r.extra["forward_calls"] for r in results),
        "sequences": sum(r.extra["sequences"] for r in results),
        "sequence_equivalents": sum(r.extra["sequence_equivalents"] for r in results),
        "suffixes": [r.extra["suffix"] for r in results],
        "losses": [r.extra["loss"] for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--data", default="demo-harmful")
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--search-width", type=int, default=64)
    parser.add_argument("--query-budget", type=int, default=500)
    parser.add_argument("--suffix-length", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    SuffixSearch.score = timed_score  # type: ignore[method-assign]
    loaded = moe_defense.load_model(args.model)
    prompts = load_prompts(args.data, split="test", limit=args.limit, seed=args.seed).prompts
    figures: dict = {
        "model": args.model,
        "prompts": len(prompts),
        "search_width": args.search_width,
        "query_budget": args.query_budget,
        "suffix_length": args.suffix_length,
        "threads": torch.get_num_threads(),
    }
    for name, batched in (("batched", True), ("one_per_forward", False)):
        config = GcgConfig(
            suffix_length=args.suffix_length,
            search_width=args.search_width,
            query_budget=args.query_budget,
            seed=args.seed,
            batched=batched,
        )
        figures[name] = run(loaded, prompts, config)
        print(name, figures[name], flush=True)
    fast, slow = figures["batched"], figures["one_per_forward"]
    assert fast["suffixes"] == slow["suffixes"], "batched and one-per-forward scoring took different searches"
    assert all(abs(a - b) <= 1e-3 for a, b in zip(fast["losses"], slow["losses"], strict=True))
    figures["same_result"] = True
    figures["wall_speedup"] = round(slow["seconds"] / fast["seconds"], 2)
    figures["scoring_speedup"] = round(slow["scoring_seconds"] / fast["scoring_seconds"], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
