"""Prompt sets (registered names, local files, hub ids) and chat formatting."""

from moe_defense.data.chat import format_chat
from moe_defense.data.prompts import (
    PROMPT_COLUMNS,
    PROMPT_SETS,
    DemoSet,
    EnSet,
    HubSet,
    Prompt,
    PromptSet,
    SmolSet,
    load_prompts,
)

__all__ = [
    "PROMPT_COLUMNS",
    "PROMPT_SETS",
    "DemoSet",
    "EnSet",
    "SmolSet",
    "HubSet",
    "Prompt",
    "PromptSet",
    "format_chat",
    "load_prompts",
]
