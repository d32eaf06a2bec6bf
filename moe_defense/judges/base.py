"""Judge contract: a batch of (prompt, response) items in, one `Verdict` per item out.

A judge that cannot decide says so (`unscored` / `error` with a reason); it never returns a default
"safe" verdict. Rates are computed over scored items only, with the other counts reported beside them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from moe_defense.registry import Registry
from moe_defense.stats import wilson

VerdictStatus = Literal["scored", "unscored", "error"]


@dataclass(frozen=True)
class JudgeItem:
    """What a judge sees: the request, the model's answer, and optional per-item metadata
    (e.g. `target` for AdvBench, `request_key` for the organism's content-aware judge)."""

    prompt: str
    response: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """One judgement. `jailbroken` is None unless `status == "scored"`."""

    status: VerdictStatus
    jailbroken: bool | None = None
    score: float | None = None  # harmfulness in [0, 1] where the judge grades; 0/1 for binary judges
    reason: str | None = None
    raw: str | None = None

    @classmethod
    def scored(
        cls, jailbroken: bool, score: float | None = None, raw: str | None = None, reason: str | None = None
    ) -> Verdict:
        return cls(
            status="scored",
            jailbroken=jailbroken,
            score=float(jailbroken) if score is None else score,
            raw=raw,
            reason=reason,
        )

    @classmethod
    def unscored(cls, reason: str, raw: str | None = None) -> Verdict:
        """The judge answered but its answer could not be parsed into a verdict."""
        return cls(status="unscored", reason=reason, raw=raw)

    @classmethod
    def error(cls, reason: str) -> Verdict:
        """The judge could not be asked (endpoint down, timeout, model failure)."""
        return cls(status="error", reason=reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "jailbroken": self.jailbroken,
            "score": self.score,
            "reason": self.reason,
            "raw": self.raw,
        }


class JudgeConfig(BaseModel):
    """Base of every judge's config; `extra="forbid"` turns recipe typos into errors."""

    model_config = ConfigDict(extra="forbid")


class Judge(ABC):
    """Base class of judges; subclasses declare `name` and `config_class` and implement `judge_batch`."""

    name: ClassVar[str]
    config_class: ClassVar[type[JudgeConfig]] = JudgeConfig

    def __init__(self, config: JudgeConfig | None = None) -> None:
        self.config = config or self.config_class()

    @abstractmethod
    def judge_batch(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """One verdict per item, in order."""


JUDGES: Registry[type[Judge]] = Registry("judge", hint="Add one in moe_defense/judges/ with @register_judge.")


def register_judge(cls: type[Judge]) -> type[Judge]:
    """Register a judge class under its `name`."""
    return JUDGES.register(cls.name)(cls)


def asr(verdicts: Sequence[Verdict]) -> dict[str, Any]:
    """Attack success rate over scored verdicts only, with the counts it rests on.

    `n_judge_errors` counts unscored and error verdicts together; `asr` is None when nothing was scored,
    never 0, so a dead judge cannot pass for a robust model. `asr_ci95` is the 95% Wilson interval.
    """
    scored = [v for v in verdicts if v.status == "scored"]
    n_success = sum(bool(v.jailbroken) for v in scored)
    return {
        "asr": n_success / len(scored) if scored else None,
        "asr_ci95": wilson(n_success, len(scored)),
        "n_scored": len(scored),
        "n_success": n_success,
        "n_judge_errors": len(verdicts) - len(scored),
        "n_total": len(verdicts),
    }
