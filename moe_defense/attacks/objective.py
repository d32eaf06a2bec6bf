"""The unsafe-route objective: teacher-forced log-probability of an affirmative target string.

F-SOUR and RoSais both rank routes by how likely the model becomes to *start* complying
("Sure, here is how to ..."). Scoring is batched: row i of a batch carries candidate route i, so
N candidates for one prompt cost one forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from moe_defense.data.chat import format_chat
from moe_defense.models.loading import LoadedModel
from moe_defense.routing import ForcedRoute, intervene


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
        tokenizer = loaded.tokenizer
        text = format_chat(tokenizer, prompt, system_prompt)
        prompt_ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
        target_ids = tokenizer(" " + target if not target.startswith(" ") else target, add_special_tokens=False,
                               return_tensors="pt").input_ids[0]
        return cls(prompt_ids=prompt_ids, target_ids=target_ids)


class TargetObjective:
    """Counts forward passes and sequence evaluations, so search costs are measured, not guessed."""

    def __init__(self, loaded: LoadedModel, problem: TargetProblem, force_decode: bool = False) -> None:
        self.loaded = loaded
        self.problem = problem
        self.force_decode = force_decode
        self.forward_passes = 0
        self.sequences = 0

    @torch.no_grad()
    def score(self, routes: Mapping[int, torch.Tensor] | None, batch_size: int) -> torch.Tensor:
        """(N,) sum of target log-probs for N candidate routes; `routes[layer]` is (N, T, k), -1 = unforced."""
        device = self.loaded.device
        ids = self.problem.input_ids.to(device).expand(batch_size, -1)
        prompt_lengths = torch.full((batch_size,), self.problem.prompt_length)
        interventions = []
        if routes:
            scope = "all" if self.force_decode else "prefill"
            interventions.append(ForcedRoute(routes, scope=scope, prompt_lengths=prompt_lengths))
        with intervene(self.loaded, *interventions):
            logits = self.loaded.model(input_ids=ids).logits
        self.forward_passes += 1
        self.sequences += batch_size
        start = self.problem.prompt_length
        log_probs = torch.log_softmax(logits[:, start - 1 : -1].float(), dim=-1)
        target = self.problem.target_ids.to(device).expand(batch_size, -1)
        return log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1).sum(-1)
