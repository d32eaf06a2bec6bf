"""Expert-selection rules of the supported routers, re-implemented so an intervention can act
*before* top-k: each rule takes (possibly edited) router logits plus a `blocked` mask and returns
`(weights, indices)` exactly as the architecture's own router would, except that a blocked expert
is never chosen. With no blocked experts each rule reproduces its architecture (tested)."""

from __future__ import annotations

import torch

# A large finite stand-in for -inf where scores are summed (group scores): -inf + x stays -inf and
# would erase the difference between a group with one eligible expert and a group with none.
_GROUP_FLOOR = -1.0e9


def softmax_topk(
    logits: torch.Tensor,
    blocked: torch.Tensor | None,
    top_k: int,
    *,
    normalize: bool,
    scale: float = 1.0,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over all experts, then top-k (Mixtral, Qwen-MoE, OLMoE, DeepSeek-V2 greedy)."""
    if blocked is not None:
        logits = logits.masked_fill(blocked, float("-inf"))
    probs = torch.softmax(logits.float(), dim=-1)
    weights, indices = torch.topk(probs, top_k, dim=-1)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    weights = weights * scale
    return weights.to(out_dtype or weights.dtype), indices


def topk_softmax(
    logits: torch.Tensor,
    blocked: torch.Tensor | None,
    top_k: int,
    *,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k on raw logits, then softmax over the k winners (gpt-oss, GraniteMoE)."""
    if blocked is not None:
        logits = logits.masked_fill(blocked, float("-inf"))
    top_values, indices = torch.topk(logits, top_k, dim=-1)
    weights = torch.softmax(top_values.float(), dim=-1)
    return weights.to(out_dtype or top_values.dtype), indices


def _group_limited_choice(
    choice: torch.Tensor, num_groups: int, topk_group: int, top_k: int, group_score: str
) -> torch.Tensor:
    """Restrict `choice` to the best `topk_group` expert groups; -inf marks ineligible experts.

    A token whose eligible experts would drop below `top_k` after the group limit (an intervention
    forced experts from more groups than the model would visit) keeps all its eligible experts:
    a forced or masked route is honoured exactly, group limit or not.
    """
    tokens, experts = choice.shape
    grouped = choice.view(tokens, num_groups, experts // num_groups).nan_to_num(neginf=_GROUP_FLOOR)
    if group_score == "top2-sum":
        scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
    else:
        scores = grouped.max(dim=-1).values
    chosen_groups = torch.topk(scores, k=topk_group, dim=-1, sorted=False).indices
    group_mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, chosen_groups, True)
    expert_mask = group_mask.unsqueeze(-1).expand(-1, -1, experts // num_groups).reshape(tokens, experts)
    limited = choice.masked_fill(~expert_mask, float("-inf"))
    too_few = torch.isfinite(limited).sum(dim=-1) < top_k
    return torch.where(too_few.unsqueeze(-1), choice, limited)


def sigmoid_group_topk(
    logits: torch.Tensor,
    blocked: torch.Tensor | None,
    top_k: int,
    *,
    correction_bias: torch.Tensor,
    num_groups: int,
    topk_group: int,
    normalize: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3: sigmoid scores, choice on score + correction bias within the best groups."""
    scores = logits.float().sigmoid()
    choice = scores + correction_bias
    if blocked is not None:
        # sigmoid(-inf) + bias can still win; the choice score itself must be -inf.
        choice = choice.masked_fill(blocked, float("-inf"))
    choice = _group_limited_choice(choice, num_groups, topk_group, top_k, "top2-sum")
    indices = torch.topk(choice, k=top_k, dim=-1, sorted=False).indices
    weights = scores.gather(1, indices)
    if normalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * scale, indices


def softmax_group_topk(
    logits: torch.Tensor,
    blocked: torch.Tensor | None,
    top_k: int,
    *,
    num_groups: int,
    topk_group: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V2 `group_limited_greedy`: softmax scores, top-k within the best groups by max."""
    if blocked is not None:
        logits = logits.masked_fill(blocked, float("-inf"))
    scores = torch.softmax(logits.float(), dim=-1)
    choice = scores.masked_fill(blocked, float("-inf")) if blocked is not None else scores
    choice = _group_limited_choice(choice, num_groups, topk_group, top_k, "max")
    indices = torch.topk(choice, k=top_k, dim=-1, sorted=False).indices
    return scores.gather(1, indices) * scale, indices
