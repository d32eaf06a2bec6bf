"""Mixtral: softmax over all experts, top-k, renormalised."""

from __future__ import annotations

from moe_defense.models.adapters.base import RouterAdapter, register_adapter
from moe_defense.models.scoring import softmax_topk


@register_adapter
class MixtralAdapter(RouterAdapter):
    """Mixtral-8x7B and its relatives."""

    model_type = "mixtral"
    scoring = "softmax-topk-renormalized"
    tiny_overrides = {"num_local_experts": 4, "num_experts_per_tok": 2}

    def select(self, router, logits, blocked, out_dtype, top_k=None):
        return softmax_topk(logits, blocked, top_k or self.top_k, normalize=True, out_dtype=out_dtype)
