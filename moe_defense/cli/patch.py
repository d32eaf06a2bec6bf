"""`moe-defense patch verify|apply|export`: the router patch of a harden run, checked against its base."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moe_defense.cli.options import DTYPE_CHOICES, add_checkpoint_arguments, load_options


def _load_base(args: argparse.Namespace):
    from moe_defense import load_model

    return load_model(args.base, load_options(args))


def _writing_verb(args: argparse.Namespace):
    """`--out` checked (new, not an input), the patch read, then the base loaded: cheap failures first."""
    from moe_defense.defenses.patch import RouterPatch, check_new_directory

    out = Path(args.out)
    check_new_directory(out, args.base, args.patch)
    return out, RouterPatch.read(args.patch), _load_base(args)


def _verify(args: argparse.Namespace) -> int:
    from moe_defense.defenses.patch import RouterPatch, changed_tensors

    patch = RouterPatch.read(args.patch)  # a missing or foreign file fails before the base loads
    base = _load_base(args)
    patch.check_base(base)
    changes = changed_tensors(base.adapter.router_tensors(base.model), patch.tensors)
    facts = {
        "patch": str(patch.path),
        "base": base.spec,
        "base_fingerprint": patch.base_fingerprint,
        "tensors": len(patch.tensors),
        "tensors_changed": len(changes),
        "max_abs_change": max(changes.values(), default=0.0),
        "bytes": patch.path.stat().st_size,
    }
    print(json.dumps(facts, indent=2) if args.json else "\n".join(f"{k:<18} {v}" for k, v in facts.items()))
    return 0


def _apply(args: argparse.Namespace) -> int:
    from moe_defense.defenses.checkpoint import save_hardened
    from moe_defense.defenses.patch import apply_router_patch

    out, patch, base = _writing_verb(args)
    apply_router_patch(base, patch)
    save_hardened(base, out)
    print(f"wrote the patched checkpoint to {out} (fingerprint {base.fingerprint()}); load it with from_pretrained")
    if patch.companion == "expert_lora":
        print("this run also trained expert LoRA: load its train/expert_lora adapter on this checkpoint to complete it")
    return 0


def _export(args: argparse.Namespace) -> int:
    from moe_defense.defenses.patch import export_peft_adapter

    out, patch, base = _writing_verb(args)
    patch.check_base(base, router_only=True)
    facts = export_peft_adapter(
        base,
        base.adapter.router_tensors(base.model),
        patch.tensors,
        out,
        {"patch": str(patch.path), "base_fingerprint": patch.base_fingerprint},
    )
    print(
        f"wrote a PEFT adapter to {out}: LoRA rank {facts['lora_rank']} on {facts['lora_weights']} router weights, "
        f"{len(facts['whole_modules'])} whole router modules. Load: PeftModel.from_pretrained(base, '{out}')"
        ".merge_and_unload()"
    )
    return 0


def add_patch_parser(verbs: argparse._SubParsersAction) -> None:
    patch = verbs.add_parser("patch", help="verify, apply or export (PEFT) a harden run's router patch")
    actions = patch.add_subparsers(dest="patch_verb", metavar="ACTION", required=True)
    for name, run, summary in (
        ("verify", _verify, "check a patch against a base: fingerprint, tensors, size of the change"),
        ("apply", _apply, "write base + patch as a new plain transformers checkpoint"),
        ("export", _export, "write the patch as a PEFT adapter (PeftModel.from_pretrained + merge_and_unload)"),
    ):
        action = actions.add_parser(name, help=summary)
        action.add_argument("patch", help="router_patch.safetensors, or the harden run directory holding it")
        action.add_argument("--base", required=True, help="the base checkpoint the patch was trained from")
        if name != "verify":
            action.add_argument("--out", required=True, help="a new directory (never the base; nothing overwritten)")
        else:
            action.add_argument("--json", action="store_true", help="print JSON instead of a table")
        action.add_argument(
            "--dtype", default="auto", choices=DTYPE_CHOICES, help="load the base in this dtype (auto: its own)"
        )
        action.add_argument("--seed", type=int, default=0, help="seed of a tiny:<model_type> base")
        add_checkpoint_arguments(action)
        action.set_defaults(run=run)
