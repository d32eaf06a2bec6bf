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


def _cache_length(kwargs: dict[str, Any]) -> int:
    for name in ("cache", "past_key_values"):  # transformers 5 generate passes `cache`
        cache = kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    return 0


def _token_index(tokens: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """(B, T) real-token index of each input position, -1 for padding.

    Sources, most exact first: a 2D attention mask covering past + current tokens (generate passes
    one only when there is padding); 2D position ids (generate derives them from the mask, so they
    count real tokens); the cache length; else a fresh sequence.
    """
    batch, length = int(tokens.shape[0]), int(tokens.shape[1])
    device = tokens.device
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[1] >= length:
        past = int(mask.shape[1]) - length
        mask = mask.to(device=device, dtype=torch.long)
        position = mask.cumsum(dim=1) - 1
        window = slice(past, past + length)
        return torch.where(mask[:, window].bool(), position[:, window], torch.full_like(position[:, window], -1))
    positions = kwargs.get("position_ids")
    if isinstance(positions, torch.Tensor) and positions.dim() == 2 and positions.shape[-1] == length:
        return positions.to(device=device, dtype=torch.long).expand(batch, length)
    past = _cache_length(kwargs)
    return torch.arange(past, past + length, device=device).expand(batch, length)


def step_from_inputs(args: tuple, kwargs: dict[str, Any], previous: StepInfo | None) -> StepInfo:
    """Build the StepInfo of a forward call from its inputs; decoding steps inherit prompt lengths."""
    tokens = kwargs.get("input_ids", args[0] if args else None)
    if tokens is None:
        tokens = kwargs["inputs_embeds"]
    token_index = _token_index(tokens, kwargs)
    valid = token_index >= 0
    first = torch.where(valid, token_index, torch.full_like(token_index, 1 << 30)).min(dim=1).values
    starts_sequence = bool((first <= 0).all())
    if starts_sequence or previous is None or previous.batch_size != token_index.shape[0]:
        prompt_lengths = (token_index.max(dim=1).values + 1).clamp(min=0)
    else:
        prompt_lengths = previous.prompt_lengths
    return StepInfo(token_index=token_index, prompt_lengths=prompt_lengths)
