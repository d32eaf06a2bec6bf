"""Judge agreement: raw agreement and Cohen's kappa over the items both judges scored."""

from __future__ import annotations

import pytest

from moe_defense.errors import JudgeError
from moe_defense.judges import Verdict, cohen_kappa, pairwise_agreement

S, N = Verdict.scored(True), Verdict.scored(False)


def test_kappa_matches_a_worked_example():
    # 2x2 table: both yes 20, a-only 5, b-only 10, both no 15 -> po 0.7, pe 0.5, kappa 0.4
    a = [True] * 20 + [True] * 5 + [False] * 10 + [False] * 15
    b = [True] * 20 + [False] * 5 + [True] * 10 + [False] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_kappa_is_undefined_for_constant_equal_labels():
    assert cohen_kappa([True, True], [True, True]) is None
    assert cohen_kappa([], []) is None


def test_pairs_count_only_items_both_scored():
    verdicts = {
        "keyword": [S, S, N, N, Verdict.error("down")],
        "harmbench": [S, N, N, Verdict.unscored("parse_failure"), S],
        "llamaguard": [S, S, N, N, N],
    }
    pairs = {(p.judge_a, p.judge_b): p for p in pairwise_agreement(verdicts)}
    assert list(pairs) == [("harmbench", "keyword"), ("harmbench", "llamaguard"), ("keyword", "llamaguard")]
    hk = pairs[("harmbench", "keyword")]
    assert (hk.n_items, hk.n_both_scored, hk.agreement) == (5, 3, pytest.approx(2 / 3))
    kl = pairs[("keyword", "llamaguard")]
    assert (kl.n_both_scored, kl.agreement, kl.kappa) == (4, 1.0, 1.0)
    assert kl.to_dict()["judge_a"] == "keyword"


def test_no_shared_scored_items_gives_none():
    (pair,) = pairwise_agreement({"a": [Verdict.error("x")], "b": [S]})
    assert (pair.n_both_scored, pair.agreement, pair.kappa) == (0, None, None)


def test_different_item_counts_are_an_error():
    with pytest.raises(JudgeError, match="same items"):
        pairwise_agreement({"a": [S], "b": [S, N]})
