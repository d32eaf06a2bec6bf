"""`KEY=VALUE` command-line options whose values are read as YAML (`budget=8`, `enable_thinking=false`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, get_args

import yaml

from moe_defense.choices import DtypeName, ReasoningChoice
from moe_defense.errors import ConfigError

if TYPE_CHECKING:
    from moe_defense.models import LoadOptions

REASONING_CHOICES = get_args(ReasoningChoice)
DTYPE_CHOICES = get_args(DtypeName)


def yaml_value(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: {text!r} is not a YAML value ({error}).") from error


def key_value(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"{flag} {item!r} must be KEY=VALUE.")
    return key.strip(), value


def key_values(items: Sequence[str], flag: str) -> dict[str, Any]:
    """Repeated `flag KEY=VALUE` options as a dict of YAML values (a later KEY wins)."""
    values = dict(key_value(item, flag) for item in items)
    return {key: yaml_value(value, f"{flag} {key}") for key, value in values.items()}


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """--trust-remote-code and --revision: which code and which hub commit of a checkpoint load."""
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code (off by default)"
    )
    parser.add_argument("--revision", help="the hub revision of the model (branch, tag or commit; default: main)")


def load_options(args: argparse.Namespace, **settings: Any) -> LoadOptions:
    """The `LoadOptions` a verb's checkpoint flags ask for: `add_checkpoint_arguments`' two, `--seed`, and
    `--dtype` where the verb has it; `settings` adds what only the verb knows (device, chat options)."""
    from moe_defense.models import LoadOptions  # torch-heavy: only when a model is about to load

    return LoadOptions(
        dtype=getattr(args, "dtype", "auto"),
        seed=args.seed,
        trust_remote_code=args.trust_remote_code,
        revision=args.revision,
        **settings,
    )


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    """--chat-template-kwarg and --reasoning: how the model's chat template is driven and its replies read."""
    parser.add_argument(
        "--chat-template-kwarg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the model's chat template (repeatable; VALUE is read as YAML), e.g. enable_thinking=false",
    )
    parser.add_argument(
        "--reasoning",
        choices=REASONING_CHOICES,
        help="how a reply splits into reasoning and final answer (default auto: read off the chat template)",
    )
