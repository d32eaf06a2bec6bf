"""Router-only vs full-parameter training step: wall time and peak memory, same model, batch and DeepSpeed config.

Each side runs in its own process (HF Trainer + DeepSpeed, config `--deepspeed`), so peak memory is
not shared: on GPU the CUDA peak, on CPU the rise of the process's peak RSS (VmHWM) from the moment
training starts (DeepSpeed initialisation, gradients, optimizer state and activations).
Targets (real-shape speed issue, on organism-smol): router-only <= 0.3x the wall and <= 0.2x the peak memory
of a full step.

    python benchmarks/router_vs_full_step.py [--hidden 512 --experts 8 --layers 4 --batch 4 --seq 64 --steps 8]
    python benchmarks/router_vs_full_step.py --model organism-smol --batch 8 --seq 64 --steps 6 --warmup 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WALL_TARGET, MEMORY_TARGET = 0.3, 0.2  # router-only step / all-parameter step


def _peak_rss_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(args: argparse.Namespace) -> None:
    from moe_defense.cli.launch import launch_environment

    launch_environment(deepspeed=True)
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    import moe_defense
    from moe_defense.models import build_tiny
    from moe_defense.models.params import set_trainable

    if args.model:
        loaded = moe_defense.load_model(args.model)
    else:
        loaded = build_tiny(
            "mixtral",
            seed=0,
            hidden_size=args.hidden,
            intermediate_size=2 * args.hidden,
            num_local_experts=args.experts,
            num_hidden_layers=args.layers,
            num_attention_heads=8,
            num_key_value_heads=8,
        )
    loaded.model.train()
    trainable = set_trainable(loaded.model, args.child)
    generator = torch.Generator().manual_seed(0)
    vocab = min(len(loaded.tokenizer), loaded.model.config.vocab_size)
    ids = torch.randint(3, vocab, (args.batch * (args.steps + 1), args.seq), generator=generator)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    step_seconds: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.started = time.perf_counter()

        def on_step_end(self, *_, **__):
            step_seconds.append(time.perf_counter() - self.started)

    training = TrainingArguments(
        output_dir=str(Path(args.work) / args.child),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=1e-4,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        report_to=[],
        save_strategy="no",
        deepspeed=str(REPO / args.deepspeed),
        disable_tqdm=True,
        logging_steps=10_000,
        seed=0,
    )
    trainer = Trainer(model=loaded.model, args=training, train_dataset=data, callbacks=[Timer()])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _peak_rss_reset()
        base = _rss_kib("VmRSS") * 1024
    trainer.train()
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available() else _rss_kib("VmHWM") * 1024) - base
    steady = step_seconds[args.warmup :]
    print(
        json.dumps(
            {
                "scope": args.child,
                "trainable_params": sum(p.numel() for p in trainable.values()),
                "all_params": sum(p.numel() for p in loaded.model.parameters()),
                "step_seconds_median": statistics.median(steady),
                "peak_bytes": peak,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="a model spec (e.g. organism-smol); default: the tiny Mixtral below"
    )
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--deepspeed", default="moe_defense/recipes/ds/zero2.json")
    parser.add_argument("--work", default="/tmp/moe-defense-bench-step")
    parser.add_argument("--child", choices=["routers", "all"])
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    results = {}
    for scope in ("routers", "all"):
        command = [sys.executable, __file__, *sys.argv[1:], "--child", scope]
        output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO).stdout
        results[scope] = json.loads(output.strip().splitlines()[-1])
        print(
            f"{scope:>8}: {results[scope]['trainable_params']:>10,} trainable of {results[scope]['all_params']:,}; "
            f"step {results[scope]['step_seconds_median'] * 1000:.1f} ms; peak "
            f"+{results[scope]['peak_bytes'] / 2**20:.1f} MiB"
        )
    wall = results["routers"]["step_seconds_median"] / results["all"]["step_seconds_median"]
    memory = results["routers"]["peak_bytes"] / results["all"]["peak_bytes"]
    print(
        json.dumps(
            {
                "router_vs_full_step_wall_ratio": round(wall, 3),
                "router_vs_full_peak_memory_ratio": round(memory, 3),
                "model": args.model or "tiny:mixtral",
                "wall_target_met": wall <= WALL_TARGET,
                "memory_target_met": memory <= MEMORY_TARGET,
                "router_step_ms": round(results["routers"]["step_seconds_median"] * 1000, 1),
                "full_step_ms": round(results["all"]["step_seconds_median"] * 1000, 1),
                "router_peak_mib": round(results["routers"]["peak_bytes"] / 2**20, 1),
                "full_peak_mib": round(results["all"]["peak_bytes"] / 2**20, 1),
                "deepspeed_config": args.deepspeed,
            }
        )
    )


if __name__ == "__main__":
    main()
