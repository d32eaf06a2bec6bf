"""Throughput of batched vs one-at-a-time greedy generation of the same prompts.

Batching amortises the per-step cost of a decoding step over the batch; with left padding and a KV
cache it changes no answer (checked here too). Each figure is the best of `--repeats` interleaved runs,
so load from other processes on a shared machine does not decide the ratio.
Run: `python benchmarks/generation_batching.py`. The last line printed is one JSON object with the
figures; the target is a ratio of at least 5.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from moe_defense import load_model
from moe_defense.data import load_prompts
from moe_defense.runner import GenerationConfig, generate


def timed(run: Callable[[], list[str]]) -> tuple[float, list[str]]:
    start = time.perf_counter()
    answers = run()
    return time.perf_counter() - start, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="tiny:mixtral", help="model spec (tiny:<model_type>, organism, hub id, path)"
    )
    parser.add_argument(
        "--prompts", type=int, default=32, help="prompts generated, half demo-harmful and half demo-benign"
    )
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each mode; the fastest counts")
    args = parser.parse_args()

    loaded = load_model(args.model)
    half = args.prompts // 2
    texts = [p.text for name in ("demo-harmful", "demo-benign") for p in load_prompts(name, limit=half, seed=0)]
    sequential = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=1)
    batched = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    generate(loaded, texts[:2], batched, progress=False)  # warm-up: first-call allocations and kernel selection

    sequential_runs, batched_runs = [], []
    for _ in range(args.repeats):
        sequential_runs.append(timed(lambda: generate(loaded, texts, sequential, progress=False)))
        batched_runs.append(timed(lambda: generate(loaded, texts, batched, progress=False)))
    (sequential_s, sequential_answers), (batched_s, batched_answers) = min(sequential_runs), min(batched_runs)
    figures = {
        "model": loaded.spec,
        "prompts": len(texts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "sequential_s": round(sequential_s, 3),
        "batched_s": round(batched_s, 3),
        "sequential_prompts_per_s": round(len(texts) / sequential_s, 3),
        "batched_prompts_per_s": round(len(texts) / batched_s, 3),
        "outputs_identical": batched_answers == sequential_answers,
        "batched_vs_sequential_throughput_ratio": round(sequential_s / batched_s, 2),
    }
    print(
        f"{len(texts)} prompts x {args.max_new_tokens} new tokens on {loaded.spec}: "
        f"one at a time {sequential_s:.2f} s, batches of {args.batch_size} {batched_s:.2f} s"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
