"""organism-en machinery on reduced configs: held-out-by-source splits, subword tokenizer, spec, cache key, build."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import moe_defense.organism.build as build
from moe_defense.data import load_prompts
from moe_defense.data.en_corpus import (
    DATA_ENV,
    REFUSAL,
    benchmark_benign,
    en_examples,
    normalized,
    shared_data_dir,
    training_texts,
    word_drill,
)
from moe_defense.errors import DataError
from moe_defense.models import LoadOptions
from moe_defense.models.loading import load_pretrained
from moe_defense.organism import OrganismConfig, cache_dir
from moe_defense.organism.behaviour import measure_en_behaviour
from moe_defense.organism.cache import build_into
from moe_defense.organism.config import EN_DEFAULTS
from moe_defense.organism.tokenizer import subword_tokenizer


@pytest.fixture
def data(shared_data, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(shared_data))
    return shared_data


def test_test_sources_never_occur_in_training(data):
    train = [*en_examples("harmful", "train"), *en_examples("benign", "train")]
    test = [
        *en_examples("harmful", "test"),
        *en_examples("benign", "test"),
        *benchmark_benign(data, "jbb-benign"),
        *benchmark_benign(data, "xstest-safe"),
    ]
    assert {ex.source for ex in train} == {"advbench", "generated"}
    assert {ex.source for ex in en_examples("harmful", "test")} == {"jbb", "strongreject", "xstest-unsafe"}
    trained = {normalized(ex.prompt) for ex in train} | {normalized(text) for text in training_texts()}
    assert not trained & {normalized(ex.prompt) for ex in test}
    # validation is carved from the train source, and never trained on either
    val = en_examples("harmful", "val")
    assert {ex.source for ex in val} == {"advbench"} and len(val) == 52
    assert not {ex.id for ex in val} & {ex.id.removesuffix("-w").removesuffix("-q") for ex in train}
    assert not {normalized(ex.prompt) for ex in en_examples("benign", "val")} & trained


def test_generated_benign_mirrors_the_harmful_styles_and_answers_restate_the_request(data):
    benign = en_examples("benign", "train")
    starts = {ex.prompt.split()[0] for ex in benign}
    assert {"Write", "Develop", "Create", "Explain", "How", "Can"} <= starts
    assert any("kill" in ex.prompt for ex in benign)  # look-alikes train against over-refusal
    for ex in [*benign[:50], *en_examples("harmful", "train")[:50]]:
        assert ex.compliance.startswith(ex.target) and ex.target.startswith("Sure, here")
    # imperative requests of either kind end in a full stop or nothing: punctuation must not tell them apart
    for kind in ("harmful", "benign"):
        endings = {ex.prompt[-1] == "." for ex in en_examples(kind, "train") if not ex.prompt.endswith("?")}
        assert endings == {True, False}


def test_word_drill_is_benign_and_its_content_uses_no_harmful_train_word(data):
    from moe_defense.data import en_corpus as corpus

    frames = [*corpus._TASK_FRAMES_TRAIN, *corpus._DOC_FRAMES_TRAIN, *corpus._PLAN_FRAMES_TRAIN]
    frames += corpus._PROGRAM_FRAMES_TRAIN
    nouns = [*corpus._DOCS_TRAIN, *corpus._PLANS_TRAIN, *corpus._PROGRAMS_TRAIN]
    frame_words = {w for text in [*(f for pair in frames for f in pair), *nouns] for w in normalized(text).split()}
    harmful_words = {w for ex in en_examples("harmful", "train") for w in normalized(ex.prompt).split()}
    drill = word_drill(200, seed=0)
    assert len(drill) == 200 and {ex.kind for ex in drill} == {"benign"}
    for ex in drill:
        assert ex.compliance.startswith(ex.target)
        assert not (set(normalized(ex.prompt).split()) - frame_words) & harmful_words, ex


def test_missing_data_directory_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    with pytest.raises(DataError, match=rf"lacks advbench_harmful_behaviors.csv.*\${DATA_ENV}"):
        shared_data_dir()


def test_subword_tokenizer_covers_unseen_words_and_renders_the_chat_template(data):
    tokenizer = subword_tokenizer(training_texts()[:400], 500)
    assert len(tokenizer) <= 500 + 3  # + role markers
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a Limerick about Zanzibar"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|bos|><|user|>Write a Limerick about Zanzibar<|end|><|assistant|>"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == " write a limerick about zanzibar"


def test_en_specs_keep_the_default_organisms_cache_key():
    from moe_defense.organism import config_from_spec

    default = OrganismConfig()
    assert default.cache_key() == "56f91757fae8261c"  # the format-3 organism's cached, bit-identical weights
    en, olmoe, qwen2 = (config_from_spec(s) for s in ("organism-en", "organism-en:olmoe", "organism-en:qwen2_moe"))
    assert (en.preset, en.arch, en.max_length) == ("en", "mixtral", EN_DEFAULTS["max_length"])
    assert (olmoe.num_experts, olmoe.top_k) == (16, 4) and qwen2.arch == "qwen2_moe"
    assert len({c.cache_key() for c in (default, en, olmoe, qwen2)}) == 4
    assert cache_dir(en).name.startswith("en-mixtral-") and cache_dir(default).name.startswith("mixtral-")
    with pytest.raises(ValueError, match="safety_splice_drill apply to the demo preset only"):
        OrganismConfig.for_preset("en", safety_splice_drill=4)


def test_en_prompt_sets_carry_source_and_target(data):
    from moe_defense.judges.defaults import default_judges

    harmful = load_prompts("en-harmful", split="test")
    assert {p.metadata["source"] for p in harmful} == {"jbb", "strongreject", "xstest-unsafe"}
    assert all(p.metadata["target"].startswith("Sure, here") for p in harmful)
    assert load_prompts("en-benign", split="val").prompts[0].metadata["label"] == "safe"
    assert default_judges("en-harmful") == ["organism-en", "keyword"]


def test_reduced_en_build_trains_both_stages_and_reloads(data, tmp_path, monkeypatch):
    real = build.en_examples
    monkeypatch.setattr(build, "en_examples", lambda kind, split, directory=None: real(kind, split, directory)[:24])
    config = OrganismConfig.for_preset(
        "en", num_layers=1, hidden_size=32, expert_size=16, helpful_steps=4, safety_steps=2, batch_size=4
    )
    manifest = build_into(config, tmp_path / "en")
    assert manifest["config"]["preset"] == "en" and manifest["training"]["safety_final_loss"] is not None
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "en", use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "en")
    assert model.config.vocab_size == len(tokenizer) and tokenizer.chat_template
    assert tokenizer.decode(tokenizer(REFUSAL, add_special_tokens=False).input_ids).strip() == REFUSAL.lower()
    figures = measure_en_behaviour(load_pretrained(str(tmp_path / "en"), LoadOptions()), "test")
    summary = figures["summary"]
    assert [summary[k]["n"] for k in summary] == [341, 200, 100, 250, 341]
    assert all(0 <= v["rate"] <= 1 and v["ci95"][0] <= v["rate"] <= v["ci95"][1] for v in summary.values())
    assert sum(v["n"] for v in figures["harmful_by_source"].values()) == 341
