"""DeepSeek-V3: sigmoid scores, choice on score + `e_score_correction_bias`, group-limited top-k."""

from __future__ import annotations

from moe_defense.models.adapters.base import register_adapter
from moe_defense.models.adapters.deepseek_v2 import (
    _DEEPSEEK_TINY_ATTENTION,
    DeepseekV2Adapter,
)
from moe_defense.models.scoring import sigmoid_group_topk


@register_adapter
class DeepseekV3Adapter(DeepseekV2Adapter):
    """DeepSeek-V3, DeepSeek-R1, Kimi-K2-style checkpoints."""

    model_type = "deepseek_v3"
    scoring = "sigmoid-group-limited-topk"
    router_buffer_names = ("e_score_correction_bias",)
    tiny_overrides = {
        **_DEEPSEEK_TINY_ATTENTION,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "n_group": 4,
        "topk_group": 2,
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
    }

    def select(self, router, logits, blocked, out_dtype, top_k=None):
        weights, indices = sigmoid_group_topk(
            logits,
            blocked,
            top_k or self.top_k,
            correction_bias=router.e_score_correction_bias,
            num_groups=int(self.config.n_group),
            topk_group=int(self.config.topk_group),
            normalize=bool(self.config.norm_topk_prob),
            scale=float(self.config.routed_scaling_factor),
        )
        return weights.to(out_dtype), indices
