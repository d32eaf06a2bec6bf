"""RoSais with the shared layer prefix vs the published algorithm's S full passes, side by side, and how few
prompts rank the routers as all of them do.

For every MoE router l and prompt, RoSais scores S random masks of l. A mask at l cannot change what the
layers before l compute, so `share_prefix` runs them once and repeats their output S times at l
(`routing.repeated_from`); both paths read only the last position's logits. Same prompts, seeds and
samples; prints each path's wall seconds, the ratio, the largest score difference and whether the
router ranking is the same. Default: organism-smol (30 routers), 2 held-out prompts.

`--subsets 4,8,16` (with `--paths shared --limit 32`): the ranking `RosaisConfig.prompts: k` gives (the first k
prompts' scores, which the masks' per-position seeds make the same as in the whole run) against the whole
set's: top-1 and top-2 the same, Spearman's rho. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import moe_defense
from moe_defense.attacks.rosais import RosaisConfig, RouterImportance, rosais
from moe_defense.data.prompts import load_prompts


def spearman(first: list[int], second: list[int]) -> float:
    """Spearman's rho of two rankings of the same routers (no ties)."""
    position = {layer: i for i, layer in enumerate(second)}
    n = len(first)
    return 1 - 6 * sum((i - position[layer]) ** 2 for i, layer in enumerate(first)) / (n * (n * n - 1))


def subset_agreement(importance: RouterImportance, k: int) -> dict:
    """The ranking of the first k prompts' scores against the whole run's."""
    whole = importance.ranking()
    subset = RouterImportance(
        scores={layer: sum(values[:k]) / k for layer, values in importance.per_prompt.items()},
        per_prompt={layer: values[:k] for layer, values in importance.per_prompt.items()},
    ).ranking()
    return {
        "prompts": k,
        "top1_same": subset[0] == whole[0],
        "top2_same": set(subset[:2]) == set(whole[:2]),
        "top2": subset[:2],
        "spearman": round(spearman(subset, whole), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="organism-smol")
    parser.add_argument("--data", default="smol-harmful")
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--samples", type=int, default=16, help="masks per router and prompt (S1 = 16 published)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paths", default="full,shared", help="full, shared, or both (the side-by-side ratio)")
    parser.add_argument("--subsets", default="", help="comma-separated prompt counts k < --limit to rank on")
    args = parser.parse_args()
    loaded = moe_defense.load_model(args.model)
    prompts = load_prompts(args.data, split="test", limit=args.limit, seed=args.seed).prompts
    figures, importance = {}, {}
    for path in args.paths.split(","):
        config = RosaisConfig(samples=args.samples, seed=args.seed, share_prefix=path == "shared")
        started = time.perf_counter()
        importance[path] = rosais(loaded, prompts, config, progress=False)
        figures[path] = {"seconds": round(time.perf_counter() - started, 2)}
        print(f"{path}: {figures[path]['seconds']} s", flush=True)
    result = {
        "model": args.model,
        "n_prompts": len(prompts),
        "routers": len(next(iter(importance.values())).scores),
        "samples": args.samples,
        "threads": torch.get_num_threads(),
        **figures,
    }
    if {"full", "shared"} <= set(importance):
        full, shared = importance["full"], importance["shared"]
        result["wall_ratio"] = round(figures["shared"]["seconds"] / figures["full"]["seconds"], 3)
        result["max_score_difference"] = max(
            abs(a - b)
            for layer, values in full.per_prompt.items()
            for a, b in zip(values, shared.per_prompt[layer], strict=True)
        )
        result["same_ranking"] = full.ranking() == shared.ranking()
    measured = next(iter(importance.values()))
    result["top2"] = measured.ranking()[:2]
    result["subsets"] = [subset_agreement(measured, int(k)) for k in args.subsets.split(",") if k]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
