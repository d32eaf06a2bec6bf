"""HF `Trainer` settings every training run here shares (organism SFT and router hardening), and the
mixed precision a run on bf16/fp16 weights trains in."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch

from moe_defense.errors import ConfigError


def trainer_defaults(
    *, steps: int, batch_size: int, learning_rate: float, seed: int, precision: torch.dtype = torch.float32
) -> dict[str, Any]:
    """Cosine schedule with 5% warm-up, AdamW, ten log lines, no reporting. The precision flags follow the
    frozen weights' dtype (`precision`): bf16/fp16 mixed precision over fp32 trainable tensors, or fp32."""
    return {
        "max_steps": steps,
        "per_device_train_batch_size": batch_size,
        "learning_rate": learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": max(1, steps // 20),
        "weight_decay": 0.0,
        "optim": "adamw_torch",
        "bf16": precision == torch.bfloat16,
        "fp16": precision == torch.float16,
        "use_cpu": not torch.cuda.is_available(),
        "seed": seed,
        "data_seed": seed,
        "logging_steps": max(1, steps // 10),
        "report_to": [],
        "dataloader_num_workers": 0,
        "disable_tqdm": False,
    }


def check_precision(precision: torch.dtype) -> None:
    """fp16 training needs a loss scaler, which HF Trainer only has on CUDA."""
    if precision == torch.float16 and not torch.cuda.is_available():
        raise ConfigError(
            "float16 weights train only on CUDA (loss scaling); load the model with dtype bfloat16 or float32 on CPU."
        )


def master_weights(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Hold the trainable tensors in fp32 (and so their optimizer state): updates far below bf16's
    resolution accumulate instead of rounding away. The same Parameter objects, so hooks and names hold."""
    for parameter in parameters:
        if parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


def cast_to(parameters: Iterable[torch.nn.Parameter], dtype: torch.dtype) -> None:
    """Back to the checkpoint's dtype once trained: the hardened model is stored (and verified) as it ships."""
    for parameter in parameters:
        if parameter.dtype != dtype:
            parameter.data = parameter.data.to(dtype)


def mixed_precision(device: torch.device, precision: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to the frozen weights' dtype where fp32 trainable tensors meet them (a no-op in fp32)."""
    if precision == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision)
