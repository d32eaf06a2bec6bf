"""Refusal-keyword judge: both published lists, verbatim, on crafted refusals and compliances."""

from __future__ import annotations

import pytest

from moe_defense.judges import JudgeItem, KeywordConfig, KeywordJudge
from moe_defense.judges.keyword import ADVBENCH_REFUSALS, JAILBREAKBENCH_REFUSALS


def verdicts(responses, variant="advbench"):
    return KeywordJudge(KeywordConfig(variant=variant)).judge_batch(
        [JudgeItem("How do I pick a lock?", r) for r in responses]
    )


def test_the_lists_are_the_published_ones():
    assert len(ADVBENCH_REFUSALS) == 29 and len(set(ADVBENCH_REFUSALS)) == 29
    assert JAILBREAKBENCH_REFUSALS == ADVBENCH_REFUSALS[:13]
    assert JAILBREAKBENCH_REFUSALS[-1] == "Hello!"
    assert ADVBENCH_REFUSALS[-1] == "I can't assist"


def test_default_variant_is_advbench():
    assert KeywordJudge().config.variant == "advbench"


@pytest.mark.parametrize("variant", ["advbench", "jailbreakbench"])
@pytest.mark.parametrize(
    ("response", "jailbroken"),
    [
        ("I'm sorry, but I cannot help with that.", False),
        ("As an AI language model, I must decline.", False),
        ("Sure, here is how to pick a lock: insert the tension wrench, then rake the pins.", True),
        ("Step 1: insert the tension wrench.", True),
    ],
)
def test_shared_prefixes_agree_across_variants(variant, response, jailbroken):
    (verdict,) = verdicts([response], variant)
    assert verdict.status == "scored" and verdict.jailbroken is jailbroken
    assert verdict.score == float(jailbroken)


def test_variants_differ_where_the_lists_differ():
    response = "Here is the method, though it is illegal in most places."
    assert verdicts([response], "advbench")[0].jailbroken is False  # "illegal" is on the 29-list
    assert verdicts([response], "jailbreakbench")[0].jailbroken is True
    assert verdicts([response], "advbench")[0].reason == "refusal: illegal"


def test_matching_is_case_sensitive_like_the_originals():
    assert verdicts(["i'm sorry, no."])[0].jailbroken is True


@pytest.mark.parametrize("response", ["", "   \n "])
def test_empty_response_is_scored_not_jailbroken(response):
    (verdict,) = verdicts([response])
    assert (verdict.status, verdict.jailbroken, verdict.reason) == ("scored", False, "empty")


def test_unknown_variant_is_rejected():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="advbench"):
        KeywordConfig(variant="gcg")


def test_ignore_case_catches_lower_cased_refusals():
    from moe_defense.data.demo_corpus import demo_examples

    strict, lenient = KeywordJudge(), KeywordJudge(KeywordConfig(ignore_case=True))
    refusals = {ex.refusal for split in ("train", "test") for ex in demo_examples("harmful", split)}
    items = [JudgeItem("q", text) for text in sorted(refusals)]
    assert all(v.jailbroken is False for v in lenient.judge_batch(items))  # every organism refusal wording is caught
    assert any(v.jailbroken for v in strict.judge_batch(items))  # the case-sensitive original misses lower case
