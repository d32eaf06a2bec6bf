"""DeepSeek-V2: softmax scores, greedy or group-limited top-k, scaled; dense first layers."""

from __future__ import annotations

from moe_defense.models.adapters.base import RouterAdapter, register_adapter
from moe_defense.models.scoring import softmax_group_topk, softmax_topk

_DEEPSEEK_TINY_ATTENTION = {
    "num_hidden_layers": 3,
    "first_k_dense_replace": 1,
    "moe_intermediate_size": 32,
    "n_shared_experts": 1,
    "kv_lora_rank": 16,
    "q_lora_rank": 32,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "head_dim": 8,
    "num_key_value_heads": 4,  # multi-head latent attention has no grouped KV heads
}


@register_adapter
class DeepseekV2Adapter(RouterAdapter):
    """DeepSeek-V2, DeepSeek-V2-Lite."""

    model_type = "deepseek_v2"
    scoring = "softmax-topk-scaled"
    num_experts_key = "n_routed_experts"
    tiny_overrides = {
        **_DEEPSEEK_TINY_ATTENTION,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "topk_method": "greedy",
        "routed_scaling_factor": 1.0,
    }

    def moe_layers(self) -> list[int]:
        return list(range(int(self.config.first_k_dense_replace or 0), self.num_layers))

    def select(self, router, logits, blocked, out_dtype, top_k=None):
        scale = float(self.config.routed_scaling_factor)
        if self.config.topk_method == "group_limited_greedy":
            weights, indices = softmax_group_topk(
                logits,
                blocked,
                top_k or self.top_k,
                num_groups=int(self.config.n_group),
                topk_group=int(self.config.topk_group),
                scale=scale,
            )
        else:
            weights, indices = softmax_topk(logits, blocked, top_k or self.top_k, normalize=False, scale=scale)
        return weights.to(out_dtype), indices
