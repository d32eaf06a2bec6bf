"""gpt-oss: biased router, top-k on logits, softmax over the winners."""

from __future__ import annotations

from moe_defense.models.adapters.base import RouterAdapter, register_adapter
from moe_defense.models.scoring import topk_softmax


@register_adapter
class GptOssAdapter(RouterAdapter):
    """gpt-oss-20b, gpt-oss-120b."""

    model_type = "gpt_oss"
    scoring = "topk-then-softmax"
    router_attr = "router"
    expert_input_axis = -2  # experts compute x @ W
    tiny_overrides = {
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "intermediate_size": 64,
        "head_dim": 16,
        "sliding_window": 16,
        "layer_types": ["sliding_attention", "full_attention"],
        "max_position_embeddings": 131072,  # = YaRN factor x original context, silences a rope warning
    }

    def select(self, router, logits, blocked, out_dtype, top_k=None):
        return topk_softmax(logits, blocked, top_k or self.top_k, out_dtype=out_dtype)
