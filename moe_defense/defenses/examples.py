"""Training examples for hardening: the model's own refusals and benign answers, tokenised once.

Targets are the ORIGINAL model's greedy answers, not a corpus's: on harmful prompts the refusal the
model already gives (so hardening keeps its voice and only makes it robust), on benign prompts the
answer whose next-token distributions the utility term keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moe_defense.attacks.objective import TargetProblem, prompt_target
from moe_defense.data.prompts import Prompt
from moe_defense.errors import DataError
from moe_defense.judges import Judge, JudgeItem
from moe_defense.models.chat import end_of_turn_ids
from moe_defense.models.loading import LoadedModel
from moe_defense.models.padding import pad
from moe_defense.runner.generation import GenerationConfig, generate

IGNORE = -100  # label of positions that carry no loss (prompt, padding)


@dataclass(frozen=True)
class TrainingSequence:
    """Prompt ids then response ids (+ end of turn); the loss covers the response after its `unlabelled` tokens."""

    prompt: Prompt
    prompt_ids: torch.Tensor
    response_ids: torch.Tensor
    unlabelled: int = 0  # response tokens given, not trained (a recovery's compliant opening)

    @property
    def prompt_length(self) -> int:
        return int(self.prompt_ids.numel())

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids])

    @property
    def labels(self) -> torch.Tensor:
        labels = self.input_ids.clone()
        labels[: self.prompt_length + self.unlabelled] = IGNORE
        return labels


def to_sequences(
    loaded: LoadedModel, prompts: Sequence[Prompt], responses: Sequence[str], max_response_tokens: int
) -> list[TrainingSequence]:
    """Each response (its first `max_response_tokens` tokens) closed by the template's own end of turn
    (`<|im_end|>`, gpt-oss `<|return|>`; the EOS only where the template writes none)."""
    end = torch.tensor(end_of_turn_ids(loaded.tokenizer, loaded.chat.template_kwargs), dtype=torch.long)
    sequences = []
    for prompt, response in zip(prompts, responses, strict=True):
        problem = TargetProblem.build(loaded, prompt.text, response.strip())
        response_ids = torch.cat([problem.target_ids[:max_response_tokens], end])
        sequences.append(TrainingSequence(prompt, problem.prompt_ids, response_ids))
    return sequences


def own_refusals(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    judge: Judge,
    generation: GenerationConfig,
    max_response_tokens: int,
    fallback: str | None = None,
) -> list[TrainingSequence]:
    """The model's own answers to harmful `prompts`, kept where `judge` scores them as refusals.

    Prompts the model does not refuse are dropped, or, with `fallback`, trained towards that refusal
    text (hardening then also teaches refusals the model lacked: say so when you report results)."""
    responses = generate(loaded, [p.text for p in prompts], generation, progress=False)
    verdicts = judge.judge_batch([JudgeItem(p.text, r, p.metadata) for p, r in zip(prompts, responses, strict=True)])
    kept = []
    for prompt, response, verdict in zip(prompts, responses, verdicts, strict=True):
        if verdict.status == "scored" and not verdict.jailbroken:
            kept.append((prompt, response))
        elif fallback is not None:
            kept.append((prompt, fallback))
    if not kept:
        raise DataError(
            f"the model refused none of the {len(prompts)} harmful training prompts (judge {judge.name!r}); "
            "hardening trains the refusals the model already gives, so it needs a safety-aligned model "
            "(or set defense.refusal_fallback to a refusal text to train towards)."
        )
    return to_sequences(loaded, [p for p, _ in kept], [r for _, r in kept], max_response_tokens)


def recovery_sequences(loaded: LoadedModel, refusals: Sequence[TrainingSequence]) -> list[TrainingSequence]:
    """Each refusal behind the prompt's affirmative target ("sure , here is how to ..."), loss on the refusal.

    This is what an unsafe route does at attack time: it forces the prompt and the target's positions,
    the model emits the target, and every later position is routed by the router again. Trained under
    that route, the router learns to route those later positions back into the refusal."""
    sequences = []
    for sequence in refusals:
        target_ids = TargetProblem.build(loaded, sequence.prompt.text, prompt_target(sequence.prompt)).target_ids
        sequences.append(
            TrainingSequence(
                sequence.prompt,
                sequence.prompt_ids,
                torch.cat([target_ids, sequence.response_ids]),
                unlabelled=int(target_ids.numel()),
            )
        )
    return sequences


def own_answers(
    loaded: LoadedModel, prompts: Sequence[Prompt], generation: GenerationConfig, max_response_tokens: int
) -> list[TrainingSequence]:
    """The model's own greedy answers to benign `prompts` (the behaviour utility retention keeps)."""
    responses = generate(loaded, [p.text for p in prompts], generation, progress=False)
    return to_sequences(loaded, prompts, responses, max_response_tokens)


def collate(sequences: Sequence[TrainingSequence], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / labels / prompt_lengths of a right-padded batch."""
    input_ids, attention_mask = pad([s.input_ids for s in sequences], pad_id, "right")
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": pad([s.labels for s in sequences], IGNORE, "right")[0],
        "prompt_lengths": torch.tensor([s.prompt_length for s in sequences]),
    }
