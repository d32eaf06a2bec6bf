"""Random training sequences for the trainer tests (token ids only: no tokenizer involved)."""

from __future__ import annotations

import torch

from moe_defense.data.prompts import Prompt
from moe_defense.defenses.examples import TrainingSequence
from moe_defense.runner.process import ProcessInfo

INFO = ProcessInfo(rank=0, world=1, device=None)


def random_sequences(
    n: int, prefix: str, seed: int, target: str = "Sure", varied_lengths: bool = True
) -> list[TrainingSequence]:
    """`n` seeded sequences: prompts of 6 tokens (6-8 with `varied_lengths`), answers of 5."""
    generator = torch.Generator().manual_seed(seed)
    return [
        TrainingSequence(
            Prompt(id=f"{prefix}-{i}", text=f"{prefix} {i}", metadata={"target": target}),
            torch.randint(3, 200, (6 + (i % 3 if varied_lengths else 0),), generator=generator),
            torch.randint(3, 200, (5,), generator=generator),
        )
        for i in range(n)
    ]
