"""Qwen1.5/Qwen2-MoE: softmax top-k (optionally renormalised) plus an always-on shared expert."""

from __future__ import annotations

from moe_defense.models.adapters.base import RouterAdapter, register_adapter
from moe_defense.models.scoring import softmax_topk


@register_adapter
class Qwen2MoeAdapter(RouterAdapter):
    """Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B."""

    model_type = "qwen2_moe"
    scoring = "softmax-topk"
    num_experts_key = "num_experts"
    tiny_overrides = {
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 64,
    }

    def moe_layers(self) -> list[int]:
        step = int(self.config.decoder_sparse_step)
        dense = set(self.config.mlp_only_layers or [])
        if self.num_experts <= 0:
            return []
        return [i for i in range(self.num_layers) if i not in dense and (i + 1) % step == 0]

    def select(self, router, logits, blocked, out_dtype, top_k=None):
        return softmax_topk(
            logits, blocked, top_k or self.top_k, normalize=bool(self.config.norm_topk_prob), out_dtype=out_dtype
        )
