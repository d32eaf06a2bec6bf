"""GCG and route-GCG: optimise an adversarial suffix of prompt tokens (the attacker controls only the prompt).

GCG (Zou et al. 2023, as in nanoGCG): a suffix of m tokens sits at the end of the user turn. Each step
takes the gradient of the target's NLL ("Sure, here is ...") w.r.t. a one-hot encoding of the suffix,
keeps the top-k most promising tokens per position, and scores B random single-token swaps in one
batched forward that starts from the KV cache of the fixed text before the suffix; the best swap is
kept when it lowers the loss. The search stops when the target is the greedy continuation, when the
loss drops below `stop_loss`, after `steps`, or when `query_budget` candidate evaluations are spent.
Candidates are drawn from tokens that survive a decode/encode round trip (no special tokens), and a
candidate is scored only if its decoded prompt re-tokenises to exactly the ids searched.

route-GCG adds `route_weight` x the router cross-entropy toward an unsafe route F-SOUR found for the
prompt, at prompt positions, with no route forcing at attack time: the prompt must make the router
itself take the route. The route covers the original chat-formatted prompt. The suffix is appended to
the user text, so route positions before it are unchanged and the template tokens after the user text
(end of turn, assistant header) move by the suffix length (`SuffixProblem.position`). Positions before
the suffix are causally upstream of it: no suffix changes their routing, so only the route pairs after
the suffix can be induced (`reachable_pairs` in the results), and the cross-entropy covers those alone (the
others only add a constant).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

import torch
from pydantic import Field, model_validator
from transformers import DynamicCache

from moe_defense.attacks.artifacts import RouteArtifact, read_artifacts
from moe_defense.attacks.base import Attack, AttackConfig, AttackContext, AttackResult, SearchCost, register_attack
from moe_defense.attacks.fsour import Fsour, FsourConfig
from moe_defense.attacks.objective import prompt_target
from moe_defense.data import format_chat
from moe_defense.data.prompts import Prompt
from moe_defense.errors import ConfigError, RoutingError
from moe_defense.models.loading import LoadedModel
from moe_defense.routing import LayerRoute, record_routing
from moe_defense.runner.generation import encode_prompts

_PLACEHOLDER = "\x00gcg-suffix\x00"  # marks where the suffix goes in the rendered chat template (never tokenised)


class GcgConfig(AttackConfig):
    """Adversarial-suffix search (GCG); the query budget counts candidate prompts scored."""

    suffix_length: int = Field(20, ge=1, description="adversarial suffix tokens (m), appended to the user text")
    search_width: int = Field(64, ge=1, description="candidate single-token swaps scored per step (B)")
    topk: int = Field(64, ge=1, description="most promising tokens per suffix position, by the gradient")
    steps: int = Field(250, ge=1, description="most optimisation steps")
    query_budget: int | None = Field(
        500, ge=1, description="most candidate evaluations per prompt (the initial suffix counts one); None = no cap"
    )
    early_stop: bool = Field(True, description="stop once the target is the model's greedy continuation")
    stop_loss: float | None = Field(None, ge=0, description="also stop once the target NLL (mean per token) is below")
    batched: bool = Field(True, description="score a step's candidates in one forward (False: one per forward)")
    max_rows: int = Field(256, ge=1, description="most candidates in one forward (memory cap)")
    seed: int = Field(0, description="seed of the initial suffix and the candidate draws")


@dataclass(frozen=True)
class SuffixProblem:
    """A prompt split around the suffix slot: ids before it, the template ids after it, and the target."""

    text: str  # the original request
    before: torch.Tensor  # (P0,) chat template + request (+ separator) up to the suffix
    after: torch.Tensor  # (P1,) the template after the user text
    target: torch.Tensor  # (L,)
    shared: int  # leading tokens the original prompt shares with `before`; the original's rest equals `after`
    template: tuple[str, str]  # the rendered chat text before and after the suffix

    @classmethod
    def build(cls, loaded: LoadedModel, text: str, target: str, system_prompt: str | None = None) -> SuffixProblem:
        tokenizer = loaded.tokenizer
        rendered = format_chat(tokenizer, f"{text} {_PLACEHOLDER}", system_prompt, loaded.chat.template_kwargs)
        if rendered.count(_PLACEHOLDER) != 1:
            raise RoutingError("the chat template does not keep the user text verbatim; a suffix cannot be placed.")
        before_text, after_text = rendered.split(_PLACEHOLDER)
        probe = "x y"
        if format_chat(tokenizer, f"{text} {probe}", system_prompt, loaded.chat.template_kwargs) != (
            before_text + probe + after_text
        ):
            raise RoutingError("the chat template does not keep the user text verbatim; a suffix cannot be placed.")

        def ids(piece: str) -> torch.Tensor:
            return torch.tensor(tokenizer(piece, add_special_tokens=False)["input_ids"], dtype=torch.long)

        before, after = ids(before_text), ids(after_text)
        original = torch.tensor(encode_prompts(loaded, [text], system_prompt)[0], dtype=torch.long)
        shared = 0
        while shared < min(len(before), len(original)) and before[shared] == original[shared]:
            shared += 1
        if not torch.equal(original[shared:], after):
            raise RoutingError(
                "the prompt does not tokenise as (text before the suffix) + (template after it); "
                "a suffix cannot be placed without shifting the prompt's own tokens."
            )
        spaced = target if target.startswith(" ") else " " + target
        return cls(
            text=text,
            before=before,
            after=after,
            target=ids(spaced),
            shared=shared,
            template=(before_text, after_text),
        )

    def input_ids(self, suffixes: torch.Tensor) -> torch.Tensor:
        """(R, suffix + after + target): what follows the cached prefix for each candidate suffix."""
        rows = suffixes.shape[0]
        return torch.cat([suffixes, self.after.expand(rows, -1), self.target.expand(rows, -1)], dim=1)

    def prompt_length(self, suffix_length: int) -> int:
        return len(self.before) + suffix_length + len(self.after)

    def position(self, token: int, suffix_length: int) -> int:
        """Where token `token` of the original chat-formatted prompt sits once the suffix is inserted."""
        return token if token < self.shared else token - self.shared + len(self.before) + suffix_length

    def attacked_text(self, tokenizer: Any, suffix: torch.Tensor) -> str:
        return f"{self.text} {tokenizer.decode(suffix.tolist())}"

    def rendered(self, tokenizer: Any, suffix: torch.Tensor) -> str:
        """The chat-formatted attacked prompt (the template was checked to keep the user text verbatim)."""
        return self.template[0] + tokenizer.decode(suffix.tolist()) + self.template[1]


@dataclass(frozen=True)
class RouteTarget:
    """An unsafe route in attacked-prompt coordinates: per layer, positions (P,) and their forced experts (P, k).

    `start` is the suffix's first position: pairs before it are upstream of the suffix (their routing is the
    same for every suffix), so the cross-entropy the search minimises covers the reachable pairs only."""

    pairs: dict[int, tuple[torch.Tensor, torch.Tensor]]
    start: int

    @classmethod
    def from_artifact(cls, artifact: RouteArtifact, problem: SuffixProblem, suffix_length: int) -> RouteTarget:
        original_length = problem.shared + len(problem.after)
        if artifact.prompt_length != original_length:
            raise RoutingError(
                f"route for prompt {artifact.prompt_id!r} covers {artifact.prompt_length} prompt tokens, but the "
                f"prompt has {original_length}: it was found for another prompt text or chat template."
            )
        pairs = {}
        for layer, tokens in sorted(artifact.forced.items()):
            kept = sorted(t for t in tokens if t < original_length)  # prompt positions only
            if kept:
                positions = torch.tensor([problem.position(t, suffix_length) for t in kept])
                pairs[layer] = (positions, torch.tensor([sorted(tokens[t]) for t in kept]))
        return cls(pairs=pairs, start=len(problem.before))

    @property
    def num_pairs(self) -> int:
        return sum(len(positions) for positions, _ in self.pairs.values())

    @property
    def reachable(self) -> int:
        return sum(int((positions >= self.start).sum()) for positions, _ in self.pairs.values())

    def cross_entropy(self, logits: dict[int, torch.Tensor]) -> torch.Tensor:
        """(R,) mean over the reachable pairs and their forced experts of -log softmax(router logits)[expert]."""
        total = 0.0
        for layer, (positions, experts) in self.pairs.items():
            keep = positions >= self.start
            log_probs = logits[layer][:, positions[keep]].float().log_softmax(-1)
            forced = experts[keep].to(log_probs.device).expand(log_probs.shape[0], -1, -1)
            total = total - log_probs.gather(-1, forced).mean(-1).sum(-1)
        return torch.as_tensor(total) / max(self.reachable, 1)

    def induced_fraction(self, indices: dict[int, torch.Tensor], reachable_only: bool = False) -> torch.Tensor:
        """(R,) share of the route's pairs (or of its reachable pairs) where the experts the router itself chose
        equal the forced set."""
        hits = 0
        for layer, (positions, experts) in self.pairs.items():
            keep = positions >= (self.start if reachable_only else 0)
            chosen = indices[layer][:, positions[keep]].sort(-1).values
            hits = hits + (chosen == experts[keep].to(chosen.device)).all(-1).sum(-1)
        return torch.as_tensor(hits, dtype=torch.float) / max(self.reachable if reachable_only else self.num_pairs, 1)


def allowed_tokens(tokenizer: Any) -> torch.Tensor:
    """Token ids a suffix may use: not special, and decoding then encoding gives the token back."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = [tokenizer.decode([i]) for i in ids]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return torch.tensor(
        [i for i, text, enc in zip(ids, texts, encoded, strict=True) if text.strip() and enc == [i]], dtype=torch.long
    )


@dataclass
class Scores:
    """One scoring of R candidate suffixes."""

    loss: torch.Tensor  # (R,) the objective: target NLL (+ route_weight x router CE)
    target_nll: torch.Tensor  # (R,) mean per target token
    greedy: torch.Tensor  # (R,) bool: the target is the greedy continuation
    induced: torch.Tensor | None  # (R,) route-GCG: share of the route the router took
    induced_reachable: torch.Tensor | None  # (R,) route-GCG: the same over the pairs after the suffix


class SuffixScorer:
    """The GCG objective of candidate suffixes for one prompt, and its gradient w.r.t. a one-hot suffix.

    The text before the suffix runs once: its KV cache (and, for route-GCG, its routing) serves every scoring.
    Every pass is counted in `cost`, every suffix scored in `queries` (what `query_budget` caps); `route` (with
    `route_weight`) adds route-GCG's router cross-entropy.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        problem: SuffixProblem,
        config: GcgConfig,
        route: RouteTarget | None = None,
        route_weight: float = 0.0,
    ) -> None:
        self.loaded, self.problem, self.config = loaded, problem, config
        self.route, self.route_weight = route, route_weight
        self.layers = sorted(route.pairs) if route is not None else []
        self.model = loaded.model
        self.device = loaded.device
        self.queries = 0  # candidate suffixes scored (what query_budget caps)
        self.cost = SearchCost()  # the prefix forward, every scoring forward and every gradient
        self.prefix_cache = DynamicCache(config=self.model.config)  # filled in place by the prefix forward
        with torch.no_grad():
            _, routes = self._forward(input_ids=problem.before.to(self.device)[None], cache=self.prefix_cache)
        self.cost.forward(1, len(problem.before))
        self.prefix_routes = routes or {}  # the prefix's routing: the same for every suffix

    def _objective(self, logits: torch.Tensor, router: dict[int, LayerRoute] | None) -> Scores:
        """`logits`: (R, L + 1, V), the last L + 1 positions; `router`: the recorded routes (route-GCG)."""
        predicted = logits[:, :-1].float()
        target = self.problem.target.to(predicted.device).expand(predicted.shape[0], -1)
        nll = -predicted.log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1).mean(-1)
        greedy = (predicted.argmax(-1) == target).all(-1)
        if self.route is None or router is None:
            return Scores(loss=nll, target_nll=nll, greedy=greedy, induced=None, induced_reachable=None)
        ce = self.route.cross_entropy({l: r.logits for l, r in router.items()})  # type: ignore[misc]
        indices = {l: r.indices for l, r in router.items()}
        return Scores(
            loss=nll + self.route_weight * ce,
            target_nll=nll,
            greedy=greedy,
            induced=self.route.induced_fraction(indices),
            induced_reachable=self.route.induced_fraction(indices, reachable_only=True),
        )

    def _forward(self, detach: bool = True, **inputs: Any) -> tuple[torch.Tensor, dict[int, LayerRoute] | None]:
        """Logits of the last L + 1 positions, and the routes recorded for route-GCG (None for GCG)."""
        keep = len(self.problem.target) + 1
        if not self.layers:
            return self.model(**inputs, logits_to_keep=keep).logits, None
        with record_routing(self.loaded, layers=self.layers, keep_logits=True, detach=detach) as recorder:
            logits = self.model(**inputs, logits_to_keep=keep).logits
        return logits, recorder.trace()

    def _with_prefix(self, router: dict[int, LayerRoute] | None) -> dict[int, LayerRoute] | None:
        """Routes scored from the prefix cache, with the prefix's own routing filled in at its positions."""
        if router is None:
            return None
        size = len(self.problem.before)
        merged = {}
        for layer, route in router.items():
            prefix = self.prefix_routes[layer]
            logits, indices = route.logits.clone(), route.indices.clone()  # type: ignore[union-attr]
            logits[:, :size] = prefix.logits[:, :size]  # type: ignore[index]
            indices[:, :size] = prefix.indices[:, :size]
            merged[layer] = dataclasses.replace(route, logits=logits, indices=indices)
        return merged

    @torch.no_grad()
    def score(self, suffixes: torch.Tensor) -> Scores:
        """The objective of R candidate suffixes: one forward (chunks of `max_rows`) or one per candidate."""
        size = self.config.max_rows if self.config.batched else 1
        parts = []
        for start in range(0, suffixes.shape[0], size):
            chunk = suffixes[start : start + size]
            rows = chunk.shape[0]
            cache = copy.deepcopy(self.prefix_cache)
            cache.batch_repeat_interleave(rows)
            inputs = self.problem.input_ids(chunk)
            logits, router = self._forward(input_ids=inputs.to(self.device), cache=cache)
            parts.append(self._objective(logits, self._with_prefix(router)))
            self.cost.forward(rows, inputs.shape[1])  # the cached prefix is not recomputed
            self.queries += rows
        return Scores(
            **{
                key: None if parts[0].__dict__[key] is None else torch.cat([p.__dict__[key] for p in parts])
                for key in parts[0].__dict__
            }
        )

    def gradient(self, suffix: torch.Tensor) -> torch.Tensor:
        """(m, V) d loss / d one-hot suffix, on the whole sequence (the prefix included, so routes see it)."""
        embedding = self.model.get_input_embeddings()
        weight = embedding.weight
        one_hot = torch.zeros(self.config.suffix_length, weight.shape[0], dtype=weight.dtype, device=weight.device)
        one_hot.scatter_(1, suffix.to(weight.device)[:, None], 1.0)
        one_hot.requires_grad_(True)
        problem = self.problem
        with torch.enable_grad():
            embeds = torch.cat(
                [
                    embedding(problem.before.to(self.device)),
                    one_hot @ weight,
                    embedding(torch.cat([problem.after, problem.target]).to(self.device)),
                ]
            )[None]
            logits, router = self._forward(detach=False, inputs_embeds=embeds)
            loss = self._objective(logits, router).loss.sum()
            # gradient w.r.t. the one-hot only: nothing accumulates in the weights' .grad
            (grad,) = torch.autograd.grad(loss, [one_hot])
        self.cost.forward(1, embeds.shape[1])
        self.cost.backward(1, embeds.shape[1])
        return grad


class SuffixSearch:
    """One GCG search for one prompt: single-token swaps proposed by the gradient, the best scored one kept,
    stopped as the config says; `route` (with `route_weight`) turns it into route-GCG."""

    def __init__(
        self,
        loaded: LoadedModel,
        problem: SuffixProblem,
        config: GcgConfig,
        allowed: torch.Tensor,
        route: RouteTarget | None = None,
        route_weight: float = 0.0,
    ) -> None:
        self.loaded, self.problem, self.config, self.allowed = loaded, problem, config, allowed
        self.generator = torch.Generator().manual_seed(config.seed)
        self.scorer = SuffixScorer(loaded, problem, config, route, route_weight)
        self.steps = 0
        self.stopped = "steps"
        self.suffix = self._initial_suffix()
        scores = self.score(self.suffix[None])
        self.best = self._pick(scores, 0)
        self.initial = self.best
        self.history = [self.best["loss"]]  # best loss after each step

    @property
    def cost(self) -> SearchCost:
        return self.scorer.cost

    @property
    def queries(self) -> int:
        return self.scorer.queries

    def score(self, suffixes: torch.Tensor) -> Scores:
        """The objective of R candidate suffixes (`SuffixScorer.score`)."""
        return self.scorer.score(suffixes)

    def gradient(self) -> torch.Tensor:
        """(m, V) d loss / d one-hot of the current suffix (`SuffixScorer.gradient`)."""
        return self.scorer.gradient(self.suffix)

    def _pick(self, scores: Scores, row: int) -> dict[str, Any]:
        return {
            "loss": float(scores.loss[row]),
            "target_nll": float(scores.target_nll[row]),
            "greedy": bool(scores.greedy[row]),
            "induced": None if scores.induced is None else float(scores.induced[row]),
            "induced_reachable": None if scores.induced_reachable is None else float(scores.induced_reachable[row]),
        }

    def _initial_suffix(self) -> torch.Tensor:
        for _ in range(100):
            draw = torch.randint(len(self.allowed), (self.config.suffix_length,), generator=self.generator)
            suffix = self.allowed[draw]
            if self.stable(suffix[None]).all():
                return suffix
        raise RoutingError("no random suffix of allowed tokens re-tokenises stably with this tokenizer.")

    def stable(self, suffixes: torch.Tensor) -> torch.Tensor:
        """(R,) bool: the decoded prompt re-tokenises to exactly the ids the search scores."""
        tokenizer = self.loaded.tokenizer
        texts = [self.problem.rendered(tokenizer, s) for s in suffixes]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        head = self.problem.before.tolist()
        tail = self.problem.after.tolist()
        return torch.tensor([enc == head + s.tolist() + tail for enc, s in zip(encoded, suffixes, strict=True)])

    def candidates(self, grad: torch.Tensor, width: int) -> torch.Tensor:
        """(<= width, m) distinct single-token swaps from the top-k tokens per position, each stable."""
        allowed_grad = torch.full_like(grad, math.inf)
        allowed_grad[:, self.allowed] = grad[:, self.allowed]
        top = (-allowed_grad).topk(min(self.config.topk, len(self.allowed)), dim=-1).indices.cpu()  # (m, K)
        positions = torch.randint(self.config.suffix_length, (width,), generator=self.generator)
        choices = torch.randint(top.shape[1], (width,), generator=self.generator)
        candidates = self.suffix.expand(width, -1).clone()
        candidates[torch.arange(width), positions] = top[positions, choices]
        distinct = list(dict.fromkeys(map(tuple, candidates[(candidates != self.suffix).any(-1)].tolist())))
        if not distinct:
            return candidates[:0]
        candidates = torch.tensor(distinct, dtype=torch.long)  # in draw order (deterministic)
        return candidates[self.stable(candidates)]

    def _done(self) -> bool:
        if self.config.early_stop and self.best["greedy"]:
            self.stopped = "greedy_target"
        elif self.config.stop_loss is not None and self.best["target_nll"] < self.config.stop_loss:
            self.stopped = "stop_loss"
        elif self.config.query_budget is not None and self.queries >= self.config.query_budget:
            self.stopped = "query_budget"
        else:
            return False
        return True

    def run(self) -> SuffixSearch:
        for _ in range(self.config.steps):
            if self._done():
                return self
            width = self.config.search_width
            if self.config.query_budget is not None:
                width = min(width, self.config.query_budget - self.queries)
            candidates = self.candidates(self.gradient(), width)
            self.steps += 1
            if len(candidates):
                scores = self.score(candidates)
                row = int(scores.loss.argmin())
                if float(scores.loss[row]) < self.best["loss"]:
                    self.best = self._pick(scores, row)
                    self.suffix = candidates[row].clone()
            self.history.append(self.best["loss"])
        self._done()
        return self

    def result(self, prompt_id: str, seconds: float) -> AttackResult:
        extra: dict[str, Any] = {
            "loss": round(self.best["loss"], 4),
            "initial_loss": round(self.initial["loss"], 4),
            "target_nll": round(self.best["target_nll"], 4),
            "target_greedy": self.best["greedy"],
            "queries": self.queries,
            "steps": self.steps,
            "stopped": self.stopped,
            "suffix": self.loaded.tokenizer.decode(self.suffix.tolist()),
            **dataclasses.replace(self.cost, seconds=seconds).as_dict(),
        }
        return AttackResult(
            prompt_id=prompt_id,
            artifact=None,
            prompt_text=self.problem.attacked_text(self.loaded.tokenizer, self.suffix),
            extra=extra,
        )


def _check_context(loaded: LoadedModel, problem: SuffixProblem, suffix_length: int) -> None:
    context = getattr(loaded.model.config, "max_position_embeddings", None)
    needed = problem.prompt_length(suffix_length) + len(problem.target)
    if context is not None and needed > context:
        raise ConfigError(
            f"suffix_length={suffix_length} does not fit: the prompt ({problem.prompt_length(0)} tokens), the suffix "
            f"and the target ({len(problem.target)}) need {needed} positions, the model's context is {context}."
        )


def _allowed(loaded: LoadedModel, context: AttackContext) -> torch.Tensor:
    """The suffix tokens of this model, computed once per suite phase (`SharedCache.suffix_tokens`)."""
    shared = context.shared
    if shared.suffix_tokens is None:
        shared.suffix_tokens = allowed_tokens(loaded.tokenizer)
    return shared.suffix_tokens


@register_attack
class Gcg(Attack[GcgConfig]):
    """Adversarial suffix (GCG), re-optimised on whatever model it runs on; changes the prompt, not routing."""

    name = "gcg"
    config_class = GcgConfig
    per_prompt = True
    budget_field = "query_budget"

    def _problem(self, loaded: LoadedModel, prompt: Prompt, context: AttackContext) -> SuffixProblem:
        problem = SuffixProblem.build(loaded, prompt.text, prompt_target(prompt), context.generation.system_prompt)
        _check_context(loaded, problem, self.config.suffix_length)
        return problem

    def run(self, loaded: LoadedModel, prompts: Sequence[Prompt], context: AttackContext) -> list[AttackResult]:
        results = []
        for prompt in prompts:
            started = time.perf_counter()
            problem = self._problem(loaded, prompt, context)
            search = SuffixSearch(loaded, problem, self.config, _allowed(loaded, context)).run()
            results.append(search.result(prompt.id, time.perf_counter() - started))
        return results

    def summarize(self, results: Sequence[AttackResult]) -> dict[str, Any]:
        """Means of the search's cost figures, and how often the target became the greedy continuation."""
        summary = super().summarize(results)
        if results:
            summary["target_greedy_rate"] = round(mean(bool(r.extra["target_greedy"]) for r in results), 4)
        return summary


class RouteGcgConfig(GcgConfig):
    """GCG whose objective adds router cross-entropy toward an F-SOUR route: `routes` file or `route_search`."""

    route_weight: float = Field(1.0, ge=0, description="lambda: weight of the router cross-entropy term")
    routes: str | None = Field(
        None, description="route artifacts JSONL of an earlier fsour run (artifacts.jsonl), one route per prompt"
    )
    route_search: FsourConfig | None = Field(
        default_factory=lambda: FsourConfig(restarts=0),
        description="search the route with F-SOUR (prompt positions only) on each prompt first; unused with routes",
    )
    force_transfer: bool = Field(False, description="use routes found on another model (routes file only)")

    @model_validator(mode="after")
    def _route_source(self) -> RouteGcgConfig:
        if self.routes is not None:
            if "route_search" in self.model_fields_set and self.route_search is not None:
                raise ValueError("route-gcg takes one route source: set either routes or route_search, not both")
            self.route_search = None
            if not Path(self.routes).is_file():
                raise ValueError(f"routes {self.routes!r} is not a file (an fsour run's artifacts.jsonl)")
        elif self.route_search is None:
            raise ValueError(
                "route-gcg needs a route source: routes (an fsour artifacts.jsonl) or route_search (an fsour config)"
            )
        elif self.route_search.force_decode:
            raise ValueError("route_search.force_decode must be false: route-GCG steers prompt positions only")
        return self


@register_attack
class RouteGcg(Gcg):
    """GCG toward the router taking an unsafe route by itself; reports the share of the route it induced."""

    name = "route-gcg"
    config_class = RouteGcgConfig  # type: ignore[assignment]
    config: RouteGcgConfig  # type: ignore[assignment]

    def _route(self, loaded: LoadedModel, prompt: Prompt, context: AttackContext) -> RouteArtifact:
        config = self.config
        if config.routes is not None:
            files = context.shared.route_files
            if config.routes not in files:
                files[config.routes] = {a.prompt_id: a for a in read_artifacts(Path(config.routes))}
            cached = files[config.routes]
            if prompt.id not in cached:
                raise ConfigError(f"routes {config.routes!r} hold no route for prompt {prompt.id!r}.")
            artifact = cached[prompt.id]
            artifact.check_model(loaded, force=config.force_transfer)
            return artifact
        assert config.route_search is not None  # the validator guarantees one source
        found = Fsour(config.route_search).run(loaded, [prompt], context)[0].artifact
        assert found is not None
        return found

    def run(self, loaded: LoadedModel, prompts: Sequence[Prompt], context: AttackContext) -> list[AttackResult]:
        results = []
        for prompt in prompts:
            started = time.perf_counter()
            problem = self._problem(loaded, prompt, context)
            artifact = self._route(loaded, prompt, context)
            route = RouteTarget.from_artifact(artifact, problem, self.config.suffix_length)
            search = SuffixSearch(
                loaded, problem, self.config, _allowed(loaded, context), route, self.config.route_weight
            ).run()
            result = search.result(prompt.id, time.perf_counter() - started)
            result.extra.update(
                route_pairs=route.num_pairs,
                reachable_pairs=route.reachable,
                induced_fraction=round(search.best["induced"] or 0.0, 4),
                induced_reachable_fraction=round(search.best["induced_reachable"] or 0.0, 4),
                initial_induced_fraction=round(search.initial["induced"] or 0.0, 4),
                initial_induced_reachable_fraction=round(search.initial["induced_reachable"] or 0.0, 4),
            )
            results.append(result)
        return results
