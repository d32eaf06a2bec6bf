"""GraniteMoE: top-k on logits, softmax over the winners; the block lives at `block_sparse_moe`."""

from __future__ import annotations

from moe_defense.models.adapters.base import RouterAdapter, register_adapter
from moe_defense.models.scoring import topk_softmax


@register_adapter
class GraniteMoeAdapter(RouterAdapter):
    """IBM Granite 3.x MoE."""

    model_type = "granitemoe"
    scoring = "topk-then-softmax"
    block_attr = "block_sparse_moe"
    router_attr = "router"
    tiny_overrides = {"num_local_experts": 4, "num_experts_per_tok": 2}

    def select(self, router, logits, blocked, out_dtype, top_k=None):
        return topk_softmax(logits, blocked, top_k or self.top_k, out_dtype=out_dtype)
