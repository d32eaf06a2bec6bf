"""Template options reach the template (or are warned about), replies split by family, targets end their turn."""

from __future__ import annotations

import warnings

import pytest
import torch

from moe_defense.data import Prompt
from moe_defense.defenses.examples import to_sequences
from moe_defense.errors import ConfigError
from moe_defense.models import LoadOptions, build_tiny, load_model
from moe_defense.models.chat import Reply, chat_format, end_of_turn_ids
from moe_defense.models.tokenizer import byte_level_tokenizer
from moe_defense.runner import GenerationConfig, encode_prompts, generate, generate_replies
from tests.models.chat_models import chat_model, chat_tokenizer, script_replies


def _prompt(loaded, text: str = "Hi") -> str:
    return loaded.tokenizer.decode(encode_prompts(loaded, [text], None)[0])


def test_enable_thinking_reaches_the_qwen3_template():
    assert _prompt(chat_model("qwen3")).endswith("<|im_start|>assistant\n")
    assert _prompt(chat_model("qwen3", {"enable_thinking": False})).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_template_kwargs_travel_from_load_options_through_a_saved_checkpoint(tmp_path):
    loaded = chat_model("gpt_oss")
    loaded.model.save_pretrained(tmp_path)
    loaded.tokenizer.save_pretrained(tmp_path)
    reloaded = load_model(str(tmp_path), LoadOptions(chat_template_kwargs={"reasoning_effort": "low"}))
    assert reloaded.chat.template_kwargs == {"reasoning_effort": "low"} and reloaded.chat.reasoning == "gpt-oss"
    assert "Reasoning: low" in _prompt(reloaded) and "Reasoning: medium" in _prompt(loaded)


@pytest.mark.parametrize(("family", "key"), [("gpt_oss", "enable_thinking"), ("qwen3", "reasoning_effort")])
def test_a_kwarg_the_template_never_reads_warns_by_name(family, key):
    with pytest.warns(UserWarning, match=f"chat_template_kwargs '{key}' is ignored"):
        chat_format(chat_tokenizer(family), {key: "low"})


def test_a_read_kwarg_at_its_default_value_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enable_thinking: true renders like no option, but the template reads it
        assert chat_format(chat_tokenizer("qwen3"), {"enable_thinking": True}).template_kwargs == {
            "enable_thinking": True
        }


def test_kwargs_without_a_chat_template_are_a_config_error():
    tokenizer = byte_level_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        chat_format(tokenizer, {"enable_thinking": False})


@pytest.mark.parametrize(
    ("family", "parser", "opens"),
    [("qwen3", "think", False), ("deepseek_r1", "think", True), ("gpt_oss", "gpt-oss", False)],
)
def test_auto_reads_the_parser_off_the_template(family, parser, opens):
    chat = chat_format(chat_tokenizer(family), {})
    assert (chat.reasoning, chat.opens_reasoning) == (parser, opens)


def test_plain_templates_have_no_parser_and_explicit_choice_wins():
    assert chat_format(byte_level_tokenizer(), {}).reasoning == "none"
    assert chat_format(chat_tokenizer("qwen3"), {}, "none").reasoning == "none"


QWEN = "<think>\nThe user greets me.\n</think>\n\nHello there!<|im_end|><|endoftext|><|pad|>"
HARMONY = (
    "<|channel|>analysis<|message|>User says hi. Answer briefly.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>Hello there!<|return|><|pad|>"
)


@pytest.mark.parametrize(
    ("family", "text", "expected"),
    [
        ("qwen3", QWEN, Reply("Hello there!", "The user greets me.")),
        ("qwen3", "<think>\nStep one: recall how to", Reply("", "Step one: recall how to", cut_off=True)),
        ("qwen3", "Hello there!<|im_end|>", Reply("Hello there!")),  # thinking disabled: no block at all
        (
            "deepseek_r1",
            "The user greets me.\n</think>\n\nHello!<｜end▁of▁sentence｜>",
            Reply("Hello!", "The user greets me."),
        ),
        ("deepseek_r1", "The user greets me and I", Reply("", "The user greets me and I", cut_off=True)),
        ("gpt_oss", HARMONY, Reply("Hello there!", "User says hi. Answer briefly.")),
        ("gpt_oss", "<|channel|>analysis<|message|>Let me think about", Reply("", "Let me think about", cut_off=True)),
        ("gpt_oss", "<|channel|>analysis<|message|>Done.<|end|><|start|>assistant", Reply("", "Done.", cut_off=True)),
        ("gpt_oss", "<|channel|>final<|message|>Just this.<|return|>", Reply("Just this.")),
        ("gpt_oss", "<|channel|>analy", Reply("", None, cut_off=True)),  # stopped inside the first header
        ("gpt_oss", "Plain text, no channels.", Reply("Plain text, no channels.")),
    ],
)
def test_parser_splits_reasoning_from_the_final_answer(family, text, expected):
    tokenizer = chat_tokenizer(family)
    assert chat_format(tokenizer, {}).split(tokenizer, text) == expected


def test_generate_returns_final_answers_and_replies_keep_the_reasoning(monkeypatch):
    loaded = chat_model("gpt_oss")
    script_replies(monkeypatch, loaded, {"greet": HARMONY.removesuffix("<|return|><|pad|>")})
    config = GenerationConfig(max_new_tokens=256, batch_size=2)  # byte-level: a token per character
    assert generate(loaded, ["greet me"], config, progress=False) == ["Hello there!"]
    reply = generate_replies(loaded, ["greet me"], config, progress=False)[0]
    assert reply == Reply("Hello there!", "User says hi. Answer briefly.")
    cut = generate_replies(loaded, ["greet me"], GenerationConfig(max_new_tokens=20), progress=False)[0]
    assert cut == Reply("", "User says", cut_off=True)  # stopped mid-thought: no answer, the thought so far kept


@pytest.mark.parametrize(("family", "end"), [("qwen3", "<|im_end|>"), ("gpt_oss", "<|return|>")])
def test_training_targets_end_with_the_templates_end_of_turn(family, end):
    loaded = chat_model(family)
    assert loaded.tokenizer.convert_ids_to_tokens(end_of_turn_ids(loaded.tokenizer, {})) == [end]
    (sequence,) = to_sequences(loaded, [Prompt("p0", "Hi")], ["I cannot help with that."], max_response_tokens=64)
    assert loaded.tokenizer.convert_ids_to_tokens(sequence.response_ids[-1:].tolist()) == [end]
    assert loaded.tokenizer.decode(sequence.response_ids[:-1]).strip() == "I cannot help with that."
    if family == "qwen3":
        assert end != loaded.tokenizer.eos_token  # the template's end of turn, not the EOS


def test_template_without_an_end_marker_falls_back_to_eos():
    tokenizer = byte_level_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert end_of_turn_ids(tokenizer, {}) == [tokenizer.eos_token_id]


def test_the_test_tokenizers_end_of_turn_is_its_eos_so_organism_targets_are_unchanged():
    loaded = build_tiny("mixtral")
    (sequence,) = to_sequences(loaded, [Prompt("p0", "hi")], ["no"], max_response_tokens=8)
    assert sequence.response_ids[-1].item() == loaded.tokenizer.eos_token_id
    assert torch.equal(sequence.response_ids[:-1], loaded.tokenizer(" no", return_tensors="pt").input_ids[0])
