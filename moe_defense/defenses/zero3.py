"""DeepSpeed ZeRO-3 for router-only training: what its config must say, and routers read outside forward.

ZeRO-3 partitions every parameter: outside the forward of its module a rank holds only its shard and
`p.data` is empty. Measured here (DeepSpeed 0.19.8, CPU), three things break router-only training:
- DeepSpeed's default ZeRO-3 leaf modules (the sparse MoE blocks of Mixtral, Qwen2-MoE, Qwen3-MoE)
  reduce their gradients from a module backward hook. It fires once per forward of the block, so an
  objective with several forwards per step (ours) puts each router twice into the reduce bucket
  (an `AssertionError` on duplicate `ds_id`s), and where the block's input needs no gradient it fires
  before the router's gradient exists and fills it with `zeros_like` of the *partitioned* parameter,
  a size-0 tensor ("size of tensor a (0) must match the size of tensor b (64)" in `AccumulateGrad`).
  So `leaf_module.classes` must be `[]`: routers then reduce from their own gradient hooks.
- The KL reference swaps the original router tensors into `p.data`: on a partitioned router the next
  fetch overwrites the swap and the release empties it. Routers must be persistent (the
  `stage3_param_persistence_threshold` above their size: replicated, never released) and are
  gathered (`GatheredParameters`) around the swap.
- Everything after training (digests, tensor diff, saving, the suite) reads whole tensors: the trained
  model is gathered back into plain tensors on every rank once training ends.
- A route refresh inside training makes a data-dependent number of forwards on each rank (its own prompts,
  early stops), and under ZeRO-3 every forward is collectives: each module's parameter all-gather, and at
  the start of each forward of the model the coordinator's `reset_step`, which checks its trace against
  the other ranks. The ranks then wait in mismatched collectives (measured: rank 0 in the route pool's
  `all_gather_object`, rank 1 in `reset_step`'s broadcast, forever). So the refresh runs in
  `local_forwards`: the model gathered once, ZeRO-3's module hooks suspended.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import TrainerCallback

from moe_defense.errors import ConfigError


def check_zero3_config(path: Path, scopes: Iterable[str] = ()) -> None:
    """Raise ValueError (naming the field) where a ZeRO-3 config would fail router-only training, or
    where a training scope in `scopes` is not `routers` (the only one run under ZeRO-3 here); a config
    of another stage passes. Called by recipe validation, before any model loads."""
    settings = json.loads(path.read_text())
    zero = settings.get("zero_optimization", {})
    if int(zero.get("stage", 0)) != 3:
        return
    other = sorted(set(scopes) - {"routers"})
    if other:
        raise ValueError(
            f"deepspeed config {str(path)!r} is ZeRO-3, which supports trainable: routers only (got {other}); "
            "use ds/zero2.json"
        )
    classes = zero.get("leaf_module", {}).get("classes")
    if classes != []:
        raise ValueError(
            f"deepspeed config {str(path)!r}: ZeRO-3 router-only training needs zero_optimization.leaf_module."
            f"classes: [] (got {classes!r}; DeepSpeed's default MoE leaf modules break a step with several "
            "forwards, see moe_defense/defenses/zero3.py)"
        )
    threshold = zero.get("stage3_param_persistence_threshold")
    if not isinstance(threshold, int | float) or threshold <= 0:
        raise ValueError(
            f"deepspeed config {str(path)!r}: ZeRO-3 router-only training needs zero_optimization."
            f"stage3_param_persistence_threshold above the router size (got {threshold!r}): routers stay replicated"
        )


def partitioned(parameters: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters ZeRO-3 manages (DeepSpeed gives each a `ds_id`)."""
    return [p for p in parameters if hasattr(p, "ds_id")]


@contextmanager
def gathered(parameters: Iterable[nn.Parameter]) -> Iterator[None]:
    """Whole tensors in `p.data` for the block (read-only: changes are not written back); a no-op
    for parameters ZeRO-3 does not manage."""
    managed = partitioned(parameters)
    if not managed:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(managed, modifier_rank=None):
        yield


@contextmanager
def suspended(handles: Sequence[RemovableHandle]) -> Iterator[None]:
    """Hooks out of their modules for the block, then back in the same places of their dicts' order."""
    taken = []  # (dict, its key order, the entries taken out)
    for handle in handles:
        for ref in (handle.hooks_dict_ref, *handle.extra_dict_ref):
            hooks = ref()
            if hooks is not None and handle.id in hooks:
                taken.append((hooks, list(hooks), {handle.id: hooks.pop(handle.id)}))
    try:
        yield
    finally:
        for hooks, order, entries in reversed(taken):
            entries.update(hooks)  # hooks added meanwhile and not removed go after the restored ones
            hooks.clear()
            hooks.update({key: entries.pop(key) for key in order if key in entries})
            hooks.update(entries)


@contextmanager
def local_forwards(engine, model: nn.Module) -> Iterator[None]:
    """A block of forwards (and `torch.autograd.grad`) that each rank runs a different number of times, such as
    a route refresh, without ZeRO-3's collectives: the partitioned parameters are gathered once (one collective,
    the same on every rank, whatever the block then does), ZeRO-3's module hooks are suspended so no forward
    fetches, releases or checks its trace against the other ranks, and on exit the parameters are partitioned
    again (locally) and the hooks put back; the coordinator's trace is as the last training step left it.

    Every rank holds the whole model for the block, as it does before training (the model loads whole on each
    rank and the initial route search runs on it) and after it (`unpartition`). A no-op without a ZeRO-3 engine.
    The block must not change parameters (gathered read-only) nor call backward on them."""
    offload = getattr(getattr(engine, "optimizer", None), "parameter_offload", None)
    if offload is None:
        yield
        return
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    away = [p for p in partitioned(model.parameters()) if p.ds_status != ZeroParamStatus.AVAILABLE]
    hooks = [*offload.forward_hooks, *offload.backward_hooks, offload.fwd_pre_hook]
    with deepspeed.zero.GatheredParameters(away, modifier_rank=None), suspended(hooks):
        missing = [p.ds_id for p in partitioned(model.parameters()) if p.ds_status != ZeroParamStatus.AVAILABLE]
        if missing:
            raise RuntimeError(f"ZeRO-3 parameters {missing[:8]} not gathered for local forwards")
        yield


class PersistentRouters(TrainerCallback):
    """Fails the run before step 1 where ZeRO-3 would release a router (the persistence threshold is
    below its size): the KL reference swap would silently read the wrong tensors."""

    def __init__(self, routers: dict[str, nn.Parameter]) -> None:
        self.routers = routers

    def on_train_begin(self, args, state, control, **kwargs):  # after the engine partitioned the model
        released = {name: p.ds_numel for name, p in self.routers.items() if hasattr(p, "ds_id") and not p.ds_persist}
        if released:
            name, numel = max(released.items(), key=lambda item: item[1])
            raise ConfigError(
                f"ZeRO-3 partitions router {name} ({numel} elements): set zero_optimization."
                f"stage3_param_persistence_threshold to at least {numel} so routers stay replicated"
            )


def unpartition(engine, model: nn.Module) -> None:
    """After training: remove the engine's hooks and parameter getters and give every rank the whole
    tensors again, one parameter at a time, so the trained model is a plain module for what follows."""
    engine.destroy()  # removes ZeRO's per-module hooks, not the engine's own forward hooks on the model
    for hook in (engine.module_forward_pre_hook, engine.module_forward_post_hook):
        if hook is not None:
            hook.remove()
    for module in model.modules():  # ZeRO-3's `_parameters` dict gathers on access in forward
        module._parameters = dict(dict.items(module._parameters))
    for parameter in partitioned(model.parameters()):
        with gathered([parameter]):
            whole = parameter.data.clone()
        parameter.data = whole
        del parameter.ds_id  # no longer managed: `gathered` leaves it alone
