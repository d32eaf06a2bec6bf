"""The router patch as a product: read it, check it against a base, apply it, export it as a PEFT adapter.

A patch is `router_patch.safetensors`: the router tensors of a hardened model, with the fingerprint of the
base it was trained from. Applied to any other base it would silently produce a model nobody verified, so
every use checks the fingerprint first. The PEFT export is for teams whose stack loads adapters: LoRA of
rank = number of experts on each router weight reproduces the trained delta exactly (its SVD), and a
router whose bias (or a buffer) changed travels whole as a `modules_to_save` module. It loads with
`PeftModel.from_pretrained` + `merge_and_unload` and needs nothing of moe-defense.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import save

from moe_defense.defenses.checkpoint import check_output_location
from moe_defense.errors import ConfigError, PatchError
from moe_defense.models.loading import LoadedModel
from moe_defense.runner.rundir import atomic_write

PATCH_FORMAT = "moe-defense/router-patch@1"
ROUTER_PATCH = "router_patch.safetensors"
ROUTER_ADAPTER = "router_adapter"  # the PEFT export a harden run writes beside the patch
PATCH_SOURCE = "moe_defense_patch.json"
LM_HEAD = "lm_head"  # in an exported adapter: which patch and base it came from


@dataclass
class RouterPatch:
    """The tensors of a patch and what its metadata says about them."""

    path: Path
    tensors: dict[str, torch.Tensor]
    base_fingerprint: str
    # what else the run changed: "" (nothing: the patch is the hardening), "expert_lora" (the run's expert adapter
    # completes it), "other" (non-router tensors changed: ship the run's hardened_model/)
    companion: str

    @classmethod
    def read(cls, path: str | Path) -> RouterPatch:
        """A patch file, or the run directory holding one."""
        path = Path(path)
        if path.is_dir():
            path = path / ROUTER_PATCH
        if not path.is_file():
            raise PatchError(f"no router patch at {path} (give router_patch.safetensors or the run directory).")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (safe_open API)
        if metadata.get("format") != PATCH_FORMAT:
            raise PatchError(f"{path} is not a moe-defense router patch (format {metadata.get('format')!r}).")
        return cls(path, tensors, metadata["base_fingerprint"], metadata.get("companion", ""))

    def check_base(self, base: LoadedModel, router_only: bool = False) -> None:
        """Refuse a base the patch was not made for (naming both fingerprints), and a patch that is not the
        whole hardening: the run changed non-router tensors too (`router_only`: also refuse one completed by
        an expert adapter)."""
        found = base.fingerprint()
        if found != self.base_fingerprint:
            raise PatchError(
                f"router patch {self.path} was made for the base with fingerprint {self.base_fingerprint}; "
                f"{base.spec} has fingerprint {found} (another checkpoint, revision or dtype). Nothing was written."
            )
        if self.companion == "other" or (router_only and self.companion):
            raise PatchError(
                f"the run that wrote {self.path} changed non-router tensors too ({self.companion}): its router patch "
                "alone is not the hardened model. Ship that run's hardened_model/ (or its expert adapter with it)."
            )
        targets = base.adapter.router_tensors(base.model)
        unknown = sorted(set(self.tensors) - set(targets))
        if unknown:
            raise PatchError(f"router patch {self.path} has tensors this model's routers lack: {unknown[:4]}.")
        for name, tensor in self.tensors.items():
            if targets[name].shape != tensor.shape:
                raise PatchError(
                    f"router patch {self.path}: {name} has shape {tuple(tensor.shape)}, the model "
                    f"{tuple(targets[name].shape)}."
                )


def changed_tensors(base: dict[str, torch.Tensor], patched: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per patched tensor that differs from the base: its largest absolute change."""
    changes = {}
    for name, tensor in patched.items():
        largest = float((tensor.detach().float().cpu() - base[name].detach().float().cpu()).abs().max())
        if largest > 0:
            changes[name] = largest
    return changes


def save_router_patch(loaded: LoadedModel, path: Path, base_fingerprint: str, companion: str = "") -> int:
    """Only the router tensors, with the base model's fingerprint and what else the run changed
    (`RouterPatch.companion`); returns the file size in bytes."""
    if companion not in ("", "expert_lora", "other"):
        raise PatchError(f"patch companion {companion!r} is not '', 'expert_lora' or 'other'.")
    tensors = {name: t.detach().cpu().contiguous() for name, t in loaded.adapter.router_tensors(loaded.model).items()}
    metadata = {"format": PATCH_FORMAT, "base_fingerprint": base_fingerprint, "companion": companion}
    atomic_write(path, deterministic_safetensors(tensors, metadata))
    return path.stat().st_size


def deterministic_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes with the metadata in sorted order: safetensors writes it in hash-map order, which
    differs from process to process, so one patch would have several sha256s (the tensors are already sorted)."""
    data = bytearray(save(tensors, metadata=metadata))
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    canonical = json.dumps(header, separators=(",", ":")).encode()
    if len(canonical) > length:  # the same keys and values in another order cannot be longer than the padded header
        raise PatchError(f"safetensors header re-encoded to {len(canonical)} bytes, more than its {length}.")
    data[8 : 8 + length] = canonical.ljust(length)
    return bytes(data)


def apply_router_patch(base: LoadedModel, patch: RouterPatch) -> None:
    """Load a checked patch into `base` in place (the caller saves it elsewhere: never over its input)."""
    patch.check_base(base)
    targets = base.adapter.router_tensors(base.model)
    with torch.no_grad():
        for name, tensor in patch.tensors.items():
            targets[name].copy_(tensor.to(targets[name].device, targets[name].dtype))


def _router_module(name: str) -> str:
    return name.rsplit(".", 1)[0]


def export_peft_adapter(
    loaded: LoadedModel, base: dict[str, torch.Tensor], patched: dict[str, torch.Tensor], out: Path, source: dict
) -> dict[str, Any]:
    """Write the change `base` -> `patched` (router tensors by name) as a PEFT adapter of `loaded`'s
    architecture to `out`; returns what went into it (also written beside it, with `source`).

    `loaded` is wrapped, filled and unwrapped again: its tensors are unchanged afterwards, so the base or
    the hardened model itself can carry the export."""
    changed = changed_tensors(base, patched)
    if not changed:
        raise PatchError("the patch equals its base: there is nothing to export.")
    whole = sorted({_router_module(name) for name in changed if not name.endswith(".weight")})
    lora = sorted(name for name in changed if name.endswith(".weight") and _router_module(name) not in whole)
    rank = loaded.adapter.num_experts
    # PEFT needs one LoRA target; when every changed router travels whole (gpt-oss: all routers have a bias),
    # a rank-1 factor pair on the output head with B = 0 (PEFT's init: exactly no change) is that target
    anchor = [] if lora else [LM_HEAD]
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,  # scaling 1: B @ A is the delta itself
        target_modules=anchor,
        target_parameters=[name.removeprefix("model.") for name in lora] or None,
        modules_to_save=whole or None,
        rank_pattern={LM_HEAD: 1},
        alpha_pattern={LM_HEAD: 1},
    )
    kept = {module: loaded.model.get_submodule(module).state_dict() for module in whole}
    kept = {module: {key: t.detach().clone() for key, t in state.items()} for module, state in kept.items()}
    wrapped = get_peft_model(loaded.model, config)
    try:
        named = dict(wrapped.named_modules())
        with torch.no_grad():
            for name in lora:
                delta = patched[name].detach().float().cpu() - base[name].detach().float().cpu()
                u, s, vh = torch.linalg.svd(delta, full_matrices=False)  # exact: rank = experts <= hidden size
                layer = named[f"base_model.model.{_router_module(name)}"]
                layer.lora_B["default"].weight.copy_((u * s)[:, :rank])
                layer.lora_A["default"].weight.copy_(vh[:rank])
                if not torch.allclose(layer.get_delta_weight("default").float().cpu(), delta, atol=1e-5):
                    raise PatchError(f"{name}: the LoRA factors do not reproduce the patch's delta.")
            for module in whole:
                copy = named[f"base_model.model.{module}"].modules_to_save["default"]
                for key, tensor in copy.state_dict().items():
                    source_tensor = patched.get(f"{module}.{key}")  # a tensor the patch lacks is the base's own
                    if source_tensor is not None:
                        tensor.copy_(source_tensor.to(tensor.device, tensor.dtype))
        wrapped.save_pretrained(str(out))
    finally:
        wrapped.unload()  # the plain model again, not merged; but PEFT leaves the filled copies of whole modules
        for module, state in kept.items():
            loaded.model.get_submodule(module).load_state_dict(state)
    facts = {**source, "lora_rank": rank, "lora_weights": len(lora), "whole_modules": whole}
    (out / PATCH_SOURCE).write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def check_new_directory(out: Path, *inputs: str | Path) -> None:
    """A verb's output is a new (or empty) directory that is none of, and inside none of, its inputs."""
    try:
        for source in inputs:
            check_output_location(out, str(source))
    except ConfigError as error:
        raise PatchError(str(error)) from None
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PatchError(f"--out {out} exists and is not empty; choose a new directory (nothing is overwritten).")
