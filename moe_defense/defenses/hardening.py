"""`router-hardening`: router-only adversarial fine-tuning as a defense stage (train, checkpoint, resume).

Files in the run directory:
    train/                      Trainer checkpoints, route_pool.jsonl, train.json (written last: training finished),
                                expert_lora/ (trainable routers+expert-lora: the expert adapter, PEFT format)
    hardened_model/             the hardened checkpoint (plain transformers, safetensors)
    router_patch.safetensors    only the router tensors, with the base model's fingerprint
    router_adapter/             the same change as a PEFT adapter (router-only runs): PeftModel.from_pretrained
    tensor_diff.json            which tensors changed, by how much (proves router-only)
A resumed run whose training finished reloads `hardened_model/` with the original load options.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from moe_defense.attacks.rosais import rosais
from moe_defense.defenses.base import Defended, Defense, DefenseContext, register_defense
from moe_defense.defenses.checkpoint import directory_bytes, save_hardened, tensor_diff, tensor_digests
from moe_defense.defenses.deployment_changes import deployment_changes
from moe_defense.defenses.examples import own_answers, own_refusals
from moe_defense.defenses.lora import EXPERT_LORA
from moe_defense.defenses.patch import ROUTER_ADAPTER, ROUTER_PATCH, export_peft_adapter, save_router_patch
from moe_defense.defenses.trainer import HardeningConfig, train_routers
from moe_defense.models.loading import LoadedModel, load_pretrained
from moe_defense.models.params import trainable_parameters
from moe_defense.runner.rundir import atomic_write

HARDENED_MODEL = "hardened_model"
TRAIN_FACTS = "train.json"
ROSAIS_PROMPTS = 32  # harmful training prompts RoSais ranks the routers of the mask_refusal term on


@register_defense
class RouterHardening(Defense[HardeningConfig]):
    """Adversarial fine-tuning of the router tensors (or a wider `trainable` scope) against unsafe routes."""

    name = "router-hardening"
    config_class = HardeningConfig
    trains = True

    @property
    def trainable(self) -> str:
        return self.config.trainable

    def apply(self, loaded: LoadedModel, context: DefenseContext) -> Defended:
        info, out = context.info, context.out
        original = _OriginalTensors.of(loaded, self.trainable)
        finished = out / "train" / TRAIN_FACTS  # written last: its presence means the hardened model is complete
        if context.resume and finished.is_file():  # nothing of the training is rebuilt: no answers, no RoSais
            training = json.loads(finished.read_text())
            loaded = load_pretrained(str(out / HARDENED_MODEL), context.load_options)
        else:
            training = self._train(loaded, context)
        diff = tensor_diff(
            loaded.model, original.digests, original.trainable, set(loaded.adapter.router_tensors(loaded.model))
        )
        if info.is_main:
            atomic_write(out / "tensor_diff.json", json.dumps(diff, indent=2) + "\n")
            if not finished.is_file():
                self._save(loaded, original, diff, out)
                atomic_write(finished, json.dumps(training, indent=2) + "\n")
        info.wait()
        loaded = dataclasses.replace(loaded, spec=str(out / HARDENED_MODEL))  # the hardened phase's runs name it
        return Defended(loaded, self._facts(loaded, training, diff, out))

    def _train(self, loaded: LoadedModel, context: DefenseContext) -> dict[str, Any]:
        """The training targets (the model's own refusals and benign answers), the RoSais-ranked routers the
        mask_refusal term masks, the deployment changes' choices, then the training; its facts."""
        config = self.config
        cap = config.max_response_tokens
        harmful = own_refusals(
            loaded, context.harmful_train, context.judge, context.generation, cap, config.refusal_fallback
        )
        benign = own_answers(loaded, context.benign_train, context.generation, cap)
        mask_layers = []
        if config.loss.mask_refusal and config.mask_routers:
            importance = rosais(loaded, [s.prompt for s in harmful[:ROSAIS_PROMPTS]], progress=False)
            mask_layers = importance.ranking()[: config.mask_routers]
        changes = deployment_changes(
            loaded, config.deployment_changes, context.benign_train, context.generation, context.info
        )
        search = config.route_search.model_copy(update={"budget": context.budget, "seed": context.seed})
        training = train_routers(
            loaded,
            harmful,
            benign,
            config.model_copy(update={"route_search": search}),
            context.out / "train",
            info=context.info,
            mask_layers=mask_layers,
            changes=changes,
            deepspeed=context.deepspeed,
            resume=context.resume,
            report_to=context.report_to,
        )
        training.update(
            harmful_sequences=len(harmful),
            benign_sequences=len(benign),
            train_budget=context.budget,
            mask_layers=mask_layers,
            deployment_changes=[change.label for change in changes],
        )
        return training

    def _save(self, loaded: LoadedModel, original: _OriginalTensors, diff: dict[str, Any], out: Path) -> None:
        """The hardened checkpoint, the router patch and, for a router-only change, its PEFT adapter."""
        router_only = diff["other_params_changed"] == 0
        companion = "" if router_only else "expert_lora" if self.trainable == "routers+expert-lora" else "other"
        save_hardened(loaded, out / HARDENED_MODEL)
        save_router_patch(loaded, out / ROUTER_PATCH, original.fingerprint, companion)
        if router_only and diff["router_params_changed"]:
            export_peft_adapter(
                loaded,
                original.routers,
                loaded.adapter.router_tensors(loaded.model),
                out / ROUTER_ADAPTER,
                {"patch": ROUTER_PATCH, "base_fingerprint": original.fingerprint},
            )

    def _facts(self, loaded: LoadedModel, training: dict[str, Any], diff: dict[str, Any], out: Path) -> dict[str, Any]:
        elements = max(1, diff["elements"])
        if self.trainable == "routers+expert-lora":  # the shipped patch holds LoRA factors, not merged experts
            router_numbers = sum(p.numel() for p in loaded.adapter.router_parameters(loaded.model).values())
            patch_numbers = router_numbers + training.get("expert_lora_numbers", 0)
        else:
            patch_numbers = diff["changed_tensor_elements"]  # the patch holds whole changed tensors
        return {
            "training": {k: v for k, v in training.items() if k != "log"},
            "router_params_changed": diff["router_params_changed"],
            "other_params_changed": diff["other_params_changed"],
            "router_patch_bytes": (out / ROUTER_PATCH).stat().st_size,
            "router_adapter_bytes": directory_bytes(out / ROUTER_ADAPTER),  # 0: no PEFT form (non-router changes)
            "changed_fraction": round(diff["changed_elements"] / elements, 6),
            "patch_fraction": round(patch_numbers / elements, 6),  # what the shipped patch carries, per element
            "expert_lora_bytes": directory_bytes(out / "train" / EXPERT_LORA),
        }


@dataclasses.dataclass(frozen=True)
class _OriginalTensors:
    """What the tensor diff and the exported patch compare against: the model before training."""

    fingerprint: str
    digests: dict[str, str]
    trainable: dict[str, torch.Tensor]  # copies of the tensors the scope trains
    routers: dict[str, torch.Tensor]  # every router tensor (the PEFT export's base), trained or a buffer

    @classmethod
    def of(cls, loaded: LoadedModel, trainable: str) -> _OriginalTensors:
        copies = {n: p.detach().cpu().clone() for n, p in trainable_parameters(loaded.model, trainable).items()}
        routers = {
            n: copies[n] if n in copies else t.detach().cpu().clone()
            for n, t in loaded.adapter.router_tensors(loaded.model).items()
        }
        return cls(loaded.fingerprint(), tensor_digests(loaded.model), copies, routers)
