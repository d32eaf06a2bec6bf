"""The demo corpus is deterministic, held out by template, key and wording, and word-closed under train."""

from __future__ import annotations

import re

import pytest

from moe_defense.data.demo_corpus import (
    KINDS,
    DemoExample,
    corpus_vocabulary,
    demo_examples,
    helpful_only_examples,
    safety_examples,
)

SPLITS = ("train", "test")


def _all(split: str) -> list[DemoExample]:
    return [ex for kind in KINDS for ex in demo_examples(kind, split)]


def _skeleton(ex: DemoExample, text: str) -> str:
    """The wording an answer was built from, with its request key abstracted away."""
    return text.replace(ex.request_key, "{key}")


def test_two_calls_are_equal():
    for kind in KINDS:
        for split in SPLITS:
            assert demo_examples(kind, split) == demo_examples(kind, split)
    assert corpus_vocabulary() == corpus_vocabulary()


@pytest.mark.parametrize("kind", KINDS)
def test_sizes(kind):
    assert 600 <= len(demo_examples(kind, "train")) <= 1500
    assert 40 <= len(demo_examples(kind, "test")) <= 80


def test_harmful_and_benign_are_balanced():
    for split in SPLITS:
        assert len(demo_examples("harmful", split)) == len(demo_examples("benign", split))


def test_ids_are_unique_and_keys_belong_to_one_kind():
    examples = _all("train") + _all("test")
    assert len({ex.id for ex in examples}) == len(examples)
    kind_of_key: dict[str, str] = {}
    for ex in examples:
        assert kind_of_key.setdefault(ex.request_key, ex.kind) == ex.kind, ex.request_key


def test_at_least_six_harmful_categories():
    assert len({ex.category for ex in demo_examples("harmful", "train")}) >= 6


def test_no_prompt_in_both_splits():
    assert not {ex.prompt for ex in _all("train")} & {ex.prompt for ex in _all("test")}


def test_test_holds_templates_and_wordings_train_never_shows():
    train, test = _all("train"), _all("test")
    assert {ex.template_id for ex in test} - {ex.template_id for ex in train}
    assert {_skeleton(ex, ex.compliance) for ex in test} - {_skeleton(ex, ex.compliance) for ex in train}
    harmful_train, harmful_test = demo_examples("harmful", "train"), demo_examples("harmful", "test")
    assert {_skeleton(ex, ex.refusal) for ex in harmful_test} - {_skeleton(ex, ex.refusal) for ex in harmful_train}


def test_every_category_has_test_only_keys_and_test_also_reuses_train_keys():
    for kind in KINDS:
        train, test = demo_examples(kind, "train"), demo_examples(kind, "test")
        for category in {ex.category for ex in train}:
            train_keys = {ex.request_key for ex in train if ex.category == category}
            test_keys = {ex.request_key for ex in test if ex.category == category}
            assert test_keys - train_keys, (kind, category)
            assert test_keys & train_keys, (kind, category)


def test_test_vocabulary_is_covered_by_train():
    assert set(corpus_vocabulary("test")) <= set(corpus_vocabulary("train"))
    assert corpus_vocabulary() == corpus_vocabulary("train")
    assert len(corpus_vocabulary()) < 500


def test_text_is_lower_case_space_separated_words_and_punctuation():
    token = re.compile(r"[a-z]+|[.,?:;!]")
    for ex in _all("train") + _all("test"):
        for text in (ex.prompt, ex.target, ex.compliance, ex.refusal):
            assert all(token.fullmatch(t) for t in text.split()), text
            assert text == " ".join(text.split())


def test_answers_restate_the_request():
    for ex in _all("train") + _all("test"):
        assert ex.request_key in ex.prompt
        assert ex.compliance.startswith(ex.target + " : ")
        assert ex.target.endswith(ex.request_key)
        assert ex.compliance.count(ex.request_key) >= 2, "placeholder steps repeat the key"
        assert bool(ex.refusal) == (ex.kind == "harmful")


def test_refusal_wordings_vary():
    assert len({_skeleton(ex, ex.refusal) for ex in demo_examples("harmful", "train")}) >= 4


@pytest.mark.parametrize("split", SPLITS)
def test_stage_data_pairs_each_request_with_the_right_answer(split):
    by_id = {ex.id: ex for ex in _all(split)}
    helpful, safety = helpful_only_examples(split), safety_examples(split)
    assert [p.id for p in helpful] == [p.id for p in safety] == list(by_id)
    for pair in helpful:
        assert pair.response == by_id[pair.id].compliance
    for pair in safety:
        ex = by_id[pair.id]
        assert pair.prompt == ex.prompt and pair.kind == ex.kind
        assert pair.response == (ex.refusal if ex.kind == "harmful" else ex.compliance)


def test_unknown_kind_or_split_is_an_error():
    with pytest.raises(ValueError, match="supported"):
        demo_examples("toxic", "train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="supported"):
        demo_examples("harmful", "dev")  # type: ignore[arg-type]
