"""How a model's chat template is driven and how its turns are read: template options, reasoning, end of turn.

Thinking models write a reasoning block before their answer: Qwen3 `<think>...</think>`, DeepSeek-R1
(whose generation prompt opens the block, so only `</think>` is generated), gpt-oss harmony channels
(`analysis` then `final`). Judges and training targets must read the final answer only, never the
chain of thought; records keep both. Everything here is read off the template itself, never off a
table of checkpoints.
"""

from __future__ import annotations

import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from jinja2 import TemplateError, meta
from transformers import PreTrainedTokenizerBase
from transformers.utils.chat_template_utils import _compile_jinja_template

from moe_defense.choices import ReasoningChoice
from moe_defense.errors import ConfigError
from moe_defense.registry import Registry

PROBE = [{"role": "user", "content": "Hello"}]  # the conversation templates are probed with
SENTINEL = "MOE_DEFENSE_ASSISTANT_CONTENT"  # an assistant turn's content, located in the rendered text
ANSWERED = [*PROBE, {"role": "assistant", "content": SENTINEL}]


@dataclass(frozen=True)
class Reply:
    """One generated turn: the final answer (what judges and targets read) and the reasoning before it."""

    answer: str
    reasoning: str | None = None  # None: the turn had no reasoning block
    cut_off: bool = False  # generation stopped inside the reasoning: no final answer was written


class ReasoningParser(ABC):
    """Splits a decoded turn into reasoning and final answer, for one template family."""

    name: ClassVar[str]
    keeps_special_tokens: ClassVar[bool] = True  # its markers may be special tokens: decode them, strip after

    @classmethod
    @abstractmethod
    def detects(cls, template: str) -> bool:
        """The chat template's text belongs to this family (for `reasoning: auto`)."""

    @abstractmethod
    def split(self, text: str, opened: bool) -> Reply:
        """`opened`: the generation prompt ends inside an open reasoning block."""


REASONING_PARSERS: Registry[type[ReasoningParser]] = Registry("reasoning parser")


def _register(cls: type[ReasoningParser]) -> type[ReasoningParser]:
    return REASONING_PARSERS.register(cls.name)(cls)


@_register
class NoReasoning(ReasoningParser):
    """The whole turn is the answer (decoded without special tokens, as before reasoning existed)."""

    name = "none"
    keeps_special_tokens = False

    @classmethod
    def detects(cls, template: str) -> bool:
        return False

    def split(self, text: str, opened: bool) -> Reply:
        return Reply(text)


@_register
class ThinkBlock(ReasoningParser):
    """`<think>reasoning</think>answer` (Qwen3); the opening tag may be in the prompt (DeepSeek-R1)."""

    name = "think"

    @classmethod
    def detects(cls, template: str) -> bool:
        return "</think>" in template

    def split(self, text: str, opened: bool) -> Reply:
        head, closed, answer = text.partition("</think>")
        if closed:
            return Reply(answer.strip(), head.split("<think>", 1)[-1].strip())
        if "<think>" in text or opened:  # a block was opened and never closed
            return Reply("", text.split("<think>", 1)[-1].strip(), cut_off=True)
        return Reply(text.strip())


# a harmony message: <|channel|>NAME [recipient / constraint]<|message|>CONTENT, up to the next marker
HARMONY_MESSAGE = re.compile(
    r"<\|channel\|>(?P<channel>[^<\s]+)[^<]*(?:<\|constrain\|>[^<]*)?<\|message\|>(?P<content>.*?)"
    r"(?P<end><\|end\|>|<\|return\|>|<\|call\|>|<\|start\|>|$)",
    re.DOTALL,
)


@_register
class HarmonyChannels(ReasoningParser):
    """gpt-oss harmony: the `final` channel is the answer, every other channel (analysis, commentary) reasoning."""

    name = "gpt-oss"

    @classmethod
    def detects(cls, template: str) -> bool:
        return "<|channel|>" in template

    def split(self, text: str, opened: bool) -> Reply:
        if "<|channel|>" not in text:  # the model answered outside the harmony format
            return Reply(text.strip())
        messages = list(HARMONY_MESSAGE.finditer(text))
        final = [m["content"] for m in messages if m["channel"] == "final"]
        thoughts = [m["content"].strip() for m in messages if m["channel"] != "final"]
        reasoning = "\n\n".join(thoughts) if thoughts else None
        if not final:
            return Reply("", reasoning, cut_off=True)
        return Reply("".join(final).strip(), reasoning)


@dataclass(frozen=True)
class ChatFormat:
    """A model's template options and reasoning parser; every chat rendering and every decoded turn uses it."""

    template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    reasoning: str = "none"
    opens_reasoning: bool = False  # the generation prompt ends inside an open reasoning block (DeepSeek-R1)

    @property
    def parser(self) -> ReasoningParser:
        return REASONING_PARSERS.get(self.reasoning)()

    def split(self, tokenizer: PreTrainedTokenizerBase, text: str) -> Reply:
        """The reply in `text` (decoded with special tokens when the parser needs them), specials removed."""
        reply = self.parser.split(text, self.opens_reasoning)
        if not self.parser.keeps_special_tokens:
            return reply
        reasoning = None if reply.reasoning is None else strip_special(tokenizer, reply.reasoning).strip()
        return Reply(strip_special(tokenizer, reply.answer).strip(), reasoning, reply.cut_off)


def _template(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The template text apply_chat_template uses (a tokenizer may hold several, named; `default` is used)."""
    template = getattr(tokenizer, "chat_template", None)
    return template.get("default") if isinstance(template, dict) else template


def strip_special(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """`text` without the tokenizer's special tokens (EOS, padding, markers the parser has read)."""
    added = (token.content for token in tokenizer.added_tokens_decoder.values() if token.special)
    specials = {*tokenizer.all_special_tokens, *added}
    for token in sorted(specials, key=len, reverse=True):
        text = text.replace(token, "")
    return text


def render(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    template_kwargs: Mapping[str, Any],
    *,
    add_generation_prompt: bool,
) -> str:
    """The template applied to `messages` with the model's template options (text, not ids)."""
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False, **dict(template_kwargs)
    )


def chat_format(
    tokenizer: PreTrainedTokenizerBase, template_kwargs: Mapping[str, Any], reasoning: ReasoningChoice = "auto"
) -> ChatFormat:
    """Resolve `reasoning: auto` from the template text, and warn about each template option it never reads.

    An option the template ignores (a typo, or another family's option) would silently do nothing, so it is
    named. "Never reads" is the template's own variable list, not a render comparison: `enable_thinking: true`
    renders like no option at all on Qwen3 (it is the default) yet is read.
    """
    template = _template(tokenizer)
    if template is None:
        if template_kwargs:
            raise ConfigError(
                f"chat_template_kwargs {sorted(template_kwargs)} given, but the tokenizer has no chat template."
            )
        return ChatFormat(reasoning="none" if reasoning == "auto" else reasoning)
    if reasoning == "auto":
        reasoning = next((n for n in REASONING_PARSERS if REASONING_PARSERS.get(n).detects(template)), "none")
    # the environment transformers renders with (its `{% generation %}` tag included)
    read = meta.find_undeclared_variables(_compile_jinja_template(template).environment.parse(template))
    for key in sorted(set(template_kwargs) - read):
        warnings.warn(
            f"chat_template_kwargs {key!r} is ignored: the chat template never reads it "
            f"(it reads: {', '.join(sorted(read - {'messages'})) or 'nothing else'}).",
            UserWarning,
            stacklevel=2,
        )
    try:
        prompt = render(tokenizer, PROBE, template_kwargs, add_generation_prompt=True)
    except TemplateError as error:
        raise ConfigError(
            f"the chat template rejected chat_template_kwargs {dict(template_kwargs)}: {error}"
        ) from error
    opens = reasoning == "think" and prompt.rfind("<think>") > prompt.rfind("</think>")
    return ChatFormat(template_kwargs=dict(template_kwargs), reasoning=reasoning, opens_reasoning=opens)


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase, template_kwargs: Mapping[str, Any]) -> list[int]:
    """The token ids the template writes after an assistant turn's content, through its first special token
    (`<|im_end|>`, gpt-oss `<|return|>`): what a training target ends with. The EOS when the template writes
    no special token there; nothing when there is no EOS either."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if _template(tokenizer) is None:
        return eos
    text = render(tokenizer, ANSWERED, template_kwargs, add_generation_prompt=False)
    _, found, after = text.rpartition(SENTINEL)
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    ids = list(tokenizer(after, add_special_tokens=False)["input_ids"]) if found else []
    end = next((position for position, token in enumerate(ids) if token in special), None)
    return ids[: end + 1] if end is not None else eos
