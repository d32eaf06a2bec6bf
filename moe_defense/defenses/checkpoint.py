"""What hardening writes: a plain transformers checkpoint, a tensor-diff report and router-sized training
checkpoints (the router patch itself lives in `patch.py`).

The diff is computed against digests taken before training, so it proves (not assumes) that only
the intended tensors changed, without a second copy of a large model in memory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from moe_defense.errors import ConfigError
from moe_defense.models.loading import LoadedModel

TRAINABLE_STATE = "trainable.safetensors"  # in every training checkpoint: the trained tensors, nothing frozen


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
    """Which tensors changed (exactly, by digest) and, for those kept in `originals`, by how much.

    `changed_elements` counts the elements that differ where the original is kept (a defense that repairs a
    few experts of a fused expert tensor changes slices of it), else the whole tensor; `changed_tensor_elements`
    counts whole changed tensors, which is what a patch of whole tensors carries."""
    after = tensor_digests(model)
    state = model.state_dict()
    changed = sorted(name for name, digest in after.items() if before.get(name) != digest)
    rows = []
    for name in changed:
        tensor = state[name].detach().cpu()
        row: dict[str, Any] = {"tensor": name, "router": name in router_names, "shape": list(tensor.shape)}
        if name in originals:
            delta = tensor.float() - originals[name].float()
            row.update(
                changed_elements=int((tensor != originals[name]).sum()),
                max_abs_change=float(delta.abs().max()),
                relative_change=float(delta.norm() / originals[name].float().norm().clamp(min=1e-12)),
            )
        else:
            row["changed_elements"] = tensor.numel()
        rows.append(row)
    return {
        "tensors": len(after),
        "elements": sum(tensor.numel() for tensor in state.values()),  # the patch's size is a fraction of this
        "changed_elements": sum(row["changed_elements"] for row in rows),
        "changed_tensor_elements": sum(state[name].numel() for name in changed),
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
                f"refusing to write to {out}: it is (inside) the input checkpoint {source}; choose another --out."
            )


def save_hardened(loaded: LoadedModel, directory: Path) -> None:
    """save_pretrained (safetensors) + tokenizer: loads anywhere with AutoModelForCausalLM."""
    directory.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(directory, safe_serialization=True)
    loaded.tokenizer.save_pretrained(directory)


def directory_bytes(directory: Path) -> int:
    """Bytes of the files under `directory` (0 when it does not exist)."""
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file()) if directory.is_dir() else 0


def state_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's state dict as stored (what a full checkpoint writes)."""
    return sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())


def trained_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters a run trains (requires_grad), by their live names (a PEFT wrapper's included)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: torch.nn.Module, directory: Path) -> int:
    """A training checkpoint's weights: only the trained tensors, so a router-only checkpoint of a 30B
    model is megabytes, not the 61 GB a full save writes. Returns the file's size in bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / TRAINABLE_STATE
    tensors = {name: p.detach().cpu().contiguous() for name, p in trained_parameters(model).items()}
    save_file(tensors, str(path), metadata={"format": "moe-defense/trainable@1"})
    return path.stat().st_size


def saved_trainable(model: torch.nn.Module, directory: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's trained tensors, checked to be exactly those `model` trains now (a checkpoint of another
    configuration is refused)."""
    path = directory / TRAINABLE_STATE
    if not path.is_file():
        raise ConfigError(f"checkpoint {directory} has no {TRAINABLE_STATE}: it cannot be resumed. Start a new run.")
    saved = load_file(str(path))
    live = trained_parameters(model)
    if set(saved) != set(live):
        missing, extra = sorted(set(live) - set(saved)), sorted(set(saved) - set(live))
        raise ConfigError(
            f"checkpoint {directory} trained other tensors than this run (missing {missing[:3]}, extra {extra[:3]}): "
            "it was written by another configuration. Start a new run directory."
        )
    return saved


def restore_trainable(model: torch.nn.Module, directory: Path) -> None:
    """The trained tensors of a checkpoint back into the live model (the frozen ones never left it)."""
    saved = saved_trainable(model, directory)
    with torch.no_grad():
        for name, parameter in trained_parameters(model).items():
            parameter.copy_(saved[name].to(parameter.device, parameter.dtype))
