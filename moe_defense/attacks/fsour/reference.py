"""`reference`: the released algorithm, step for step.

Visit (prompt token, MoE layer) pairs in order, try N random top-k subsets one forward pass each, keep the best
if it strictly raises the teacher-forced log-probability of the target, stop once P(target) >= success_prob or
the budget is spent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from moe_defense.attacks.fsour.search import RouteSearch


def reference_search(search: RouteSearch) -> None:
    config = search.config
    for token in range(search.span):
        for layer in search.layers:
            if search.success or not search.budget_left(config.budget):
                return
            candidates = search.with_sets(layer, token, search.uniform_sets(config.candidates))
            scores = torch.cat(
                [search.score_full({l: r[i : i + 1] for l, r in candidates.items()}) for i in range(config.candidates)]
            )
            search.score_full(search.route)  # the released code re-scores the incumbent at every pair
            search.accept(candidates, scores)
