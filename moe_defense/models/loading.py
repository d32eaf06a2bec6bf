"""Resolve a model spec (hub id, local path, `tiny:<model_type>`, `organism[:<arch>]`) to a `LoadedModel`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from moe_defense.choices import DtypeName, ReasoningChoice
from moe_defense.errors import ModelLoadError
from moe_defense.models.adapters import ADAPTERS, RouterAdapter, adapter_for
from moe_defense.models.chat import ChatFormat, chat_format
from moe_defense.models.tokenizer import byte_level_tokenizer
from moe_defense.registry import Registry

# Spec prefixes resolved by higher layers (e.g. `organism`), registered where they are implemented
# so this module never imports upward.
SPEC_RESOLVERS: Registry[Callable[[str, LoadOptions], LoadedModel]] = Registry(
    "model spec prefix", hint="Known forms: a hub id, a local path, tiny:<model_type>, organism[:<arch>]."
)


DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoadOptions:
    """How to load weights; the defaults are safe (no remote code, safetensors only)."""

    dtype: DtypeName = "auto"  # auto: the checkpoint's own (float32 for tiny models)
    device: str | None = None
    trust_remote_code: bool = False
    revision: str | None = None
    seed: int = 0
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"enable_thinking": False}
    reasoning: ReasoningChoice = "auto"  # how a reply splits into reasoning and answer (auto: from the template)


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer, router adapter and the spec it came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: RouterAdapter
    spec: str
    benign_set: str | None = None  # a registered benign prompt set in this model's own language (the organism's corpus)
    chat: ChatFormat = field(default_factory=ChatFormat)  # template options and reasoning parser

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def lower_cased(self) -> bool:
        """The tokenizer lower-cases its input (the organism's does), so answers never hold capitals:
        judges matching cased text must fold case."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        normalizer = getattr(backend, "normalizer", None)
        return normalizer is not None and normalizer.normalize_str("Sure I CAN") == "sure i can"

    def fingerprint(self) -> str:
        """A cheap identity of config + weights: route artifacts are refused on another model."""
        return model_fingerprint(self.model)


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the config and, per tensor, its name, shape, dtype and a strided sample of values.

    Sampling keeps this O(#tensors) on 100B-parameter checkpoints while any training step changes it.
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(json.dumps(config.to_diff_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096]
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(sample.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def torch_dtype(name: str) -> torch.dtype | str:
    """A dtype name as transformers' `dtype=` takes it (`auto`: the checkpoint's own)."""
    if name == "auto":
        return "auto"
    try:
        return DTYPES[name]
    except KeyError:
        raise ModelLoadError(f"dtype {name!r} is not supported (choose: auto, {', '.join(DTYPES)}).") from None


def weights_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype most of the model's elements are stored in (what its frozen weights compute in)."""
    counts: dict[torch.dtype, int] = {}
    for parameter in model.parameters():
        counts[parameter.dtype] = counts.get(parameter.dtype, 0) + parameter.numel()
    return max(counts, key=counts.__getitem__)


def build_tiny(model_type: str, *, seed: int = 0, dtype: str = "auto", **overrides: Any) -> LoadedModel:
    """A random-init tiny model of `model_type` with a byte-level tokenizer, for tests and dry runs
    (`dtype` auto: float32; the weights are drawn in float32 and cast, so every dtype has the same model)."""
    target = torch_dtype(dtype)
    adapter_cls = ADAPTERS.get(model_type)
    tokenizer = byte_level_tokenizer()
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **{**adapter_cls.tiny_config(), **overrides},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if target != "auto":
        model.to(target)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter_for(config), spec=f"tiny:{model_type}")


def load_model(spec: str, options: LoadOptions | None = None) -> LoadedModel:
    """Load any supported model spec; the adapter is checked before any weight is read."""
    options = options or LoadOptions()
    if spec.startswith("tiny:"):
        model_type = spec.removeprefix("tiny:")
        if model_type not in ADAPTERS:
            try:
                config = AutoConfig.for_model(model_type)
            except ValueError as error:
                raise ModelLoadError(
                    f"cannot build {spec!r}: transformers has no model_type {model_type!r} "
                    f"(supported MoE types: {', '.join(ADAPTERS.names())})."
                ) from error
            adapter_for(config)  # raises the dense / unsupported-architecture error
        loaded = build_tiny(model_type, seed=options.seed, dtype=options.dtype)
        if options.device:
            loaded.model.to(options.device)
        loaded.chat = chat_format(loaded.tokenizer, options.chat_template_kwargs, options.reasoning)
        return loaded
    prefix = spec.split(":", 1)[0]
    if prefix in SPEC_RESOLVERS:
        return SPEC_RESOLVERS.get(prefix)(spec, options)
    if prefix == "organism":
        raise ModelLoadError(
            "the `organism` spec is resolved by moe_defense.organism; use `moe_defense.load_model` "
            "or `import moe_defense.organism` first."
        )
    return load_pretrained(spec, options)


def load_pretrained(path_or_id: str, options: LoadOptions) -> LoadedModel:
    """A hub id or local directory, via `transformers` with safetensors only."""
    common = {"trust_remote_code": options.trust_remote_code, "revision": options.revision}
    try:
        config = AutoConfig.from_pretrained(path_or_id, **common)
    except (OSError, ValueError) as error:
        where = "local path" if Path(path_or_id).exists() else "hub id or local path"
        raise ModelLoadError(
            f"cannot read a model config from {path_or_id!r} ({where}): {error}. "
            "Give a hub id, a directory with config.json, tiny:<model_type> or organism."
        ) from error
    adapter = adapter_for(config)
    tokenizer = AutoTokenizer.from_pretrained(path_or_id, **common)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    chat = chat_format(tokenizer, options.chat_template_kwargs, options.reasoning)  # checked before the weights load
    model = AutoModelForCausalLM.from_pretrained(
        path_or_id,
        dtype=torch_dtype(options.dtype),
        use_safetensors=True,
        device_map=options.device,
        **common,
    )
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter, spec=path_or_id, chat=chat)
