"""RoSais with the shared layer prefix vs the published algorithm's S full passes, side by side.

For every MoE router l and prompt, RoSais scores S random masks of l. A mask at l cannot change what the
layers before l compute, so `share_prefix` runs them once and repeats their output S times at l
(`routing.repeated_from`); both paths read only the last position's logits. Same prompts, seeds and
samples; prints each path's wall seconds, the ratio, the largest score difference and whether the
router ranking is the same. Default: organism-smol (30 routers), 2 held-out prompts. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import moe_defense
from moe_defense.attacks.rosais import RosaisConfig, rosais
from moe_defense.data.prompts import load_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="organism-smol")
    parser.add_argument("--data", default="smol-harmful")
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--samples", type=int, default=16, help="masks per router and prompt (S1 = 16 published)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    loaded = moe_defense.load_model(args.model)
    prompts = load_prompts(args.data, split="test", limit=args.limit, seed=args.seed).prompts
    figures, importance = {}, {}
    for shared in (False, True):
        config = RosaisConfig(samples=args.samples, seed=args.seed, share_prefix=shared)
        started = time.perf_counter()
        importance[shared] = rosais(loaded, prompts, config, progress=False)
        figures["shared" if shared else "full"] = {"seconds": round(time.perf_counter() - started, 2)}
        print(f"share_prefix={shared}: {figures['shared' if shared else 'full']['seconds']} s", flush=True)
    full, shared = importance[False], importance[True]
    result = {
        "model": args.model,
        "n_prompts": len(prompts),
        "routers": len(full.scores),
        "samples": args.samples,
        "threads": torch.get_num_threads(),
        **figures,
        "wall_ratio": round(figures["shared"]["seconds"] / figures["full"]["seconds"], 3),
        "max_score_difference": max(
            abs(a - b)
            for layer, values in full.per_prompt.items()
            for a, b in zip(values, shared.per_prompt[layer], strict=True)
        ),
        "same_ranking": full.ranking() == shared.ranking(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
