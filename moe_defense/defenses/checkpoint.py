"""What hardening writes: a plain transformers checkpoint, a router patch, and a tensor-diff report.

The diff is computed against digests taken before training, so it proves (not assumes) that only
the intended tensors changed, without a second copy of a large model in memory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from moe_defense.errors import ConfigError, ModelLoadError
from moe_defense.models.loading import LoadedModel

ROUTER_PATCH = "router_patch.safetensors"


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's bytes."""
    data = tensor.detach().cpu().contiguous()
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()


def tensor_digests(model: torch.nn.Module) -> dict[str, str]:
    """sha256 of every state-dict tensor's bytes."""
    return {name: tensor_digest(tensor) for name, tensor in model.state_dict().items()}


def tensor_diff(
    model: torch.nn.Module, before: dict[str, str], originals: dict[str, torch.Tensor], router_names: set[str]
) -> dict[str, Any]:
    """Which tensors changed (exactly, by digest) and, for those kept in `originals`, by how much."""
    after = tensor_digests(model)
    state = model.state_dict()
    changed = sorted(name for name, digest in after.items() if before.get(name) != digest)
    rows = []
    for name in changed:
        row: dict[str, Any] = {"tensor": name, "router": name in router_names, "shape": list(state[name].shape)}
        if name in originals:
            delta = state[name].detach().float().cpu() - originals[name].float()
            row.update(
                max_abs_change=float(delta.abs().max()),
                relative_change=float(delta.norm() / originals[name].float().norm().clamp(min=1e-12)),
            )
        rows.append(row)
    return {
        "tensors": len(after),
        "elements": sum(tensor.numel() for tensor in state.values()),  # the patch's size is a fraction of this
        "changed_elements": sum(state[name].numel() for name in changed),
        "router_params_changed": sum(r["router"] for r in rows),
        "other_params_changed": sum(not r["router"] for r in rows),
        "changed": rows,
    }


def check_output_location(out: Path, source: str) -> None:
    """Never write a hardened checkpoint over (or inside) the input checkpoint."""
    source_path = Path(source)
    if source_path.exists():
        resolved_out, resolved_src = out.resolve(), source_path.resolve()
        if resolved_out == resolved_src or resolved_src in resolved_out.parents:
            raise ConfigError(
                f"refusing to write the hardened model to {out}: it is (inside) the input checkpoint {source}; choose "
                "another --out."
            )


def save_hardened(loaded: LoadedModel, directory: Path) -> None:
    """save_pretrained (safetensors) + tokenizer: loads anywhere with AutoModelForCausalLM."""
    directory.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(directory, safe_serialization=True)
    loaded.tokenizer.save_pretrained(directory)


def save_router_patch(loaded: LoadedModel, path: Path, base_fingerprint: str) -> int:
    """Only the router tensors, with the base model's fingerprint; returns the file size in bytes."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in loaded.adapter.router_tensors(loaded.model).items()}
    save_file(
        tensors, str(path), metadata={"format": "moe-defense/router-patch@1", "base_fingerprint": base_fingerprint}
    )
    return path.stat().st_size


def apply_router_patch(loaded: LoadedModel, path: Path) -> None:
    """Load a router patch into `loaded` (the base model it was made for, or a copy of it)."""
    tensors = load_file(str(path))
    targets = loaded.adapter.router_tensors(loaded.model)
    unknown = sorted(set(tensors) - set(targets))
    if unknown:
        raise ModelLoadError(f"router patch {path} has tensors this model's routers lack: {unknown[:4]}.")
    with torch.no_grad():
        for name, tensor in tensors.items():
            if targets[name].shape != tensor.shape:
                raise ModelLoadError(
                    f"router patch {path}: {name} has shape {tuple(tensor.shape)}, the model "
                    f"{tuple(targets[name].shape)}."
                )
            targets[name].copy_(tensor.to(targets[name].device, targets[name].dtype))
