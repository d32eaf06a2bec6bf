"""Qwen3-MoE: Qwen2-MoE routing without the shared expert."""

from __future__ import annotations

from moe_defense.models.adapters.base import register_adapter
from moe_defense.models.adapters.qwen2_moe import Qwen2MoeAdapter


@register_adapter
class Qwen3MoeAdapter(Qwen2MoeAdapter):
    """Qwen3-30B-A3B, Qwen3-235B-A22B."""

    model_type = "qwen3_moe"
    tiny_overrides = {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 16}
