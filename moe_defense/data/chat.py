"""Render a prompt with the model's own chat template, so every model sees the format it was tuned on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from moe_defense.errors import ConfigError


def format_chat(
    tokenizer: PreTrainedTokenizerBase,
    prompt_text: str,
    system_prompt: str | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """One user turn (after an optional system turn), ending where the assistant starts answering.

    The system prompt is explicit, never injected by default: a hidden system prompt would change
    refusal rates without showing up in the run config. `template_kwargs` are the template's own
    options (e.g. Qwen3's `enable_thinking`), as the recipe's `chat_template_kwargs` give them.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__!r} has no chat template. "
            "Use an instruct/chat checkpoint, or set tokenizer.chat_template before formatting."
        )
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else []) + [
        {"role": "user", "content": prompt_text}
    ]
    try:
        return tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **dict(template_kwargs or {})
        )
    except TemplateError as error:
        raise ConfigError(
            f"the chat template of {getattr(tokenizer, 'name_or_path', '')!r} rejected the conversation: {error}. "
            "If it does not support a system turn, drop system_prompt."
        ) from error
