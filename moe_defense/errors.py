"""One error hierarchy, so callers can catch moe-defense failures without catching bugs."""


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


class JudgeError(MoEDefenseError):
    """A judge is misconfigured or its backend cannot be set up (per-item failures are `Verdict.error`)."""
