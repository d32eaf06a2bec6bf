"""One padding rule for every batch the package builds: token rows to a rectangle, with their attention mask."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch.nn.utils.rnn import pad_sequence


def pad(
    rows: Sequence[Sequence[int] | torch.Tensor], value: int, side: Literal["left", "right"]
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` padded with `value` to the longest, and the mask of real tokens (1) vs padding (0).

    Left padding keeps every prompt's last token at the end, where decoder-only generation continues; right
    padding keeps real tokens at positions 0..n-1, the coordinates route artifacts and training labels use."""
    tensors = [torch.as_tensor(row, dtype=torch.long) for row in rows]
    padded = pad_sequence(tensors, batch_first=True, padding_value=value, padding_side=side)
    mask = pad_sequence([torch.ones_like(t) for t in tensors], batch_first=True, padding_value=0, padding_side=side)
    return padded, mask
