"""A real MoE shape on one GPU: F-SOUR seconds per search, router-only seconds per training step, peak
GPU memory, and checkpoint bytes (router tensors only vs the full model).

The model is random-init from OLMoE-1B-7B's config (no download): hidden 2048, 16 layers, 64 experts
top-8, expert intermediate 1024, vocab 50304, ~6.9B parameters, bf16 on CUDA. F-SOUR runs on
`--prompts` demo prompts; training is the project's `train_routers` (HF Trainer, the hardening
objective) for `--steps` steps against the routes F-SOUR finds first. Exits 2 with one line where there
is no CUDA device. `--device cpu --tiny` is a smoke run of the same path on a small shape.

    python benchmarks/gpu_scale.py                      # on a GPU machine
    python benchmarks/gpu_scale.py --device cpu --tiny  # anywhere

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, OlmoeConfig, TrainerCallback

from moe_defense.attacks import AttackContext, Fsour, FsourConfig
from moe_defense.data.prompts import load_prompts
from moe_defense.defenses.examples import to_sequences
from moe_defense.defenses.patch import save_router_patch
from moe_defense.defenses.trainer import HardeningConfig, train_routers
from moe_defense.models.adapters import adapter_for
from moe_defense.models.loading import LoadedModel
from moe_defense.models.tokenizer import byte_level_tokenizer
from moe_defense.runner.generation import GenerationConfig
from moe_defense.runner.process import ProcessInfo

# allenai/OLMoE-1B-7B-0924 config.json (the shape; the weights are random)
OLMOE_1B_7B = dict(
    hidden_size=2048,
    intermediate_size=1024,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=16,
    num_experts=64,
    num_experts_per_tok=8,
    vocab_size=50304,
    max_position_embeddings=4096,
    rope_theta=10000.0,
    norm_topk_prob=False,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    num_experts=8,
    num_experts_per_tok=2,
    vocab_size=512,
    max_position_embeddings=512,
)
REFUSAL = "I cannot help with that request."
ANSWER = "Here is a short and helpful answer."


class StepTimer(TrainerCallback):
    """Wall seconds of every optimiser step (synchronised on CUDA so queued kernels are counted)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self._started)


def build(shape: dict, device: str, seed: int) -> LoadedModel:
    """Random-init OLMoE of `shape`, built on `device` (bf16 on CUDA, fp32 on CPU)."""
    tokenizer = byte_level_tokenizer()
    if len(tokenizer) > shape["vocab_size"]:
        raise ValueError(f"vocab_size {shape['vocab_size']} is below the tokenizer's {len(tokenizer)}")
    config = OlmoeConfig(
        **shape,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter_for(config), spec="random:olmoe-1b-7b-shape")


def peak_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a small shape of the same architecture (smoke run)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_scale: no CUDA device here; run it on a GPU machine, or --device cpu --tiny", file=sys.stderr)
        return 2

    shape = TINY if args.tiny else OLMOE_1B_7B
    loaded = build(shape, args.device, args.seed)
    parameters = sum(p.numel() for p in loaded.model.parameters())
    harmful = load_prompts("demo-harmful", limit=args.prompts, seed=args.seed).prompts
    benign = load_prompts("demo-benign", limit=args.prompts, seed=args.seed).prompts

    search = FsourConfig(candidates=args.candidates, force_decode=True, budget=args.budget, restarts=0, seed=args.seed)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    Fsour(search).run(loaded, harmful, AttackContext(generation=GenerationConfig(max_new_tokens=16, batch_size=1)))
    search_seconds = time.perf_counter() - started
    search_peak = peak_gib(args.device)

    config = HardeningConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        refresh_every=0,  # steps only: the initial search gives the routes trained against
        refresh_prompts=args.prompts,
        route_search=search,
        max_response_tokens=16,
        save_steps=args.steps + 1,  # no Trainer checkpoint: its size is reported, not written
        seed=args.seed,
    )
    timer = StepTimer()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        facts = train_routers(
            loaded,
            to_sequences(loaded, harmful, [REFUSAL] * len(harmful), config.max_response_tokens),
            to_sequences(loaded, benign, [ANSWER] * len(benign), config.max_response_tokens),
            config,
            Path(tmp) / "train",
            info=ProcessInfo(rank=0, world=1, device=args.device if args.device == "cuda" else None),
            callbacks=[timer],
        )
        patch_bytes = save_router_patch(loaded, Path(tmp) / "router_patch.safetensors", loaded.fingerprint())
    train_peak = peak_gib(args.device)
    steady = timer.seconds[1:] or timer.seconds  # the first step also builds optimiser state

    figures = {
        "model": "OLMoE-1B-7B shape (random init)" if not args.tiny else "tiny OLMoE (smoke)",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
        "parameters": parameters,
        "router_parameters": sum(p.numel() for p in loaded.adapter.router_parameters(loaded.model).values()),
        "prompts": len(harmful),
        "fsour": {"candidates": args.candidates, "budget": args.budget},
        "seconds_per_search": round(search_seconds / len(harmful), 3),
        "steps": facts["steps"],
        "batch_size": args.batch_size,
        "seconds_per_step": round(statistics.median(steady), 3),
        "first_step_seconds": round(timer.seconds[0], 3),
        "losses": [round(entry["loss"], 4) for entry in facts["log"]],
        "peak_gpu_gib_search": search_peak,
        "peak_gpu_gib_train": train_peak,
        "router_patch_bytes": patch_bytes,
        "full_model_bytes": sum(t.numel() * t.element_size() for t in loaded.model.state_dict().values()),
    }
    figures["router_vs_full_bytes"] = round(figures["router_patch_bytes"] / figures["full_model_bytes"], 6)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
