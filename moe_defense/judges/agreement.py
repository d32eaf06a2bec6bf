"""How far judges agree on the same items: a keyword ASR means little until it is checked against a rubric judge."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any

from moe_defense.errors import JudgeError
from moe_defense.judges.base import Verdict


@dataclass(frozen=True)
class PairAgreement:
    """Agreement of two judges over the items both scored; None where undefined (no shared items, or kappa's 0/0)."""

    judge_a: str
    judge_b: str
    n_items: int
    n_both_scored: int
    agreement: float | None
    kappa: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two binary label lists; None when chance agreement is 1 (both constant and equal)."""
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(a) / n, sum(b) / n
    expected = pa * pb + (1 - pa) * (1 - pb)
    return None if expected == 1 else (observed - expected) / (1 - expected)


def pairwise_agreement(verdicts: Mapping[str, Sequence[Verdict]]) -> list[PairAgreement]:
    """Every pair of judges, in name order: agreement on `jailbroken` where both scored, plus Cohen's kappa."""
    lengths = {name: len(v) for name, v in verdicts.items()}
    if len(set(lengths.values())) > 1:
        raise JudgeError(
            f"judges saw different numbers of items {lengths}; agreement needs verdicts on the same items, in the "
            "same order."
        )
    pairs = []
    for name_a, name_b in combinations(sorted(verdicts), 2):
        both = [
            (bool(x.jailbroken), bool(y.jailbroken))
            for x, y in zip(verdicts[name_a], verdicts[name_b], strict=True)
            if x.status == "scored" and y.status == "scored"
        ]
        a, b = [x for x, _ in both], [y for _, y in both]
        pairs.append(
            PairAgreement(
                judge_a=name_a,
                judge_b=name_b,
                n_items=lengths[name_a],
                n_both_scored=len(both),
                agreement=sum(x == y for x, y in both) / len(both) if both else None,
                kappa=cohen_kappa(a, b),
            )
        )
    return pairs
