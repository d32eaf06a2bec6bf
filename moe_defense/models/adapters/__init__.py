"""Router adapters, one file per architecture, registered by `config.model_type`."""

from moe_defense.models.adapters import (  # noqa: F401  (import registers each adapter)
    deepseek_v2,
    deepseek_v3,
    gpt_oss,
    granitemoe,
    mixtral,
    olmoe,
    phimoe,
    qwen2_moe,
    qwen3_moe,
)
from moe_defense.models.adapters.base import (
    ADAPTERS,
    RouterAdapter,
    RouterFacts,
    adapter_for,
    register_adapter,
)

__all__ = ["ADAPTERS", "RouterAdapter", "RouterFacts", "adapter_for", "register_adapter"]
