"""Chat formatting uses the model's own template, with an explicit system prompt and clear errors."""

from __future__ import annotations

import pytest

from moe_defense.data import format_chat
from moe_defense.errors import ConfigError
from moe_defense.models.tokenizer import byte_level_tokenizer


def test_user_turn_ends_at_the_assistant_marker():
    assert format_chat(byte_level_tokenizer(), "How are you?") == "<|bos|><|user|>How are you?<|end|><|assistant|>"


def test_system_prompt_is_explicit():
    text = format_chat(byte_level_tokenizer(), "Hi", system_prompt="Be brief.")
    assert text == "<|bos|><|system|>Be brief.<|end|><|user|>Hi<|end|><|assistant|>"


def test_tokenizer_without_chat_template_is_a_config_error():
    tokenizer = byte_level_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        format_chat(tokenizer, "Hi")


def test_template_that_rejects_a_system_turn_names_the_fix():
    tokenizer = byte_level_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    assert format_chat(tokenizer, "Hi") == "Hi"
    with pytest.raises(ConfigError, match="drop system_prompt"):
        format_chat(tokenizer, "Hi", system_prompt="Be brief.")
