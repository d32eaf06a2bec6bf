"""Model specs, adapter facts and the errors a user meets first."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from moe_defense.cli import main
from moe_defense.errors import ModelLoadError, UnsupportedArchitectureError
from moe_defense.models import (
    ADAPTERS,
    LoadOptions,
    adapter_for,
    build_tiny,
    load_model,
)

REQUIRED = {
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "deepseek_v2",
    "deepseek_v3",
    "gpt_oss",
    "granitemoe",
    "phimoe",
}

CONFIG_EXPERTS = {  # the config field each family names its expert count with
    "mixtral": "num_local_experts",
    "qwen2_moe": "num_experts",
    "qwen3_moe": "num_experts",
    "olmoe": "num_experts",
    "deepseek_v2": "n_routed_experts",
    "deepseek_v3": "n_routed_experts",
    "gpt_oss": "num_local_experts",
    "granitemoe": "num_local_experts",
    "phimoe": "num_local_experts",
}


def test_every_required_architecture_has_an_adapter():
    assert REQUIRED <= set(ADAPTERS.names())


def test_adapter_facts_equal_the_config(tiny):
    config = tiny.model.config
    facts = tiny.adapter.facts(tiny.model)
    assert facts.num_experts == getattr(config, CONFIG_EXPERTS[config.model_type])
    assert facts.top_k == config.num_experts_per_tok
    assert facts.num_layers == config.num_hidden_layers
    for name in facts.router_modules:
        router = tiny.model.get_submodule(name)
        assert router.weight.shape == (facts.num_experts, config.hidden_size)
    assert facts.num_router_parameters == sum(tiny.model.get_parameter(n).numel() for n in facts.router_parameters)
    first_dense = getattr(config, "first_k_dense_replace", 0) or 0
    assert facts.moe_layers == list(range(first_dense, config.num_hidden_layers))


def test_inspect_prints_the_config_facts(tiny, capsys):
    assert main(["inspect", tiny.spec, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model_type"] == tiny.model.config.model_type
    assert printed["top_k"] == tiny.model.config.num_experts_per_tok
    assert printed["num_experts"] == tiny.adapter.num_experts
    assert printed["moe_layers"] == tiny.adapter.moe_layers()
    assert printed["fingerprint"] == tiny.fingerprint()


def test_tiny_models_are_deterministic_and_fingerprints_track_weights():
    first, second = build_tiny("olmoe", seed=3), build_tiny("olmoe", seed=3)
    assert first.fingerprint() == second.fingerprint()
    assert build_tiny("olmoe", seed=4).fingerprint() != first.fingerprint()
    with torch.no_grad():
        next(iter(second.adapter.router_parameters(second.model).values()))[0, 0] += 1.0
    assert second.fingerprint() != first.fingerprint()


def test_local_checkpoint_loads_with_safetensors(tmp_path):
    tiny = build_tiny("qwen3_moe", seed=0)
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = load_model(str(tmp_path))
    assert loaded.adapter.model_type == "qwen3_moe"
    assert loaded.fingerprint() == tiny.fingerprint()
    weights = load_file(tmp_path / "model.safetensors")
    assert set(loaded.adapter.router_parameters(loaded.model)) <= set(weights)


def test_dense_checkpoint_is_refused_before_loading_weights(tmp_path):
    config = AutoConfig.for_model(
        "llama",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=64,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="'llama' is a dense model.*supported: deepseek_v2"):
        load_model(str(tmp_path))


def test_unsupported_moe_type_names_the_fix():
    config = AutoConfig.for_model("dbrx")
    with pytest.raises(
        UnsupportedArchitectureError, match="no router adapter.*Add one in moe_defense/models/adapters/"
    ):
        adapter_for(config)


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("tiny:llama", UnsupportedArchitectureError, "dense model"),
        ("tiny:no_such_type", ModelLoadError, "no model_type 'no_such_type'"),
        ("/no/such/dir", ModelLoadError, "cannot read a model config"),
    ],
)
def test_bad_model_specs(spec, error, message):
    with pytest.raises(error, match=message):
        load_model(spec)


def test_cli_reports_errors_without_a_traceback(capsys):
    assert main(["inspect", "tiny:llama"]) == 1
    err = capsys.readouterr().err
    assert "dense model" in err and "Traceback" not in err


def test_remote_code_is_off_by_default():
    assert LoadOptions().trust_remote_code is False


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", "org/moe", "--revision", "0123abc"],
        ["attack", "org/moe", "--attack", "none", "--data", "demo-harmful", "--out", "run", "--revision", "0123abc"],
    ],
)
def test_a_pinned_revision_reaches_the_hub_reads(argv, monkeypatch, tmp_path, capsys):
    """`--revision` (and a recipe's `revision:`) pins the hub commit every read of config, tokenizer and
    weights asks for: a release is hardened on the checkpoint it ships."""
    asked = []

    def refuse(path, **kwargs):
        asked.append((path, kwargs.get("revision")))
        raise OSError("offline")

    monkeypatch.setattr(AutoConfig, "from_pretrained", refuse)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    assert asked == [("org/moe", "0123abc")]
    assert "cannot read a model config from 'org/moe'" in capsys.readouterr().err
