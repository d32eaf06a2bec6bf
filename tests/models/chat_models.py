"""Chat-model fixtures without the hub: Qwen3-, gpt-oss- and DeepSeek-R1-style templates (tests/fixtures/
chat_templates/) on the byte-level test tokenizer, with each family's markers as added tokens."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken
from transformers import PreTrainedTokenizerFast

from moe_defense.models import LoadedModel, build_tiny
from moe_defense.models.chat import chat_format
from moe_defense.models.tokenizer import byte_level_tokenizer

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"

# family -> (special markers, plain added tokens, end-of-sequence token); as in the real tokenizers, Qwen3's
# <think> tags are added but not special, gpt-oss's channel markers are special, <|end|> is not its EOS, and
# Qwen's EOS (base checkpoints: <|endoftext|>) is not its end of turn <|im_end|>
FAMILIES: dict[str, tuple[list[str], list[str], str]] = {
    "qwen3": (["<|im_start|>", "<|im_end|>", "<|endoftext|>"], ["<think>", "</think>"], "<|endoftext|>"),
    "gpt_oss": (
        ["<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>", "<|constrain|>"],
        [],
        "<|return|>",
    ),
    "deepseek_r1": (
        ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"],
        ["<think>", "</think>"],
        "<｜end▁of▁sentence｜>",
    ),
}


def chat_tokenizer(family: str) -> PreTrainedTokenizerFast:
    specials, plain, eos = FAMILIES[family]
    tokenizer = byte_level_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in plain])
    tokenizer.eos_token = eos
    tokenizer.chat_template = (TEMPLATES / f"{family}.jinja").read_text()
    return tokenizer


def chat_model(family: str, template_kwargs: Mapping[str, Any] | None = None) -> LoadedModel:
    """A tiny random Mixtral speaking `family`'s template (its embeddings cover the added tokens)."""
    tokenizer = chat_tokenizer(family)
    loaded = build_tiny("mixtral", seed=0)
    loaded.model.resize_token_embeddings(len(tokenizer))
    return dataclasses.replace(loaded, tokenizer=tokenizer, chat=chat_format(tokenizer, template_kwargs or {}))


def script_replies(monkeypatch, loaded: LoadedModel, replies: Mapping[str, str]) -> None:
    """The model 'generates' `replies[prompt]` for each prompt (truncated to max_new_tokens: a cut-off stops
    there, a finished reply ends with EOS), padded on the right as HF generate pads finished rows."""
    tokenizer = loaded.tokenizer

    def reply_ids(prompt_ids: torch.Tensor, max_new_tokens: int) -> list[int]:
        prompt = tokenizer.decode(prompt_ids)
        text = next(reply for key, reply in replies.items() if key in prompt)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return ids[:max_new_tokens]

    def generate(input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, **kwargs):
        rows = [reply_ids(row, max_new_tokens) for row in input_ids]
        width = max(len(row) for row in rows)
        tails = [row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows]
        return torch.cat([input_ids, torch.tensor(tails, dtype=torch.long)], dim=1)

    monkeypatch.setattr(loaded.model, "generate", generate)
