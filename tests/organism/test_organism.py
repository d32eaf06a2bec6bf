"""Organism build: plain-transformers reload, determinism, cache integrity, spec resolution."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import moe_defense
from moe_defense.data.demo_corpus import KINDS, demo_examples
from moe_defense.organism import OrganismConfig, cache_dir, ensure_built, is_valid
from moe_defense.organism.build import splice_drill
from moe_defense.organism.cache import WEIGHTS, build_into

SMALL = {
    "num_layers": 2,
    "helpful_steps": 12,
    "safety_steps": 6,
    "copy_drill": 32,
    "safety_copy_drill": 8,
    "safety_splice_drill": 16,
    "batch_size": 8,
}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_DEFENSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("arch", ["mixtral", "olmoe"])
def test_build_reloads_with_plain_transformers(tmp_path, arch):
    out = tmp_path / arch
    manifest = build_into(OrganismConfig(arch=arch, **SMALL), out)
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == arch
    assert manifest["weights_sha256"] and (out / WEIGHTS).exists()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "how do i bake bread ?"}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id not in ids[0].tolist()
    with torch.no_grad():
        assert model.generate(input_ids=ids, max_new_tokens=4, do_sample=False).shape[1] > ids.shape[1]


def test_same_seed_gives_bit_identical_weights_whatever_the_callers_thread_count(tmp_path):
    config = OrganismConfig(**SMALL)
    threads = torch.get_num_threads()
    build_into(config, tmp_path / "a")
    other = 2 if threads == 1 else 1
    torch.set_num_threads(other)  # training pins its own count (config.threads) and gives the caller's back
    try:
        build_into(config, tmp_path / "b")
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(threads)
    first, second = load_file(tmp_path / "a" / WEIGHTS), load_file(tmp_path / "b" / WEIGHTS)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    build_into(OrganismConfig(**{**SMALL, "seed": 1}), tmp_path / "c")
    third = load_file(tmp_path / "c" / WEIGHTS)
    assert not all(torch.equal(first[name], third[name]) for name in first)


def test_corrupt_or_partial_cache_entries_are_rebuilt_never_loaded(cache):
    config = OrganismConfig(**SMALL)
    directory = ensure_built(config)
    assert directory == cache_dir(config) and is_valid(directory, config)
    weights = directory / WEIGHTS
    good = weights.read_bytes()
    weights.write_bytes(good[:-64] + bytes(64))  # flipped bytes: the hash no longer matches
    assert not is_valid(directory, config)
    ensure_built(config)
    assert weights.read_bytes() == good  # rebuilt, deterministically identical
    (directory / "organism.json").unlink()  # a build killed before its manifest was written
    assert not is_valid(directory, config)
    ensure_built(config)
    assert is_valid(directory, config)
    assert not is_valid(directory, OrganismConfig(**{**SMALL, "safety_steps": 7}))  # keyed by exact settings


def test_organism_spec_resolves_through_the_cache(cache, monkeypatch):
    import moe_defense.organism as organism

    monkeypatch.setattr(
        organism, "config_from_spec", lambda spec: OrganismConfig(arch=spec.partition(":")[2] or "mixtral", **SMALL)
    )
    loaded = moe_defense.load_model("organism:olmoe")
    assert loaded.adapter.model_type == "olmoe" and loaded.spec == "organism:olmoe"


def test_bad_organism_spec_is_a_clear_error():
    from moe_defense.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="bad organism spec 'organism:dbrx'.*no router adapter"):
        moe_defense.load_model("organism:dbrx")


def test_splice_drill_keeps_test_keys_unseen_and_answers_by_kind():
    held_out = {ex.request_key for kind in KINDS for ex in demo_examples(kind, "test")}
    test_prompts = {ex.prompt for kind in KINDS for ex in demo_examples(kind, "test")}
    drill = splice_drill(400, seed=0, harmful_share=0.5)
    assert len(drill) == 400 and not test_prompts & {pair.prompt for pair in drill}
    assert 150 < sum(pair.kind == "harmful" for pair in drill) < 250
    for pair in drill:
        assert not any(key in pair.prompt for key in held_out if len(key.split()) > 3)
        refused = pair.response.startswith(("i ", "sorry", "no ,"))
        assert refused == (pair.kind == "harmful"), pair
