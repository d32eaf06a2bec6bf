"""Generation settings at a model's real shape: a static KV cache and the thread count, each against the default.

The suite's answers (every attack's judged responses, the utility and over-refusal sets) are batched greedy
generation, one decoding step at a time. Two settings could make it cheaper without changing an answer:
- `cache_implementation: static` (the model's `generation_config`): a preallocated cache instead of one that
  grows by concatenation each step;
- the torch thread count: `--threads` (default 1) against torch's default (one per core).
Each variant generates the same prompts (half held-out harmful, half benign, of `--model`'s data) in the
same batches; each figure is the best of `--repeats` interleaved runs; the answers are compared with the
default's. Run: `python benchmarks/generation_settings.py` (organism-smol, 32 prompts x 48 tokens, batch 32,
what a verification phase's answers are). The last line printed is one JSON object with every figure and ratio.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from generation_batching import timed  # this folder is the script's first import path

from moe_defense import load_model
from moe_defense.data import load_prompts
from moe_defense.models import LoadedModel
from moe_defense.runner import GenerationConfig, generate

DATA = {"organism-smol": ("smol-harmful", "smol-benign"), "organism": ("demo-harmful", "demo-benign")}


@contextmanager
def static_cache(loaded: LoadedModel) -> Iterator[None]:
    config = loaded.model.generation_config
    before = config.cache_implementation
    config.cache_implementation = "static"
    try:
        yield
    finally:
        config.cache_implementation = before


@contextmanager
def threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism-smol")
    parser.add_argument("--prompts", type=int, default=32, help="half held-out harmful, half benign")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="the thread count compared with torch's default")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each variant; the fastest counts")
    args = parser.parse_args()

    loaded = load_model(args.model)
    harmful, benign = DATA.get(args.model, DATA["organism"])
    half = args.prompts // 2
    texts = [p.text for name in (harmful, benign) for p in load_prompts(name, split="test", limit=half, seed=0).prompts]
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    variants = {
        "default": nullcontext,
        "static_cache": lambda: static_cache(loaded),
        f"threads_{args.threads}": lambda: threads(args.threads),
    }
    generate(loaded, texts[:2], config, progress=False)  # warm-up: first-call allocations and kernel selection
    runs: dict[str, list[tuple[float, list[str]]]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, setting in variants.items():
            with setting():
                runs[name].append(timed(lambda: generate(loaded, texts, config, progress=False)))
    best = {name: min(timings) for name, timings in runs.items()}
    baseline_s, baseline_answers = best["default"]
    figures: dict = {
        "model": loaded.spec,
        "prompts": len(texts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "default_threads": torch.get_num_threads(),
        "repeats": args.repeats,
    }
    for name, (seconds, answers) in best.items():
        figures[name] = {
            "seconds": round(seconds, 2),
            "vs_default": round(seconds / baseline_s, 3),
            "answers_identical": answers == baseline_answers,
            "answers_differing": sum(a != b for a, b in zip(answers, baseline_answers, strict=True)),
        }
        print(name, figures[name], flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
