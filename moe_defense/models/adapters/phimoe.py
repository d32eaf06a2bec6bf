"""PhiMoE: sparsemixer top-2 (Gumbel-sampled, hence stochastic, in training mode)."""

from __future__ import annotations

from transformers.models.phimoe.modeling_phimoe import sparsemixer

from moe_defense.errors import RoutingError
from moe_defense.models.adapters.base import RouterAdapter, register_adapter


@register_adapter
class PhimoeAdapter(RouterAdapter):
    """Phi-3.5-MoE."""

    model_type = "phimoe"
    scoring = "sparsemixer-top2"
    router_attr = "router"
    fixed_top_k = True  # sparsemixer is defined for top-2 only
    tiny_overrides = {"num_local_experts": 4, "num_experts_per_tok": 2}

    def select(self, router, logits, blocked, out_dtype, top_k=None):
        if top_k not in (None, self.top_k):
            raise RoutingError(f"phimoe's sparsemixer routes exactly top-{self.top_k}; it cannot route top-{top_k}.")
        if blocked is not None:
            logits = logits.masked_fill(blocked, float("-inf"))
        weights, indices = sparsemixer(
            logits, jitter_eps=router.router_jitter_noise, training=router.training, top_k=self.top_k
        )
        return weights.to(out_dtype), indices
