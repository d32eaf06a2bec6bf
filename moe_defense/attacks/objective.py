"""The unsafe-route objective's input: a prompt and its affirmative target, tokenised once.

F-SOUR ranks routes by the teacher-forced log-probability of the target ("Sure, here is how to ...")
after the chat-formatted prompt; prompt and target are tokenised separately so the boundary is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moe_defense.data.prompts import Prompt
from moe_defense.models.loading import LoadedModel
from moe_defense.runner.generation import encode_prompts

DEFAULT_TARGET = "Sure, here is"


def prompt_target(prompt: Prompt) -> str:
    """The affirmative opening an unsafe route aims at: the prompt set's own (AdvBench `target`), else the default."""
    return str(prompt.metadata.get("target") or DEFAULT_TARGET)


@dataclass(frozen=True)
class TargetProblem:
    """A prompt and its affirmative target, tokenised once: prompt ids then target ids."""

    prompt_ids: torch.Tensor  # (P,)
    target_ids: torch.Tensor  # (L,)

    @property
    def prompt_length(self) -> int:
        return int(self.prompt_ids.numel())

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.target_ids])

    @classmethod
    def build(cls, loaded: LoadedModel, prompt: str, target: str, system_prompt: str | None = None) -> TargetProblem:
        prompt_ids = torch.tensor(encode_prompts(loaded, [prompt], system_prompt)[0])  # exactly as generation does
        spaced = target if target.startswith(" ") else " " + target
        target_ids = loaded.tokenizer(spaced, add_special_tokens=False, return_tensors="pt").input_ids[0]
        return cls(prompt_ids=prompt_ids, target_ids=target_ids)
