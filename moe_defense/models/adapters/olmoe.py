"""OLMoE: softmax top-k over 64 experts (top-8 in the released checkpoints)."""

from __future__ import annotations

from moe_defense.models.adapters.base import RouterAdapter, register_adapter
from moe_defense.models.scoring import softmax_topk


@register_adapter
class OlmoeAdapter(RouterAdapter):
    """OLMoE-1B-7B."""

    model_type = "olmoe"
    scoring = "softmax-topk"
    num_experts_key = "num_experts"
    tiny_overrides = {"num_experts": 8, "num_experts_per_tok": 2}

    def select(self, router, logits, blocked, out_dtype, top_k=None):
        return softmax_topk(
            logits, blocked, top_k or self.top_k, normalize=bool(self.config.norm_topk_prob), out_dtype=out_dtype
        )
