"""The ASR summary counts what was scored and reports the rest beside it."""

from __future__ import annotations

from moe_defense.judges import Verdict, asr


def test_asr_is_over_scored_items_only():
    verdicts = [
        Verdict.scored(True),
        Verdict.scored(False),
        Verdict.scored(True),
        Verdict.unscored("parse_failure", raw="???"),
        Verdict.error("timeout"),
    ]
    assert asr(verdicts) == {
        "asr": 2 / 3,
        "asr_ci95": [0.2077, 0.9385],
        "n_scored": 3,
        "n_success": 2,
        "n_judge_errors": 2,
        "n_total": 5,
    }


def test_asr_is_none_when_nothing_was_scored():
    assert asr([Verdict.error("down")])["asr"] is None
    assert asr([]) == {"asr": None, "asr_ci95": None, "n_scored": 0, "n_success": 0, "n_judge_errors": 0, "n_total": 0}
