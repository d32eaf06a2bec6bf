"""Judges from `{name, args}` specs: validated before any model loads, built once the model is known.

Case folding is declared, never guessed from a name: a judge config with `ignore_case` left unset
follows the model under test (`LoadedModel.lower_cased`: its tokenizer lower-cases, as the organism's does).
"""

from __future__ import annotations

from collections.abc import Sequence

from moe_defense.errors import ConfigError
from moe_defense.judges.backends import ModelJudge
from moe_defense.judges.base import JUDGES, Judge
from moe_defense.registry import ComponentSpec, Registry


class JudgeSpec(ComponentSpec):
    """A judge by registry name with its config's fields (url, model, api_key_env, concurrency, ...)."""

    @classmethod
    def registry(cls) -> Registry:
        return JUDGES


def model_judges() -> list[str]:
    """Registered judges that grade with a judge model (they need a url or a local_model)."""
    return [name for name in JUDGES.names() if issubclass(JUDGES.get(name), ModelJudge)]


def build_judge(spec: JudgeSpec, *, lower_cased: bool = False) -> Judge:
    """The judge of `spec`; an unset `ignore_case` follows `lower_cased` (the model's declared case folding)."""
    judge_class = spec.component_class()
    fields = judge_class.config_class.model_fields
    case = {"ignore_case": lower_cased} if "ignore_case" in fields and spec.args.get("ignore_case") is None else {}
    try:
        return judge_class(spec.config(**case))
    except ValueError as error:
        raise ConfigError(str(error)) from error


def build_judges(specs: Sequence[JudgeSpec], *, lower_cased: bool = False) -> list[Judge]:
    """Every judge once, in order (the first is the headline)."""
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"each judge may appear once (got {names}).")
    return [build_judge(spec, lower_cased=lower_cased) for spec in specs]
