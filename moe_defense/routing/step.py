"""Where each token of the current forward pass sits in its sequence.

Routing edits are addressed in *real-token* coordinates: token 0 is a sequence's first non-padding
token, whatever the padding side and whether the pass is a prefill or one decoding step. A forward
pre-hook on the model derives those coordinates from the attention mask before any router runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class StepInfo:
    """The token coordinates of one forward pass (batch B, T new tokens)."""

    token_index: torch.Tensor  # (B, T) long; -1 marks padding
    prompt_lengths: torch.Tensor  # (B,) real prompt tokens of the generation this pass belongs to
    past_length: int

    @property
    def batch_size(self) -> int:
        return int(self.token_index.shape[0])

    @property
    def length(self) -> int:
        return int(self.token_index.shape[1])

    @property
    def valid(self) -> torch.Tensor:
        return self.token_index >= 0

    @property
    def in_prompt(self) -> torch.Tensor:
        """(B, T) True where the token belongs to the prompt (prefill), False for padding and answers."""
        return self.valid & (self.token_index < self.prompt_lengths.unsqueeze(1))


def _past_length(kwargs: dict[str, Any]) -> int:
    cache = kwargs.get("past_key_values")
    if cache is None or not hasattr(cache, "get_seq_length"):
        return 0
    return int(cache.get_seq_length())


def step_from_inputs(args: tuple, kwargs: dict[str, Any], previous: StepInfo | None) -> StepInfo:
    """Build the StepInfo of a forward call from its inputs; decoding steps inherit prompt lengths."""
    tokens = kwargs.get("input_ids", args[0] if args else None)
    if tokens is None:
        tokens = kwargs["inputs_embeds"]
    batch, length = int(tokens.shape[0]), int(tokens.shape[1])
    device = tokens.device
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        past = int(mask.shape[1]) - length
        mask = mask.to(device=device, dtype=torch.long)
        position = mask.cumsum(dim=1) - 1
        window = slice(past, past + length)
        token_index = torch.where(mask[:, window].bool(), position[:, window], torch.full_like(position[:, window], -1))
    else:
        past = _past_length(kwargs)
        token_index = torch.arange(past, past + length, device=device).expand(batch, length)
    if past == 0 or previous is None or previous.batch_size != batch:
        prompt_lengths = (token_index.max(dim=1).values + 1).clamp(min=0)
    else:
        prompt_lengths = previous.prompt_lengths
    return StepInfo(token_index=token_index, prompt_lengths=prompt_lengths, past_length=past)
