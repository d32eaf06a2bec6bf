"""HF `Trainer` settings every training run here shares (organism SFT and router hardening)."""

from __future__ import annotations

from typing import Any

import torch


def trainer_defaults(*, steps: int, batch_size: int, learning_rate: float, seed: int) -> dict[str, Any]:
    """Cosine schedule with 5% warm-up, AdamW, fp32 (bf16 fails on CPU), ten log lines, no reporting."""
    return {
        "max_steps": steps,
        "per_device_train_batch_size": batch_size,
        "learning_rate": learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": max(1, steps // 20),
        "weight_decay": 0.0,
        "optim": "adamw_torch",
        "bf16": False,
        "fp16": False,
        "use_cpu": not torch.cuda.is_available(),
        "seed": seed,
        "data_seed": seed,
        "logging_steps": max(1, steps // 10),
        "report_to": [],
        "dataloader_num_workers": 0,
        "disable_tqdm": False,
    }
