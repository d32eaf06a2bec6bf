"""F-SOUR: token-layer-wise stochastic search for an unsafe route (forced top-k sets per token x layer).

Every mode raises the teacher-forced log-probability of the target ("Sure, here is ...") by forcing top-k expert
sets at (token, MoE layer) pairs, stops once P(target) >= success_prob, and restarts with a new seed when the
judge says the route failed. The modes:

- `reference` (reference.py): the released algorithm step for step, one forward pass per candidate;
- `fast` (fast.py): the same objective and budget in far fewer batched, KV-cached model calls;
- `gradient` (gradient.py, linear.py): a tenth of the compute, by predicting every re-route from one gradient.

The layout: `config.py` (`FsourConfig`), `scorer.py` (`RouteScorer`: batched candidate scoring, the current
route's prefix KV cache, gradients of the objective, `SearchCost` counting), `search.py` (`RouteSearch`: one
search's route, objective and moves), `budget.py` (a mode under a pair budget: greedy, prune or best),
`attack.py` (the registered `fsour` attack: restarts, judging, summaries).
"""

from moe_defense.attacks.fsour.attack import Fsour
from moe_defense.attacks.fsour.config import FsourConfig, UncappedRoutes
from moe_defense.attacks.fsour.search import RouteSearch

__all__ = ["Fsour", "FsourConfig", "RouteSearch", "UncappedRoutes"]
