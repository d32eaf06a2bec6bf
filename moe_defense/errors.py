"""One error hierarchy, so callers can catch moe-defense failures without catching bugs."""

import importlib.util


class MoEDefenseError(Exception):
    """Base class of every error moe-defense raises on purpose."""


class ConfigError(MoEDefenseError):
    """A recipe, CLI argument or config value is invalid."""


class RegistryError(MoEDefenseError):
    """A name is unknown to a registry, or registered twice."""


class ModelLoadError(MoEDefenseError):
    """A model spec cannot be resolved or loaded."""


class UnsupportedArchitectureError(MoEDefenseError):
    """The model is dense, or its `model_type` has no router adapter."""


class RoutingError(MoEDefenseError):
    """A routing record or intervention is malformed for the model it targets."""


class DataError(MoEDefenseError):
    """A prompt set cannot be read: missing file, unknown column, empty set, unreachable hub id."""


class PatchError(MoEDefenseError):
    """A router patch does not belong to the base it is used with, or cannot be applied or exported."""


class JudgeError(MoEDefenseError):
    """A judge is misconfigured or its backend cannot be set up (per-item failures are `Verdict.error`)."""


def describe_validation(error: Exception, flag_style: bool = False) -> str:
    """One line per pydantic error: `field: message` (or `--field-name: message` for CLI flags)."""
    parts = []
    for item in error.errors():  # type: ignore[attr-defined]
        field = ".".join(str(part) for part in item["loc"])
        if flag_style and field:
            field = "--" + field.replace("_", "-").replace(".", "-")
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{field}: {message}" if field else message)
    return "; ".join(parts)


class MissingExtraError(ConfigError, ValueError):
    """A feature a recipe asks for needs an optional extra that is not installed (a ValueError too, so a
    pydantic validator reports it under the field that asked)."""


def require_extra(module: str, extra: str, why: str) -> None:
    """Fail now, naming the `pip install` line, when `module` (of extra `extra`) is not importable: a recipe
    needing it is rejected at validation, not after the original model's whole suite ran."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(f"{why} needs `{module}`, which is not installed: pip install 'moe-defense[{extra}]'")
