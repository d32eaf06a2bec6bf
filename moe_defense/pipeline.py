"""`moe-defense harden RECIPE`: measure -> harden routers -> verify adaptively -> summary + report.

Run directory:
    config.yaml                 the resolved recipe + versions
    original/<attack>/          every attack-suite run on the original model (run directories)
    train/                      Trainer checkpoints, route_pool.jsonl, train.json
    hardened_model/             the hardened checkpoint (plain transformers, safetensors)
    router_patch.safetensors    only the router tensors; tensor_diff.json: what changed, by how much
    hardened/<attack>/          the same suite, re-optimised on the hardened model (new seed)
    summary.json, report.md, asr_vs_budget.png
Every stage resumes: searches and generations already on disk are not recomputed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from moe_defense import load_model
from moe_defense.attacks.base import ATTACKS
from moe_defense.attacks.expert_silence import expert_usage
from moe_defense.attacks.fsour import Fsour, UncappedRoutes
from moe_defense.attacks.rosais import rosais
from moe_defense.attacks.suite import ARTIFACTS, run_attack
from moe_defense.data import PromptSet
from moe_defense.defenses.checkpoint import (
    ROUTER_PATCH,
    check_output_location,
    save_hardened,
    save_router_patch,
    tensor_diff,
    tensor_digests,
)
from moe_defense.defenses.examples import IGNORE, TrainingSequence, collate, own_answers, own_refusals
from moe_defense.defenses.objective import response_ce
from moe_defense.defenses.route_disabling import benign_set_counts, fit_route_guard
from moe_defense.defenses.routes import search_routes
from moe_defense.defenses.trainer import train_routers
from moe_defense.judges import Judge
from moe_defense.models import LoadedModel, LoadOptions
from moe_defense.models.loading import load_pretrained
from moe_defense.models.params import trainable_parameters
from moe_defense.recipe import Recipe, resolve_path
from moe_defense.report import write_harden_report
from moe_defense.routing.guard import RouteGuard, guarded
from moe_defense.runner.cli import build_judges, is_demo_set
from moe_defense.runner.evaluate import evaluate, process_info
from moe_defense.runner.rundir import atomic_write, exclusive, provenance

HARDENED_MODEL = "hardened_model"
TRAIN_FACTS = "train.json"
ROUTE_GUARD = "route_guard.json"  # the fitted route-disabling guard (banned expert sets per layer)
ORIGINAL_ROWS = "original_rows.json"  # the original phase's summary rows + routing stats (its completion marker)
ADAPTIVE_SEED_OFFSET = 1000  # the re-attack on the hardened model uses new seeds


def launch_environment(deepspeed: bool) -> None:
    """Entry points call this first: DeepSpeed needs a process-group environment even in one process.

    Under a launcher (`deepspeed`, `accelerate launch`, `torchrun`) RANK is set and nothing changes;
    in-process it describes a world of one. Without a GPU, DeepSpeed is told to use its CPU accelerator.
    """
    if not deepspeed:
        return
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def budget_label(budget: int | None) -> str:
    return "fsour@inf" if budget is None else f"fsour@{budget}"


@torch.no_grad()
def benign_nll(loaded: LoadedModel, sequences: list[TrainingSequence], batch_size: int = 32) -> float:
    """Mean per-token NLL of the original model's benign answers under `loaded` (lower: closer)."""
    total, count = 0.0, 0
    pad = loaded.tokenizer.pad_token_id
    for start in range(0, len(sequences), batch_size):
        batch = {k: v.to(loaded.device) for k, v in collate(sequences[start : start + batch_size], pad).items()}
        logits = loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        tokens = int((batch["labels"][:, 1:] != IGNORE).sum())
        if tokens:
            total += float(response_ce(logits, batch["labels"])) * tokens  # the training loss's mean, re-weighted to a sum
            count += tokens
    return total / max(count, 1)


class Harden:
    """One harden run: the recipe, its prompt sets and judges, and the run directory."""

    def __init__(self, recipe: Recipe, out: Path, resume: bool = False, progress: bool = True, original_dir: Path | None = None) -> None:
        self.recipe = recipe
        self.out = out
        # the original model's suite; an ablation grid shares one per seed between its cells
        self.original_dir = original_dir or out / "original"
        self.resume = resume
        self.progress = progress
        d = recipe.data
        seed = recipe.seed
        # every prompt set and judge is checked before any model loads
        self.sets: dict[str, PromptSet] = {
            "harmful_train": d.harmful_train.load(seed), "harmful_eval": d.harmful_eval.load(seed),
            "benign_eval": d.benign_eval.load(seed), "over_refusal": d.over_refusal.load(seed),
        }
        self.benign_train = [p for ref in d.benign_train for p in ref.load(seed).prompts]
        lower_cased = recipe.model.startswith("organism") or is_demo_set(d.harmful_eval.name)  # the organism writes lower case
        self.judges: list[Judge] = build_judges(recipe.judges, judge_url=recipe.judge_url, judge_model=recipe.judge_model, lower_cased=lower_cased)
        self.rows: dict[str, dict[str, dict[str, Any]]] = {"original": {}, "hardened": {}}
        self.uncapped: dict[str, UncappedRoutes] = {}

    # --- the attack suite --------------------------------------------------------------------
    def _dir(self, phase: str) -> Path:
        return self.original_dir if phase == "original" else self.out / phase

    def _row(self, summary: dict[str, Any], phase: str, label: str) -> dict[str, Any]:
        row = summary["phases"][phase][label]
        self.rows[phase][label] = row
        return row

    def _evaluate(self, loaded: LoadedModel, phase: str, label: str, prompt_set: PromptSet) -> dict[str, Any]:
        summary = evaluate(loaded, prompt_set, self.judges, gen_config=self.recipe.generation, out_dir=self._dir(phase) / label,
                           resume=self.resume, attack_name=label, phase=phase, progress=self.progress)
        return self._row(summary, phase, label)

    def _attack(self, loaded: LoadedModel, phase: str, label: str, attack) -> dict[str, Any]:
        summary = run_attack(loaded, self.sets["harmful_eval"], attack, self.judges, out_dir=self._dir(phase) / label,
                             gen_config=self.recipe.generation, resume=self.resume, label=label, phase=phase, progress=self.progress)
        return self._row(summary, phase, label)

    def fsour(self, loaded: LoadedModel, phase: str, budget: int | None) -> dict[str, Any]:
        seed = self.recipe.seed + (ADAPTIVE_SEED_OFFSET if phase == "hardened" else 0)
        uncapped = self.uncapped.setdefault(phase, {})  # one uncapped search per prompt, pruned to every budget
        attack = Fsour(self.recipe.verify.fsour.model_copy(update={"budget": budget, "seed": seed}), self.recipe.generation, uncapped)
        return self._attack(loaded, phase, budget_label(budget), attack)

    def suite(self, loaded: LoadedModel, phase: str, replay_from: Path | None = None) -> None:
        """Utility, then the recipe's attacks (F-SOUR at every budget; router masks for every n)."""
        verify = self.recipe.verify
        seed = self.recipe.seed
        self._evaluate(loaded, phase, "benign", self.sets["benign_eval"])
        self._evaluate(loaded, phase, "over-refusal", self.sets["over_refusal"])
        for name in verify.attacks:
            if name == "none":
                self._evaluate(loaded, phase, "none", self.sets["harmful_eval"])
            elif name == "fsour":
                for budget in tqdm(verify.budgets, desc=f"{phase}: F-SOUR budgets", unit="budget", disable=not self.progress):
                    self.fsour(loaded, phase, budget)
            elif name in ("router-mask-rosais", "router-mask-random", "random-routes"):
                router_mask = ATTACKS.get("router-mask")
                if name == "random-routes":
                    layers = loaded.adapter.moe_layers()
                    self._attack(loaded, phase, name, router_mask(router_mask.config_class(n=len(layers), layers=layers, seed=seed)))
                    continue
                selection = name.rsplit("-", 1)[1]
                for n in verify.router_mask_n:
                    config = router_mask.config_class(n=n, selection=selection, seed=seed)
                    self._attack(loaded, phase, f"router-mask-{'top' if selection == 'rosais' else 'random'}{n}", router_mask(config))
            elif name == "expert-silence":
                silence = ATTACKS.get("expert-silence")
                benign = self.recipe.data.benign_eval
                config = silence.config_class(benign_set=benign.name, benign_data_file=benign.data_file, benign_limit=benign.limit or 64)
                self._attack(loaded, phase, name, silence(config))
            elif name == "fsour-transfer" and replay_from is not None and (replay_from / ARTIFACTS).is_file():
                replay = ATTACKS.get("route-replay")
                self._attack(loaded, phase, name, replay(replay.config_class(artifacts=str(replay_from / ARTIFACTS), force_transfer=True)))

    def routing_stats(self, loaded: LoadedModel, phase: str) -> dict[str, Any]:
        """RoSais per router and expert usage on harmful vs benign prompts, for the report's plots."""
        path = self._dir(phase) / "routing_stats.json"
        if self.resume and path.is_file():
            return json.loads(path.read_text())
        layers = loaded.adapter.moe_layers()
        harmful = self.sets["harmful_eval"].prompts
        stats = {
            "rosais": {str(k): v for k, v in rosais(loaded, harmful, progress=False).scores.items()},
            "usage": {
                kind: {str(layer): values.tolist() for layer, values in expert_usage(loaded, [p.text for p in prompts], layers).items()}
                for kind, prompts in (("harmful", harmful), ("benign", self.sets["benign_eval"].prompts))
            },
        }
        if process_info().is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(stats, indent=2) + "\n")
        return stats

    def original_phase(self, loaded: LoadedModel) -> dict[str, Any]:
        """The suite on the original model, once: later runs sharing `original_dir` read its rows."""
        marker = self.original_dir / ORIGINAL_ROWS
        single = process_info().world == 1  # ranks of one data-parallel run cooperate instead of locking each other out
        with exclusive(self.original_dir / ".lock") if single else contextlib.nullcontext():  # one run computes, others wait and read
            if marker.is_file() and (self.resume or self.original_dir != self.out / "original"):
                stored = json.loads(marker.read_text())
                self.rows["original"] = stored["rows"]
                return stored["routing"]
            self.suite(loaded, "original")
            routing = self.routing_stats(loaded, "original")
            if process_info().is_main:
                atomic_write(marker, json.dumps({"rows": self.rows["original"], "routing": routing}, default=str) + "\n")
            return routing

    # --- stages ------------------------------------------------------------------------------
    def b80(self) -> tuple[int | None, bool]:
        """Smallest verified budget whose original ASR reaches the threshold; (budget, reached)."""
        for budget in self.recipe.verify.budgets:
            asr = self.rows["original"].get(budget_label(budget), {}).get("asr")
            if asr is not None and asr >= self.recipe.verify.asr_threshold:
                return budget, True
        return None, False

    def headline_label(self, b80: int | None, reached: bool, budget: int | None) -> str:
        """The F-SOUR run the headline (and the transfer replay) uses: B80 when reached, else the largest
        verified budget not above the training budget (the smallest verified one if none is)."""
        if reached:
            return budget_label(b80)
        verified = self.recipe.verify.budgets
        if budget in verified:
            return budget_label(budget)
        capped = sorted(b for b in verified if b is not None)  # not empty: budget is not in `verified`
        below = [b for b in capped if budget is not None and b <= budget]
        return budget_label(below[-1] if below else capped[0])

    def train_budget(self, b80: int | None, reached: bool) -> int | None:
        if self.recipe.train_budget != "b80":
            return self.recipe.train_budget
        if reached:
            return b80
        capped = [b for b in self.recipe.verify.budgets if b is not None]
        return capped[-1] if capped else None

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        recipe = self.recipe
        info = process_info()  # data-parallel under `deepspeed` / `accelerate launch`; rank 0 writes the files
        self.out.mkdir(parents=True, exist_ok=True)
        if info.is_main:
            atomic_write(self.out / "config.yaml", yaml.safe_dump({"recipe": recipe.model_dump(mode="json"), **provenance()}, sort_keys=False))
        loaded = load_model(recipe.model, LoadOptions(seed=recipe.seed, trust_remote_code=recipe.trust_remote_code, device=recipe.device_map or info.device))
        check_output_location(self.out / HARDENED_MODEL, recipe.model)
        original_fingerprint = loaded.fingerprint()

        routing = {"original": self.original_phase(loaded)}
        b80, reached = self.b80()
        budget = self.train_budget(b80, reached)

        generation = recipe.generation
        cap = recipe.defense.max_response_tokens if recipe.defense else 48
        benign_eval_answers = own_answers(loaded, self.sets["benign_eval"].prompts, generation, cap)
        nll_before = benign_nll(loaded, benign_eval_answers)
        if recipe.defense is None:  # the no-defense baseline: the "hardened" phase re-attacks the original model
            training, diff, patch_bytes = {"steps": 0, "seconds": 0.0, "refreshes": 0, "routes_in_pool": 0}, {"router_params_changed": 0, "other_params_changed": 0}, 0
        else:
            loaded, training, diff, patch_bytes = self.harden(loaded, budget, original_fingerprint)

        with contextlib.ExitStack() as defended:
            if recipe.route_disabling is not None:
                defended.enter_context(guarded(loaded, self.route_guard(loaded, budget)))
            self.suite(loaded, "hardened", replay_from=self.original_dir / self.headline_label(b80, reached, budget))
            nll_after = benign_nll(loaded, benign_eval_answers)
            routing["hardened"] = self.routing_stats(loaded, "hardened")

        summary = self.summary(b80, reached, budget, diff, training, patch_bytes, (nll_before, nll_after))
        summary["routing"] = routing
        summary["seconds"] = round(time.perf_counter() - started, 1)
        if info.is_main:
            atomic_write(self.out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
            write_harden_report(self.out, summary)
        info.wait()
        return summary

    def harden(self, loaded: LoadedModel, budget: int | None, original_fingerprint: str) -> tuple[LoadedModel, dict, dict, int]:
        """Train (or, on --resume after training finished, reload) the hardened model and write its files."""
        recipe, info = self.recipe, process_info()
        assert recipe.defense is not None
        generation, cap = recipe.generation, recipe.defense.max_response_tokens
        harmful = own_refusals(loaded, self.sets["harmful_train"].prompts, self.judges[0], generation, cap, recipe.defense.refusal_fallback)
        benign = own_answers(loaded, self.benign_train, generation, cap)
        mask_layers = []
        if recipe.defense.loss.mask_refusal and recipe.defense.mask_routers:
            importance = rosais(loaded, [s.prompt for s in harmful[:32]], progress=False)
            mask_layers = importance.ranking()[: recipe.defense.mask_routers]
        digests = tensor_digests(loaded.model)
        originals = {n: p.detach().cpu().clone() for n, p in trainable_parameters(loaded.model, recipe.defense.trainable).items()}
        defense = recipe.defense.model_copy(update={"route_search": recipe.defense.route_search.model_copy(update={"budget": budget, "seed": recipe.seed})})
        deepspeed = str(resolve_path(recipe.deepspeed)) if recipe.deepspeed else None
        finished = self.out / "train" / TRAIN_FACTS  # written last: its presence means the hardened model is complete
        if self.resume and finished.is_file():
            training = json.loads(finished.read_text())
            loaded = load_pretrained(str(self.out / HARDENED_MODEL), LoadOptions(device=info.device))
        else:
            training = train_routers(loaded, harmful, benign, defense, self.out / "train", mask_layers=mask_layers, deepspeed=deepspeed, resume=self.resume)
            training.update(harmful_sequences=len(harmful), benign_sequences=len(benign), train_budget=budget, mask_layers=mask_layers)
        diff = tensor_diff(loaded.model, digests, originals, set(loaded.adapter.router_tensors(loaded.model)))
        if info.is_main:
            atomic_write(self.out / "tensor_diff.json", json.dumps(diff, indent=2) + "\n")
            if not finished.is_file():
                save_hardened(loaded, self.out / HARDENED_MODEL)
                save_router_patch(loaded, self.out / ROUTER_PATCH, original_fingerprint)
                atomic_write(finished, json.dumps(training, indent=2) + "\n")
        info.wait()
        loaded.spec = str(self.out / HARDENED_MODEL)  # the hardened phase's runs name the checkpoint they test
        return loaded, training, diff, (self.out / ROUTER_PATCH).stat().st_size

    def route_guard(self, loaded: LoadedModel, budget: int | None) -> RouteGuard:
        """Fit route disabling on unsafe routes of TRAINING prompts (searched on the model as it is now)."""
        config = self.recipe.route_disabling
        assert config is not None
        search = self.recipe.verify.fsour.model_copy(update={"budget": budget, "restarts": 0, "judge": None, "seed": self.recipe.seed})
        artifacts = search_routes(loaded, self.sets["harmful_train"].prompts[: config.fit_prompts], search)
        guard, facts = fit_route_guard(artifacts, benign_set_counts(loaded, self.benign_train[:64]), config)
        if process_info().is_main:
            atomic_write(self.out / ROUTE_GUARD, json.dumps(facts, indent=2) + "\n")
        return guard

    def summary(self, b80: int | None, reached: bool, budget: int | None, diff: dict, training: dict, patch_bytes: int, nll: tuple[float, float]) -> dict[str, Any]:
        before, after = self.rows["original"], self.rows["hardened"]
        key = self.headline_label(b80, reached, budget)
        has_curve = "fsour" in self.recipe.verify.attacks
        utility = {
            phase: {
                "benign_compliance": rows["benign"].get("benign_compliance"),
                "over_refusal": rows["over-refusal"].get("over_refusal"),
                "benign_nll": round(value, 4),
            }
            for phase, rows, value in (("original", before, nll[0]), ("hardened", after, nll[1]))
        }
        curve = {phase: {budget_label(b): rows[budget_label(b)]["asr"] for b in self.recipe.verify.budgets} for phase, rows in self.rows.items()} if has_curve else {}
        return {
            "model": self.recipe.model,
            "judge": self.recipe.judges[0],
            "trainable": self.recipe.defense.trainable if self.recipe.defense else "none",
            "route_disabling": self.recipe.route_disabling is not None,
            "budget_b80": b80 if reached else None,
            "b80_reached": reached,
            "b80_note": None if reached else f"no verified budget reached ASR {self.recipe.verify.asr_threshold} on the original model; trained at budget {budget}; headline at {key}",
            "train_budget": budget,
            "asr_at_b80": {"original": before[key]["asr"], "hardened": after[key]["asr"], "attack": key} if has_curve else None,
            "asr_vs_budget": curve,
            "utility": utility,
            "router_params_changed": diff["router_params_changed"],
            "other_params_changed": diff["other_params_changed"],
            "router_patch_bytes": patch_bytes,
            "training": {k: v for k, v in training.items() if k != "log"},
            "phases": self.rows,
        }
