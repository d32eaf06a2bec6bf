"""Name -> component registries shared by adapters, attacks, judges and defenses.

Components register themselves with a decorator; `discover` imports every module of a package (and
every entry point of its group), so a file that exists is registered: no hand-kept import list.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from moe_defense.errors import ConfigError, RegistryError, describe_validation

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class Registry(Generic[T]):
    """A mapping from short names to components; registering a name twice is an error."""

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise RegistryError(f"{self.kind} {name!r} is registered twice ({self._entries[name]!r} and {obj!r}).")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            hint = f" {self.hint}" if self.hint else ""
            raise RegistryError(f"{self.kind} {name!r} is not registered (supported: {known}).{hint}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def discover(package: str, group: str | None = None) -> None:
    """Import every module of `package` (each registers its components), then every entry point of
    `group` (third-party plugins: `[project.entry-points."moe_defense.attacks"]` in their pyproject)."""
    root = importlib.import_module(package)
    for module in pkgutil.iter_modules(root.__path__):
        importlib.import_module(f"{package}.{module.name}")
    for entry in entry_points(group=group) if group else ():
        entry.load()


class ComponentSpec(BaseModel):
    """A registered component addressed by name, with the arguments of its config class.

    `- keyword` is short for `- {name: keyword}`. Subclasses name their registry; the args are
    validated by the component's own config class, so a typo fails before any model loads.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="registry key of the component")
    args: dict[str, Any] = Field(default_factory=dict, description="fields of the component's config class")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @classmethod
    def registry(cls) -> Registry:
        raise NotImplementedError

    @model_validator(mode="after")
    def _known(self) -> ComponentSpec:
        registry = self.registry()
        if self.name not in registry:
            raise ValueError(f"unknown {registry.kind} {self.name!r} (known: {', '.join(registry.names())})")
        self.config()  # the args are checked by the component's own config class
        return self

    def component_class(self) -> Any:
        return self.registry().get(self.name)

    def config(self, **updates: Any) -> BaseModel:
        """The component's config from `args` (+ `updates`); a bad arg is a ValueError naming it."""
        config_class = self.component_class().config_class
        try:
            return config_class.model_validate({**self.args, **updates})
        except ValidationError as error:
            raise ValueError(f"{self.registry().kind} {self.name!r} args: {describe_validation(error)}") from None
        except ConfigError as error:  # a check beyond types, e.g. an API-key variable that is unset
            raise ValueError(f"{self.registry().kind} {self.name!r} args: {error}") from None


def validated(
    model: type[M], payload: Any, where: str, context: dict[str, Any] | None = None, *, flag_style: bool = False
) -> M:
    """`model.model_validate(payload)`, a validation error turned into one ConfigError naming `where`;
    `context` reaches the validators (e.g. the recipe's directory, which its relative paths are against);
    `flag_style` names the fields as the CLI flags they came from (`--max-new-tokens`)."""
    try:
        return model.model_validate(payload, context=context)
    except ValidationError as error:
        raise ConfigError(f"{where}: {describe_validation(error, flag_style=flag_style)}") from error
