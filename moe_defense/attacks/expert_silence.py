"""Expert silencing: block, at every token, the experts harmful prompts use far more than benign ones.

Expert-steering attacks find refusal-associated experts by contrasting routing statistics of harmful
and benign prompts, then deactivate them; no search per prompt, one mask for all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field

from moe_defense.attacks.base import Attack, AttackConfig, AttackContext, AttackResult, register_attack
from moe_defense.data.prompts import Prompt, load_prompts
from moe_defense.errors import ConfigError
from moe_defense.models.loading import LoadedModel
from moe_defense.routing import ExpertMask, Intervention, record_routing
from moe_defense.runner.generation import encode_prompts

# Long enough for any prompt plus answer the runner generates; positions past it are not silenced.
_MAX_POSITIONS = 8192


class ExpertSilenceConfig(AttackConfig):
    """Silence the `per_layer` most refusal-associated experts of each chosen layer."""

    per_layer: int = Field(1, ge=1, description="experts silenced per MoE layer")
    layers: list[int] | None = Field(None, description="MoE layers to silence in; None = all")
    benign_set: str | None = Field(
        None,
        description="registered set or file of benign prompts to contrast with "
        "(None: the run's benign prompts, e.g. a recipe's benign_eval, or the organism's own)",
    )
    benign_limit: int = Field(64, ge=1, description="benign prompts used for the contrast")
    benign_data_file: str | None = Field(None, description="local copy of a registered benign set")


def expert_usage(loaded: LoadedModel, texts: Sequence[str], layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """Per layer, the fraction of real prompt tokens routed to each expert."""
    usage = {layer: torch.zeros(loaded.adapter.num_experts) for layer in layers}
    for row in encode_prompts(loaded, texts, None):
        with torch.no_grad(), record_routing(loaded, layers=list(layers), keep_logits=False) as recorder:
            loaded.model(input_ids=torch.tensor(row, device=loaded.device)[None])
        for layer, route in recorder.trace().items():
            chosen = route.indices[route.valid].flatten().cpu()
            usage[layer] += torch.bincount(chosen, minlength=loaded.adapter.num_experts).float() / chosen.numel()
    return {layer: counts / max(1, len(texts)) for layer, counts in usage.items()}


def benign_prompts(
    attack: str, benign_set: str | None, limit: int, data_file: str | None, context: AttackContext
) -> Sequence[Prompt]:
    """An attack's benign prompts: its configured set, else the run's own (a ConfigError if neither)."""
    if benign_set is not None:
        return load_prompts(benign_set, limit=limit, data_file=data_file).prompts
    if context.benign is None:
        raise ConfigError(
            f"{attack} reads benign routing and this run has no benign prompts: "
            "set its benign_set (e.g. --attack-arg benign_set=jbb-benign)."
        )
    return context.benign[:limit]


@register_attack
class ExpertSilence(Attack[ExpertSilenceConfig]):
    """Block the experts most over-used on harmful prompts (relative to benign ones) everywhere."""

    name = "expert-silence"
    config_class = ExpertSilenceConfig

    def benign(self, context: AttackContext) -> Sequence[Prompt]:
        config = self.config
        return benign_prompts(self.name, config.benign_set, config.benign_limit, config.benign_data_file, context)

    def silenced(self, loaded: LoadedModel, prompts: Sequence[Prompt], context: AttackContext) -> dict[int, list[int]]:
        layers = (
            [loaded.adapter.layer_of(l) for l in self.config.layers]
            if self.config.layers
            else loaded.adapter.moe_layers()
        )
        harmful_usage = expert_usage(loaded, [p.text for p in prompts], layers)
        benign_usage = expert_usage(loaded, [p.text for p in self.benign(context)], layers)
        keep = loaded.adapter.num_experts - loaded.adapter.top_k  # never block so many that top-k is impossible
        count = min(self.config.per_layer, keep)
        return {layer: (harmful_usage[layer] - benign_usage[layer]).topk(count).indices.tolist() for layer in layers}

    def run(self, loaded: LoadedModel, prompts: Sequence[Prompt], context: AttackContext) -> list[AttackResult]:
        silenced = self.silenced(loaded, prompts, context)
        return [AttackResult(prompt_id=p.id, artifact=None, extra={"silenced": silenced}) for p in prompts]

    def interventions(self, loaded: LoadedModel, results: Sequence[AttackResult]) -> list[Intervention]:
        masks = {}
        for layer, experts in results[0].extra["silenced"].items():
            mask = torch.zeros(1, _MAX_POSITIONS, loaded.adapter.num_experts, dtype=torch.bool)
            mask[..., experts] = True
            masks[layer] = mask
        return [ExpertMask(masks, scope="all")]

    def summarize(self, results: Sequence[AttackResult]) -> dict[str, Any]:
        return {"silenced": results[0].extra["silenced"]} if results else {}
