"""PhiMoE: sparsemixer top-2 (Gumbel-sampled, hence stochastic, in training mode)."""

from __future__ import annotations

from transformers.models.phimoe.modeling_phimoe import sparsemixer

from moe_defense.models.adapters.base import RouterAdapter, register_adapter


@register_adapter
class PhimoeAdapter(RouterAdapter):
    """Phi-3.5-MoE."""

    model_type = "phimoe"
    scoring = "sparsemixer-top2"
    router_attr = "router"
    tiny_overrides = {"num_local_experts": 4, "num_experts_per_tok": 2}

    def select(self, router, logits, blocked, out_dtype):
        if blocked is not None:
            logits = logits.masked_fill(blocked, float("-inf"))
        weights, indices = sparsemixer(
            logits, jitter_eps=router.router_jitter_noise, training=router.training, top_k=self.top_k
        )
        return weights.to(out_dtype), indices
