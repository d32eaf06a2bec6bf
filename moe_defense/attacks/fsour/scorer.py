"""The objective of candidate routes for one prompt: batched scoring, the current route's KV cache, the cost.

The objective is the teacher-forced log-probability of the target ("Sure, here is ...") after the prompt. A
route change at token t cannot affect positions < t, so candidates that differ from the current route only at
positions >= t are scored in one batched forward over the positions from t on, starting from the current
route's KV cache cropped before t; that cache comes for free from the batch that scored the accepted candidate
(`adopt`). Every pass is counted in `cost` (`SearchCost`).
"""

from __future__ import annotations

import copy
import functools

import torch
from transformers import Cache, DynamicCache

from moe_defense.attacks.base import SearchCost
from moe_defense.attacks.objective import TargetProblem
from moe_defense.models.loading import LoadedModel
from moe_defense.routing import ForcedRoute, Intervention, LayerRoute, LogitBias, intervene, record_routing

Route = dict[int, torch.Tensor]  # MoE layer -> (rows, span, top_k) forced experts, -1 where the router chooses


class RouteScorer:
    """Scores routes (batched, chunked to `max_rows`) and takes gradients of the objective for one prompt."""

    def __init__(
        self, loaded: LoadedModel, problem: TargetProblem, *, force_decode: bool, forced_weights: str, max_rows: int
    ) -> None:
        self.loaded = loaded
        self.problem = problem
        self.scope = "all" if force_decode else "prefill"
        self.forced_weights = forced_weights
        self.max_rows = max_rows
        self.cost = SearchCost()
        self.prompt_lengths = torch.tensor([problem.prompt_length])
        self.ids = problem.input_ids.to(loaded.device)[None]
        # KV cache of the whole sequence under the current route, and its per-position target log-probs:
        # cropped to t it is the prefix every candidate changing positions >= t starts from
        self.current: tuple[Cache, torch.Tensor] | None = None
        self._last_scored: tuple[Route, Cache, torch.Tensor] | None = None

    def interventions(self, route: Route, rows: int) -> list[ForcedRoute]:
        """The forced route of `rows` candidates (none when nothing is forced)."""
        forced = {l: r for l, r in route.items() if (r >= 0).any()}
        if not forced:
            return []
        return [
            ForcedRoute(
                forced,
                scope=self.scope,
                prompt_lengths=self.prompt_lengths.expand(rows),
                weights=self.forced_weights,
            )
        ]

    def position_log_probs(self, logits: torch.Tensor, first_position: int) -> torch.Tensor:
        """(rows, sequence length): at position p, the log-prob of target token p + 1 that `logits`
        (positions from `first_position`) predict; 0 where p predicts no target token."""
        rows, length = logits.shape[0], self.ids.shape[1]
        per_position = torch.zeros(rows, length, device=logits.device)
        low = max(self.problem.prompt_length - 1, first_position)
        high = min(first_position + logits.shape[1], length - 1)
        if low < high:
            predicted = logits[:, low - first_position : high - first_position].float().log_softmax(-1)
            targets = self.ids[0, low + 1 : high + 1].expand(rows, -1)
            per_position[:, low:high] = predicted.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return per_position

    def target_log_probs(self, logits: torch.Tensor, first_position: int) -> torch.Tensor:
        """Sum of the target log-probs that `logits` (rows = positions from `first_position`) predict."""
        return self.position_log_probs(logits, first_position).sum(-1)

    @torch.no_grad()
    def score_full(self, routes: Route) -> torch.Tensor:
        """Objective of each row of `routes`, each scored over the whole sequence."""
        rows = next(iter(routes.values())).shape[0]
        if rows > self.max_rows:
            return torch.cat([self.score_full(chunk) for chunk in self._row_chunks(routes)])
        with intervene(self.loaded, *self.interventions(routes, rows)):
            logits = self.loaded.model(input_ids=self.ids.expand(rows, -1)).logits
        self.cost.forward(rows, self.ids.shape[1])
        return self.target_log_probs(logits, 0)

    @torch.no_grad()
    def score_from(self, token: int, candidates: Route, current: Route) -> torch.Tensor:
        """Objective of N candidate routes that differ from the `current` one only at positions >= token."""
        rows = next(iter(candidates.values())).shape[0]
        if token == 0:
            return self.score_full(candidates)
        if rows > self.max_rows:
            return torch.cat([self.score_from(token, chunk, current) for chunk in self._row_chunks(candidates)])
        cache, fixed = self._current_state(current)
        cache = copy.deepcopy(cache)
        cache.crop(token - self.ids.shape[1])
        cache.batch_repeat_interleave(rows)
        with intervene(self.loaded, *self.interventions(candidates, rows)):
            logits = self.loaded.model(input_ids=self.ids[:, token:].expand(rows, -1), cache=cache).logits
        self.cost.forward(rows, self.ids.shape[1] - token)  # the cached prefix is not recomputed
        per_position = torch.cat(
            [fixed[:, :token].expand(rows, -1), self.position_log_probs(logits, token)[:, token:]], dim=1
        )
        self._last_scored = (candidates, cache, per_position)
        return per_position.sum(-1)

    def forget(self) -> None:
        """The current route changed: its cache is unknown until the next `score_from` (or `adopt`)."""
        self.current = None

    def adopt(self, candidates: Route, best: int) -> None:
        """Row `best` of `candidates` became the current route: when `candidates` was the last batch scored from a
        cache, that batch already holds the new route's whole cache."""
        if self._last_scored is not None and self._last_scored[0] is candidates:
            _, cache, per_position = self._last_scored
            cache.batch_select_indices(torch.tensor([best]))
            self.current = (cache, per_position[best : best + 1])
        self._last_scored = None

    def _current_state(self, route: Route) -> tuple[Cache, torch.Tensor]:
        """The current route's full-sequence cache and per-position log-probs (one forward when unknown)."""
        if self.current is None:
            cache = DynamicCache(config=self.loaded.model.config)
            cache.activate_past_recording()  # sliding-window layers keep what `crop` needs to roll back
            with torch.no_grad(), intervene(self.loaded, *self.interventions(route, 1)):
                output = self.loaded.model(input_ids=self.ids, cache=cache, use_cache=True)
            self.cost.forward(1, self.ids.shape[1])
            self.current = (output.cache, self.position_log_probs(output.logits, 0))
        return self.current

    def _row_chunks(self, routes: Route) -> list[Route]:
        rows, size = next(iter(routes.values())).shape[0], self.max_rows
        return [{l: r[start : start + size] for l, r in routes.items()} for start in range(0, rows, size)]

    def logit_gradient(
        self,
        interventions: list[Intervention],
        layers: list[int],
        span: int,
        *,
        keep_logits: bool,
        weight: float = 1.0,
    ) -> tuple[torch.Tensor, dict[int, LayerRoute]]:
        """(L, span, E) d objective / d router logits of `layers` under `interventions` (one forward + backward,
        counted at `weight` sequence equivalents a pass), and the routing trace of that forward.

        The gradient is taken w.r.t. zero logit biases only (torch.autograd.grad): nothing accumulates in the
        weights' .grad (a trainer's gradients, and DeepSpeed's reduction hooks, stay untouched when hardening
        calls the search)."""
        experts = self.loaded.adapter.num_experts
        biases = {l: torch.zeros(1, span, experts, requires_grad=True) for l in layers}
        with (
            torch.enable_grad(),
            intervene(
                self.loaded, *interventions, LogitBias(biases, scope=self.scope, prompt_lengths=self.prompt_lengths)
            ),
            record_routing(self.loaded, layers=layers, keep_logits=keep_logits) as recorder,
        ):
            logits = self.loaded.model(input_ids=self.ids).logits
            grads = torch.autograd.grad(self.target_log_probs(logits, 0).sum(), [biases[l] for l in layers])
        self.cost.forward(1, self.ids.shape[1], weight=weight)
        self.cost.backward(1, self.ids.shape[1], weight=weight)
        return torch.stack([g[0] for g in grads]), recorder.trace()

    @functools.cached_property
    def dense_cost(self) -> float:
        """Sequence equivalents of one pass that runs every expert: the weights a token multiplies by with all
        experts over those with its top-k (FLOP-proportional, attention's length term aside). A walk over every
        parameter, so once per search rather than once per gradient."""
        model, adapter = self.loaded.model, self.loaded.adapter
        experts, k = adapter.num_experts, adapter.top_k
        routed = sum(p.numel() for m in adapter.experts(model).values() for p in m.parameters())
        embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        total = sum(p.numel() for p in model.parameters()) - (0 if head is embedding else embedding.numel())
        return total / (total - routed * (experts - k) / experts)
