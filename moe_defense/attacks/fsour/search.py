"""One search for one prompt: the current route, its objective, and the moves every mode makes on it."""

from __future__ import annotations

import functools
import math

import torch
from transformers import Cache

from moe_defense.attacks.artifacts import RouteArtifact
from moe_defense.attacks.fsour.budget import run_budgeted
from moe_defense.attacks.fsour.config import FsourConfig, UncappedRoute, UncappedRoutes
from moe_defense.attacks.fsour.fast import FastSearch
from moe_defense.attacks.fsour.gradient import GradientSearch
from moe_defense.attacks.fsour.reference import reference_search
from moe_defense.attacks.fsour.scorer import Route, RouteScorer
from moe_defense.attacks.objective import TargetProblem
from moe_defense.models.loading import LoadedModel


class RouteSearch:
    """One search for one prompt: the current route, its objective, and what it cost.

    The modes (`reference`, `fast`, `gradient`) move the route through `accept` / `replace`; `version` counts the
    route's changes (what the modes' per-route caches are keyed on)."""

    def __init__(
        self,
        loaded: LoadedModel,
        problem: TargetProblem,
        config: FsourConfig,
        seed: int,
        uncapped: UncappedRoutes | None = None,
    ) -> None:
        self.uncapped = uncapped
        self.at_uncapped: tuple[int, UncappedRoute] | None = None  # (version, entry) while the route is that entry
        self.seed = seed
        self.loaded = loaded
        self.problem = problem
        self.config = config
        self.adapter = loaded.adapter
        self.layers = config.layers or loaded.adapter.moe_layers()
        self.span = problem.prompt_length + (len(problem.target_ids) if config.force_decode else 0)
        self.generator = torch.Generator().manual_seed(seed)
        self.route = {l: torch.full((1, self.span, self.adapter.top_k), -1, dtype=torch.long) for l in self.layers}
        self.scorer = RouteScorer(
            loaded,
            problem,
            force_decode=config.force_decode,
            forced_weights=config.forced_weights,
            max_rows=config.max_rows,
        )
        self.cost = self.scorer.cost
        self.ids = self.scorer.ids
        self.version = 0
        self.value = float(self.score_full(self.route)[0])
        self.initial_value = self.value

    # --- the modes -------------------------------------------------------------------------
    def reference(self) -> None:
        reference_search(self)

    def fast(self) -> None:
        run_budgeted(self, self._fast)

    def gradient(self) -> None:
        run_budgeted(self, self._gradient)

    def prune(self, budget: int) -> None:
        """Fast mode's backward elimination down to `budget` forced pairs."""
        self._fast.prune(budget)

    @functools.cached_property
    def _fast(self) -> FastSearch:
        return FastSearch(self)

    @functools.cached_property
    def _gradient(self) -> GradientSearch:
        return GradientSearch(self)

    # --- objective -------------------------------------------------------------------------
    @property
    def scope(self) -> str:
        return self.scorer.scope

    def score_full(self, routes: Route) -> torch.Tensor:
        return self.scorer.score_full(routes)

    def score_from(self, token: int, candidates: Route) -> torch.Tensor:
        """Objective of candidates that differ from the current route only at positions >= token (cached prefix)."""
        return self.scorer.score_from(token, candidates, self.route)

    @property
    def uncapped_entry(self) -> UncappedRoute | None:
        """The sweep's shared uncapped route when the current route is it (not moved since it was read back)."""
        if self.at_uncapped is None or self.at_uncapped[0] != self.version:
            return None
        return self.at_uncapped[1]

    @property
    def success(self) -> bool:
        return self.value >= math.log(self.config.success_prob)

    @property
    def forced_pairs(self) -> int:
        return sum(int((r[0, :, 0] >= 0).sum()) for r in self.route.values())

    def budget_left(self, budget: int | None) -> bool:
        return budget is None or self.forced_pairs < budget

    # --- moves -----------------------------------------------------------------------------
    def uniform_sets(self, count: int) -> torch.Tensor:
        """`count` uniformly random top-k expert sets."""
        scores = torch.rand(count, self.adapter.num_experts, generator=self.generator)
        return scores.topk(self.adapter.top_k, dim=-1).indices

    def with_sets(self, layer: int, token: int, subsets: torch.Tensor) -> Route:
        """One candidate per row of `subsets`: the current route with that set forced at (token, layer)."""
        candidates = {l: r.expand(subsets.shape[0], -1, -1).clone() for l, r in self.route.items()}
        candidates[layer][:, token] = subsets
        return candidates

    def accept(self, candidates: Route, scores: torch.Tensor) -> bool:
        """Move to the best candidate if it strictly raises the objective."""
        best = int(scores.argmax())
        if float(scores[best]) <= self.value:
            return False
        self.value = float(scores[best])
        self.route = {l: r[best : best + 1].clone() for l, r in candidates.items()}
        self._route_changed()
        self.scorer.adopt(candidates, best)
        return True

    def replace(self, route: Route, value: float) -> None:
        """Move to `route`, whose objective is `value`."""
        self.route = route
        self.value = value
        self._route_changed()

    def reset_route(self) -> None:
        self.replace({l: torch.full_like(r, -1) for l, r in self.route.items()}, self.initial_value)

    def _route_changed(self) -> None:
        self.version += 1
        self.scorer.forget()

    # the names the exactness tests use
    _score_full, _score_from, _uniform, _with, _accept = score_full, score_from, uniform_sets, with_sets, accept

    @property
    def _current(self) -> tuple[Cache, torch.Tensor] | None:
        return self.scorer.current

    @property
    def _dense_cost(self) -> float:
        return self.scorer.dense_cost

    def artifact(self, prompt_id: str, fingerprint: str) -> RouteArtifact:
        forced = {}
        for layer, route in self.route.items():
            tokens = {t: route[0, t].tolist() for t in range(self.span) if route[0, t, 0] >= 0}
            if tokens:
                forced[layer] = tokens
        return RouteArtifact(
            model_fingerprint=fingerprint,
            prompt_id=prompt_id,
            attack="fsour",
            prompt_length=self.problem.prompt_length,
            scope=self.scope,
            forced=forced,  # type: ignore[arg-type]
            objective=self.value,
            success=self.success,
            queries=self.cost.sequences,
            budget={"max_pairs": self.config.budget, "layers": self.layers, "force_decode": self.config.force_decode},
            weights=self.config.forced_weights,
        )
