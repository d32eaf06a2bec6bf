"""`OrganismConfig`: every setting that shapes the organism; its hash keys the build cache."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from moe_defense.models.adapters import ADAPTERS
from moe_defense.models.params import TrainableScope

# Bump when the corpus, tokenizer or training code changes what a given config produces.
ORGANISM_FORMAT = 3
Preset = Literal["demo", "en", "smol"]
# Fields added after format 3: they join the cache key only when set off their default, so every
# config that existed before them keeps its key (and its cached, bit-identical weights).
_KEYED_WHEN_SET = (
    "preset",
    "vocab_size",
    "max_length",
    "safety_experts",
    "benign_count",
    "harmful_count",
    "answer_tokens",
)
_DEMO_ONLY = ("safety_splice_drill",)
# The `en` preset's settings, and per-architecture shapes (many experts with top-4; a gated shared expert).
EN_DEFAULTS: dict[str, Any] = {
    "preset": "en",
    "max_length": 96,
    "batch_size": 16,
    "helpful_steps": 500,
    "safety_steps": 300,
    "copy_drill": 1000,
    "safety_copy_drill": 1500,
    "safety_splice_drill": 0,
}
EN_ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "olmoe": {"num_experts": 16, "top_k": 4, "expert_size": 64},
    "qwen3_moe": {"num_experts": 16, "top_k": 4, "expert_size": 64},
}
# The `smol` preset: SmolLM2-135M-Instruct upcycled (its shape is the base's; `num_layers`, `hidden_size`,
# `expert_size` and `num_heads` do not apply). Only the first `safety_experts` routed experts of each layer
# and the routers learn; the other experts keep the base (see `organism/smol.py`).
SMOL_DEFAULTS: dict[str, Any] = {
    "preset": "smol",
    "max_length": 160,
    "batch_size": 16,
    "helpful_steps": 1,
    "safety_steps": 150,
    "safety_lr": 1e-3,
    "copy_drill": 0,
    "safety_copy_drill": 0,
    "safety_splice_drill": 0,
    "safety_trainable": "routers+experts",
    "benign_count": 1000,
    "harmful_count": 600,
    "answer_tokens": 24,
    "threads": 2,
}
SMOL_ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen2_moe": {"num_experts": 8, "top_k": 2, "safety_experts": 2},
    "mixtral": {"num_experts": 4, "top_k": 2, "safety_experts": 1},
}
SMOL_ARCHS = tuple(SMOL_ARCH_DEFAULTS)


def cache_root() -> Path:
    """`$MOE_DEFENSE_CACHE` or `~/.cache/moe-defense`: built organisms and the smol preset's base model."""
    return Path(os.environ.get("MOE_DEFENSE_CACHE", Path.home() / ".cache" / "moe-defense"))


class OrganismConfig(BaseModel):
    """A small MoE chat model trained helpful-only first, then safety-aligned (see README)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Preset = Field(
        "demo", description="corpus and tokenizer: `demo` (its own word-level grammar) or `en` (benchmark English)"
    )
    arch: str = Field("mixtral", description="transformers model_type of the organism")
    num_layers: int = Field(4, ge=1, description="decoder layers (all MoE)")
    hidden_size: int = Field(64, ge=16, description="residual width")
    expert_size: int = Field(128, ge=8, description="intermediate width of each expert")
    num_heads: int = Field(4, ge=1, description="attention heads")
    num_experts: int = Field(8, ge=2, description="routed experts per layer")
    top_k: int = Field(2, ge=1, description="experts per token")
    batch_size: int = Field(32, ge=1, description="sequences per optimiser step, both stages")
    helpful_steps: int = Field(800, ge=1, description="stage 1: comply with every request")
    helpful_lr: float = Field(3e-3, gt=0, description="stage 1 learning rate")
    safety_steps: int = Field(600, ge=0, description="stage 2: refuse harmful, comply with benign")
    safety_lr: float = Field(1e-3, gt=0, description="stage 2 learning rate")
    copy_drill: int = Field(
        1200,
        ge=0,
        description="stage 1 extra requests with random keys (teaches restating the request; en: runs of benign words)",
    )
    safety_copy_drill: int = Field(
        200, ge=0, description="stage 2 extra benign requests with random benign keys (en: runs of benign words)"
    )
    safety_splice_drill: int = Field(
        1600, ge=0, description="stage 2 extra requests splicing the start of one train key to the end of another"
    )
    safety_splice_harmful: float = Field(0.6, ge=0, le=1, description="share of those spliced requests that is harmful")
    safety_trainable: TrainableScope = Field("all", description="parameters safety alignment may change")
    vocab_size: int = Field(
        2048, ge=300, description="`en` only: entries of the subword tokenizer trained on its corpus"
    )
    max_length: int = Field(64, ge=16, description="tokens per training sequence (longer ones are cut)")
    safety_experts: int = Field(
        0, ge=0, description="`smol`: routed experts per layer safety training may change (the first ones; 0: all)"
    )
    benign_count: int = Field(0, ge=0, description="`smol`: benign requests answered by the base for the safety stage")
    harmful_count: int = Field(
        0, ge=0, description="`smol`: harmful train requests refused in the safety stage (a seeded sample; 0: all)"
    )
    answer_tokens: int = Field(40, ge=1, description="`smol`: tokens of the base's own answer kept as a benign target")
    seed: int = Field(0, description="seed of initialisation and data order")
    threads: int = Field(
        1,
        ge=1,
        description="CPU threads while training: float sums depend on the thread count, so pinning it "
        "makes the weights independent of the machine's core count",
    )

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        if arch not in ADAPTERS:
            raise ValueError(f"arch {arch!r} has no router adapter (supported: {', '.join(ADAPTERS.names())})")
        return arch

    @model_validator(mode="after")
    def _drills_are_demo_only(self) -> OrganismConfig:
        """The splice drill recombines the demo grammar's request keys; the `en` corpus has none."""
        if self.preset != "demo":
            set_drills = [name for name in _DEMO_ONLY if getattr(self, name)]
            if set_drills:
                raise ValueError(
                    f"{', '.join(set_drills)} apply to the demo preset only; set them to 0 for {self.preset!r}"
                )
        return self

    @classmethod
    def for_preset(cls, preset: Preset = "demo", arch: str | None = None, **settings: Any) -> OrganismConfig:
        """The default config of `preset` on `arch` (default: mixtral; smol: qwen2_moe, the cheaper exact
        upcycle); the `en` and `smol` presets have their own defaults per arch."""
        arch = arch or ("qwen2_moe" if preset == "smol" else "mixtral")
        if preset == "en":
            settings = {**EN_DEFAULTS, **EN_ARCH_DEFAULTS.get(arch, {}), **settings}
        elif preset == "smol":
            if arch not in SMOL_ARCH_DEFAULTS:
                raise ValueError(f"the smol preset upcycles into {', '.join(SMOL_ARCHS)}, not {arch!r}")
            settings = {**SMOL_DEFAULTS, **SMOL_ARCH_DEFAULTS[arch], **settings}
        elif preset != "demo":
            raise ValueError(f"organism preset {preset!r} is unknown (supported: demo, en, smol)")
        return cls(arch=arch, **settings)

    def cache_key(self) -> str:
        fields = type(self).model_fields
        unset = {name for name in _KEYED_WHEN_SET if getattr(self, name) == fields[name].default}
        payload = {"format": ORGANISM_FORMAT, **self.model_dump(exclude=unset)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def model_overrides(self) -> dict[str, Any]:
        """Config kwargs for `AutoConfig.for_model(arch, ...)`, on top of the adapter's tiny config."""
        adapter = ADAPTERS.get(self.arch)
        overrides = {
            **adapter.tiny_config(),
            adapter.num_experts_key: self.num_experts,
            "num_experts_per_tok": self.top_k,
            "num_hidden_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.expert_size,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_heads,
        }
        if "moe_intermediate_size" in overrides:
            overrides["moe_intermediate_size"] = self.expert_size
        if "layer_types" in overrides:
            overrides["layer_types"] = ["full_attention"] * self.num_layers
        return overrides
