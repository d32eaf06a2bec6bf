"""RoSais (router safety importance): how much masking one router raises the affirmative start.

For router l and question Q, S random masks (-inf outside a random top-k subset, on the prompt
tokens) are drawn as S rows of one batch; the score is max_s [log p(aff | Q, masked l) - log p(aff | Q)],
averaged over questions. Forward passes only: the layers before l run once for the S samples
(`routing.repeated_from`), and only the last position's logits are computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from moe_defense.data.prompts import Prompt
from moe_defense.models.loading import LoadedModel
from moe_defense.routing import RouterMask, intervene, repeated_from
from moe_defense.runner.generation import encode_prompts


class RosaisConfig(BaseModel):
    """Settings of the RoSais router ranking."""

    model_config = ConfigDict(extra="forbid")

    samples: int = Field(16, ge=1, description="random masks drawn per router and question (S1)")
    affirmative: list[str] = Field(
        default_factory=lambda: ["Sure", "sure", "Here", "here"],
        min_length=1,
        description="words whose first token marks an affirmative start",
    )
    seed: int = Field(0, description="seed of the random masks")
    prompts: int | None = Field(
        None,
        ge=1,
        description="score on the first n prompts only (None: all); the ranking is the model's, and each prompt "
        "costs ~S x layers / 2 forwards (~25 s at 30 layers on 2 cores)",
    )
    share_prefix: bool = Field(
        True,
        description="run the layers before the masked router once for the S samples (the same scores up to "
        "float rounding, about half the work); off: S full passes, as the published code does",
    )


@dataclass(frozen=True)
class RouterImportance:
    """Mean RoSais per MoE layer, with the per-question scores it averages."""

    scores: dict[int, float]
    per_prompt: dict[int, list[float]]

    def ranking(self) -> list[int]:
        """MoE layers, most safety-important first."""
        return sorted(self.scores, key=self.scores.get, reverse=True)


def affirmative_ids(loaded: LoadedModel, words: Sequence[str]) -> list[int]:
    ids = set()
    for word in words:
        tokens = loaded.tokenizer(word, add_special_tokens=False).input_ids
        if tokens and tokens[0] != loaded.tokenizer.unk_token_id:
            ids.add(tokens[0])
    return sorted(ids)


@torch.no_grad()
def rosais(
    loaded: LoadedModel, prompts: Sequence[Prompt], config: RosaisConfig | None = None, progress: bool = True
) -> RouterImportance:
    """Score every MoE router of `loaded` on the harmful `prompts` (the first `config.prompts` of them)."""
    config = config or RosaisConfig()
    prompts = prompts[: config.prompts]
    targets = affirmative_ids(loaded, config.affirmative)
    device = loaded.device

    def affirmative_log_prob(ids: torch.Tensor, *interventions) -> torch.Tensor:
        with intervene(loaded, *interventions):  # only the last position's logits are read
            logits = loaded.model(input_ids=ids, logits_to_keep=1).logits[:, -1].float()
        return torch.logsumexp(logits.log_softmax(-1)[:, targets], dim=-1)

    layers = loaded.adapter.moe_layers()
    per_prompt: dict[int, list[float]] = {layer: [] for layer in layers}
    encoded = encode_prompts(loaded, [p.text for p in prompts], None)
    for index, row in enumerate(tqdm(encoded, desc="rosais", unit="prompt", disable=not progress)):
        ids = torch.tensor(row, device=device)[None]
        base = float(affirmative_log_prob(ids)[0])
        for layer in layers:
            mask = RouterMask([layer], mode="random-k", seed=config.seed * 100_003 + index * 1_009 + layer)
            if config.share_prefix:  # the S masked samples share layers < `layer`
                with repeated_from(loaded, layer, config.samples):
                    masked = affirmative_log_prob(ids, mask)
            else:
                masked = affirmative_log_prob(ids.expand(config.samples, -1), mask)
            per_prompt[layer].append(float(masked.max()) - base)
    scores = {layer: sum(values) / len(values) for layer, values in per_prompt.items()}
    return RouterImportance(scores=scores, per_prompt=per_prompt)


def shared_rosais(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    config: RosaisConfig,
    cache: dict[tuple[str, tuple[str, ...]], RouterImportance],
    progress: bool = True,
) -> RouterImportance:
    """`rosais`, once per model phase for the same masks and scored prompts (`SharedCache.router_importance`):
    a router-mask sweep over n and the report's routing statistics rank the routers once between them."""
    scored = prompts[: config.prompts]
    key = (config.model_dump_json(exclude={"prompts"}), tuple(p.id for p in scored))
    if key not in cache:
        cache[key] = rosais(loaded, scored, config, progress)
    return cache[key]
