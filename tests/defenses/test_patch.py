"""The router patch as a product: fingerprint-checked apply/verify, and a PEFT export that reproduces the
hardened model's logits when loaded by plain transformers + peft (moe-defense not importable)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from moe_defense.cli import main
from moe_defense.defenses.patch import RouterPatch, apply_router_patch, export_peft_adapter, save_router_patch
from moe_defense.errors import PatchError
from moe_defense.models import build_tiny
from moe_defense.models.adapters import ADAPTERS
from moe_defense.models.loading import LoadedModel

IDS = [[5, 17, 42, 99, 3, 64, 7, 120, 33, 8]]

# Runs in a fresh interpreter where `import moe_defense` fails: the adapter must stand on transformers + peft.
PLAIN_LOAD = """
import json, sys
sys.modules["moe_defense"] = None
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
for job in json.loads(sys.argv[1]):
    base = AutoModelForCausalLM.from_pretrained(job["base"], dtype=torch.float32, use_safetensors=True)
    merged = PeftModel.from_pretrained(base, job["adapter"]).merge_and_unload().eval()
    with torch.no_grad():
        logits = merged(input_ids=torch.tensor(job["ids"])).logits
    torch.save(logits, job["logits"])
"""


def _harden_by_hand(base: LoadedModel, seed: int) -> LoadedModel:
    """A copy of `base` whose router parameters (weights and biases) moved, as training moves them."""
    hardened = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in hardened.adapter.router_parameters(hardened.model).values():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return hardened


def _logits(loaded: LoadedModel) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(input_ids=torch.tensor(IDS, device=loaded.device)).logits.cpu()


def _export_job(base: LoadedModel, hardened: LoadedModel, directory: Path) -> dict:
    base.model.save_pretrained(directory / "base", safe_serialization=True)
    fingerprint = base.fingerprint()
    export_peft_adapter(
        base,
        base.adapter.router_tensors(base.model),
        hardened.adapter.router_tensors(hardened.model),
        directory / "adapter",
        {"patch": "in memory", "base_fingerprint": fingerprint},
    )
    assert base.fingerprint() == fingerprint  # the export wrapped and unwrapped the base: nothing changed
    return {
        "base": str(directory / "base"),
        "adapter": str(directory / "adapter"),
        "ids": IDS,
        "logits": str(directory / "logits.pt"),
    }


@pytest.mark.slow
def test_peft_export_reproduces_the_hardened_model_on_every_architecture(organism, tmp_path):
    models = {model_type: build_tiny(model_type, seed=3) for model_type in ADAPTERS.names()}
    models["organism"] = organism
    jobs, expected = [], {}
    for name, base in models.items():
        hardened = _harden_by_hand(base, seed=len(jobs))
        expected[name] = _logits(hardened)
        assert not torch.allclose(expected[name], _logits(base), atol=1e-3)  # the patch changes the model
        jobs.append(_export_job(base, hardened, tmp_path / name))
    subprocess.run([sys.executable, "-c", PLAIN_LOAD, json.dumps(jobs)], check=True, cwd=tmp_path, timeout=600)
    for name, job in zip(models, jobs, strict=True):
        reloaded = torch.load(job["logits"])
        assert (reloaded - expected[name]).abs().max() < 1e-5, name
    with_bias = json.loads((tmp_path / "gpt_oss" / "adapter" / "adapter_config.json").read_text())
    assert with_bias["modules_to_save"]  # gpt-oss routers have a bias: they travel whole
    plain = json.loads((tmp_path / "mixtral" / "adapter" / "adapter_config.json").read_text())
    assert plain["r"] == models["mixtral"].adapter.num_experts and not plain["modules_to_save"]


def test_patch_refuses_another_base_and_names_both_fingerprints(tmp_path):
    base, other = build_tiny("qwen3_moe", seed=1), build_tiny("qwen3_moe", seed=2)
    hardened = _harden_by_hand(base, seed=0)
    save_router_patch(hardened, tmp_path / "p.safetensors", base.fingerprint())
    patch = RouterPatch.read(tmp_path / "p.safetensors")
    with pytest.raises(PatchError, match=f"{base.fingerprint()}.*{other.fingerprint()}"):
        apply_router_patch(other, patch)
    with pytest.raises(PatchError, match="made for the base"):
        patch.check_base(other)  # what `patch verify` and `patch export` run first
    apply_router_patch(base, patch)
    assert base.fingerprint() == hardened.fingerprint()


def test_a_patch_of_a_run_that_changed_other_tensors_is_not_shipped_alone(tmp_path):
    base = build_tiny("mixtral", seed=1)
    save_router_patch(_harden_by_hand(base, 0), tmp_path / "p.safetensors", base.fingerprint(), companion="other")
    with pytest.raises(PatchError, match="non-router tensors"):
        RouterPatch.read(tmp_path / "p.safetensors").check_base(base)
    save_router_patch(_harden_by_hand(base, 0), tmp_path / "l.safetensors", base.fingerprint(), "expert_lora")
    lora_patch = RouterPatch.read(tmp_path / "l.safetensors")
    lora_patch.check_base(base)  # applied with its expert adapter: allowed
    with pytest.raises(PatchError, match="non-router tensors"):
        lora_patch.check_base(base, router_only=True)  # but never exported as if it were the whole change


def test_patch_verbs_apply_verify_export_and_never_overwrite(tmp_path, capsys):
    base = build_tiny("olmoe", seed=1)
    hardened = _harden_by_hand(base, seed=0)
    run = tmp_path / "run"
    run.mkdir()
    save_router_patch(hardened, run / "router_patch.safetensors", base.fingerprint())
    common = ["--base", "tiny:olmoe", "--seed", "1"]

    assert main(["patch", "verify", str(run), *common, "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["tensors_changed"] == len(hardened.adapter.router_parameters(hardened.model))

    assert main(["patch", "apply", str(run), *common, "--out", str(tmp_path / "patched")]) == 0
    patched = LoadedModel(
        model=type(base.model).from_pretrained(tmp_path / "patched", use_safetensors=True),
        tokenizer=base.tokenizer,
        adapter=base.adapter,
        spec="patched",
    )
    assert torch.allclose(_logits(patched), _logits(hardened), atol=1e-6)

    assert main(["patch", "apply", str(run), *common, "--out", str(tmp_path / "patched")]) == 1
    assert "not empty" in capsys.readouterr().err  # the first output is untouched
    assert main(["patch", "apply", str(run), "--base", "tiny:olmoe", "--seed", "2", "--out", str(tmp_path / "x")]) == 1
    assert "fingerprint" in capsys.readouterr().err and not (tmp_path / "x").exists()

    assert main(["patch", "export", str(run), *common, "--out", str(tmp_path / "adapter")]) == 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert main(["patch", "verify", str(tmp_path / "nothing-here"), *common]) == 1
    assert "no router patch" in capsys.readouterr().err


def test_a_patch_has_the_same_bytes_in_every_process(tmp_path):
    """safetensors orders metadata by a per-process hash: the patch's bytes (and its sha256) must not."""
    script = textwrap.dedent("""
        import sys, torch
        from moe_defense.defenses.patch import deterministic_safetensors
        tensors = {"model.layers.0.mlp.gate.weight": torch.arange(6.0).reshape(2, 3), "b": torch.ones(1)}
        metadata = {"format": "f", "base_fingerprint": "0123", "companion": "", "z": "1", "a": "2"}
        open(sys.argv[1], "wb").write(deterministic_safetensors(tensors, metadata))
    """)
    paths = [tmp_path / f"patch{i}.safetensors" for i in range(4)]
    for path in paths:
        subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    assert len({path.read_bytes() for path in paths}) == 1
    with safe_open(str(paths[0]), "pt") as patch:
        assert patch.metadata() == {"format": "f", "base_fingerprint": "0123", "companion": "", "z": "1", "a": "2"}
        assert torch.equal(patch.get_tensor("model.layers.0.mlp.gate.weight"), torch.arange(6.0).reshape(2, 3))
