"""Routing record + intervention contract, checked on a tiny model of every supported architecture."""

from __future__ import annotations

import pytest
import torch

from moe_defense.errors import RoutingError
from moe_defense.models import set_trainable
from moe_defense.routing import (
    ExpertMask,
    ForcedRoute,
    LogitBias,
    RouterMask,
    intervene,
    record_routing,
)

PROMPTS = ["how do i bake bread ?", "hi", "tell me a story about a cat"]


def _batch(loaded, prompts=PROMPTS):
    return loaded.tokenizer(prompts, return_tensors="pt", padding=True)


def _experts_inputs(loaded):
    """Capture what each experts module receives (indices per token) via pre-hooks; returns (store, handles)."""
    store: dict[int, list[torch.Tensor]] = {}
    handles = []
    for layer in loaded.adapter.routers(loaded.model):
        block = getattr(loaded.adapter.decoder_layers(loaded.model)[layer], loaded.adapter.block_attr)

        def hook(module, args, layer=layer):
            store.setdefault(layer, []).append(args[1].detach().clone())

        handles.append(block.experts.register_forward_pre_hook(hook))
    return store, handles


def _no_hooks(loaded) -> bool:
    routers = loaded.adapter.routers(loaded.model).values()
    return not loaded.model._forward_pre_hooks and all(not r._forward_hooks for r in routers)


@torch.no_grad()
def test_recording_is_transparent_and_matches_expert_inputs(tiny):
    batch = _batch(tiny)
    reference = tiny.model(**batch).logits
    store, handles = _experts_inputs(tiny)
    try:
        with record_routing(tiny) as recorder:
            logits = tiny.model(**batch).logits
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(logits, reference)
    trace = recorder.trace()
    assert sorted(trace) == tiny.adapter.moe_layers()
    mask = batch["attention_mask"].bool()
    for layer, route in trace.items():
        executed = store[layer][0].reshape(mask.shape[0], mask.shape[1], -1)
        # real-token coordinates: left padding removed, row by row
        assert torch.equal(route.valid.sum(1), mask.sum(1))
        for row in range(mask.shape[0]):
            assert torch.equal(route.indices[row][route.valid[row]], executed[row][mask[row]])
        assert route.logits.shape[-1] == tiny.adapter.num_experts
        assert (route.indices[~route.valid] == -1).all()


@torch.no_grad()
def test_adapter_select_reproduces_the_router(tiny):
    torch.manual_seed(1)
    for router in tiny.adapter.routers(tiny.model).values():
        hidden = torch.randn(7, tiny.model.config.hidden_size)
        logits, weights, indices = router(hidden)
        own_weights, own_indices = tiny.adapter.select(router, logits, None, weights.dtype)
        order, own_order = indices.sort(-1), own_indices.sort(-1)
        assert torch.equal(order.values, own_order.values)
        torch.testing.assert_close(weights.gather(-1, order.indices), own_weights.gather(-1, own_order.indices))


@torch.no_grad()
def test_masked_expert_is_never_chosen_in_forward_and_generate(tiny):
    batch = _batch(tiny)
    layer = tiny.adapter.moe_layers()[-1]
    blocked = torch.zeros(1, 64, tiny.adapter.num_experts, dtype=torch.bool)
    blocked[..., 1] = True
    with record_routing(tiny) as unmasked:
        tiny.model(**batch)
    assert (unmasked.trace()[layer].indices == 1).any(), (
        "expert 1 must be popular without the mask for this test to mean anything"
    )
    store, handles = _experts_inputs(tiny)
    try:
        with intervene(tiny, ExpertMask({layer: blocked}, scope="all")), record_routing(tiny) as recorder:
            tiny.model(**batch)
            tiny.model.generate(**batch, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    finally:
        for handle in handles:
            handle.remove()
    padded = batch["attention_mask"].bool().flatten()
    for chunk in store[layer]:  # padding tokens are not routed on purpose; every real token is
        real = chunk[padded] if chunk.shape[0] == padded.numel() else chunk
        assert (real != 1).all()
    route = recorder.trace()[layer]
    assert route.valid.sum() > batch["attention_mask"].sum()  # decoding steps were recorded too
    assert not (route.indices[route.valid] == 1).any()
    assert _no_hooks(tiny)


@torch.no_grad()
def test_forced_route_is_exactly_what_is_chosen_and_can_differ_per_sequence(tiny):
    adapter = tiny.adapter
    batch = tiny.tokenizer([PROMPTS[0]] * 3, return_tensors="pt", padding=True)
    length = batch["input_ids"].shape[1]
    generator = torch.Generator().manual_seed(3)
    routes = {
        layer: torch.rand(3, length, adapter.num_experts, generator=generator).topk(adapter.top_k, dim=-1).indices
        for layer in adapter.moe_layers()
    }
    with intervene(tiny, ForcedRoute(routes)), record_routing(tiny) as recorder:
        batched = tiny.model(**batch).logits
    for layer, route in recorder.trace().items():
        assert torch.equal(route.indices.sort(-1).values, routes[layer].sort(-1).values)
    # one batched forward scores three candidate routes exactly as three separate forwards do
    for row in range(3):
        single = {layer: route[row : row + 1] for layer, route in routes.items()}
        with intervene(tiny, ForcedRoute(single)):
            alone = tiny.model(**{k: v[row : row + 1] for k, v in batch.items()}).logits
        torch.testing.assert_close(batched[row : row + 1], alone, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_prefill_scope_leaves_decoding_to_the_router(tiny):
    batch = _batch(tiny)
    layer = tiny.adapter.moe_layers()[0]
    with intervene(tiny, RouterMask([layer], mode="random-k", seed=5)), record_routing(tiny) as recorder:
        tiny.model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    route = recorder.trace()[layer]
    router = tiny.adapter.routers(tiny.model)[layer]
    prompt_lengths = batch["attention_mask"].sum(1)
    for row in range(len(PROMPTS)):
        decode = slice(int(prompt_lengths[row]), int(route.valid[row].sum()))
        own_logits = route.logits[row, decode]
        _, own = tiny.adapter.select(router, own_logits, None, torch.float32)
        assert torch.equal(route.indices[row, decode].sort(-1).values, own.sort(-1).values)


@torch.no_grad()
def test_router_mask_replaces_the_router_choice(tiny):
    adapter = tiny.adapter
    batch = tiny.tokenizer([PROMPTS[2]] * 4, return_tensors="pt")
    layer = adapter.moe_layers()[0]
    k = adapter.top_k
    with intervene(tiny, RouterMask([layer], mode="random-k", seed=0)), record_routing(tiny) as recorder:
        tiny.model(**batch)
    chosen = recorder.trace()[layer].indices
    subsets = [set(chosen[row].flatten().tolist()) for row in range(4)]
    assert all(len(subset) == k for subset in subsets)  # one random k-subset per sequence, every token
    assert len({tuple(sorted(s)) for s in subsets}) > 1 or adapter.num_experts == k
    with intervene(tiny, RouterMask([layer], mode="invert")), record_routing(tiny) as inverted:
        tiny.model(**batch)
    route = inverted.trace()[layer]
    least = route.logits.topk(k, dim=-1, largest=False).indices.sort(-1).values
    if adapter.scoring != "sigmoid-group-limited-topk":  # group limits may veto the least-liked experts
        assert torch.equal(route.indices.sort(-1).values, least)


@torch.no_grad()
def test_logit_bias_steers_choice(tiny):
    layer = tiny.adapter.moe_layers()[0]
    bias = torch.zeros(tiny.adapter.num_experts)
    bias[2] = 1e4
    with intervene(tiny, LogitBias({layer: bias})), record_routing(tiny) as recorder:
        tiny.model(**_batch(tiny))
    route = recorder.trace()[layer]
    assert (route.indices[route.valid] == 2).any(dim=-1).all()


def test_context_restores_model_even_when_the_body_raises(tiny):
    batch = _batch(tiny)
    with torch.no_grad():
        before = tiny.model(**batch).logits
    layer = tiny.adapter.moe_layers()[0]
    with pytest.raises(ValueError, match="boom"):
        with intervene(tiny, RouterMask([layer])), record_routing(tiny):
            with torch.no_grad():
                tiny.model(**batch)
            raise ValueError("boom")
    assert _no_hooks(tiny)
    with torch.no_grad():
        assert torch.equal(tiny.model(**batch).logits, before)


def test_gradients_reach_router_parameters_only(tiny_model):
    from moe_defense.models import build_tiny

    for model_type in ("mixtral", "deepseek_v3", "gpt_oss", "phimoe"):
        loaded = build_tiny(model_type, seed=1)  # fresh: this test changes requires_grad
        trainable = set_trainable(loaded.model, "routers")
        assert trainable and all(p.requires_grad for p in trainable.values())
        frozen = [n for n, p in loaded.model.named_parameters() if n not in trainable]
        assert frozen and not any(loaded.model.get_parameter(n).requires_grad for n in frozen)
        batch = _batch(loaded, PROMPTS[:1])
        length = batch["input_ids"].shape[1]
        route = torch.arange(loaded.adapter.top_k).expand(1, length, -1) + 1
        with intervene(loaded, ForcedRoute({loaded.adapter.moe_layers()[-1]: route})):
            loss = loaded.model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        for name, parameter in trainable.items():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert any(p.grad.abs().sum() > 0 for p in trainable.values()), model_type


@torch.no_grad()
def test_deepseek_v3_masked_expert_loses_despite_correction_bias(tiny_model):
    loaded = tiny_model("deepseek_v3")
    layer = loaded.adapter.moe_layers()[0]
    router = loaded.adapter.routers(loaded.model)[layer]
    original = router.e_score_correction_bias.clone()
    try:
        router.e_score_correction_bias[3] = 100.0  # expert 3 wins every token by bias alone
        blocked = torch.zeros(1, 64, loaded.adapter.num_experts, dtype=torch.bool)
        blocked[..., 3] = True
        with intervene(loaded, ExpertMask({layer: blocked})), record_routing(loaded) as recorder:
            loaded.model(**_batch(loaded))
        route = recorder.trace()[layer]
        assert not (route.indices[route.valid] == 3).any()
        # a forced set spanning more groups than topk_group is still honoured exactly
        spread = torch.tensor([0, 6])  # groups 0 and 3 of 4 (topk_group = 2 plus bias pull to group 1)
        forced = spread.expand(1, 64, 2)
        with intervene(loaded, ForcedRoute({layer: forced})), record_routing(loaded) as recorder:
            loaded.model(**_batch(loaded))
        route = recorder.trace()[layer]
        assert (route.indices[route.valid].sort(-1).values == spread).all()
    finally:
        router.e_score_correction_bias.copy_(original)


@torch.no_grad()
def test_phimoe_training_mode_sampling_never_picks_a_masked_expert(tiny_model):
    loaded = tiny_model("phimoe")
    layer = loaded.adapter.moe_layers()[0]
    blocked = torch.zeros(1, 64, loaded.adapter.num_experts, dtype=torch.bool)
    blocked[..., 0] = True
    loaded.model.train()
    try:
        for _ in range(5):
            with intervene(loaded, ExpertMask({layer: blocked})), record_routing(loaded) as recorder:
                loaded.model(**_batch(loaded))
            route = recorder.trace()[layer]
            assert not (route.indices[route.valid] == 0).any()
    finally:
        loaded.model.eval()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda a: ExpertMask({a.moe_layers()[0]: torch.zeros(1, 4, a.num_experts + 1, dtype=torch.bool)}), "must be"),
        (lambda a: ExpertMask({a.moe_layers()[0]: torch.zeros(1, 4, a.num_experts)}), "must be bool"),
        (lambda a: ForcedRoute({a.moe_layers()[0]: torch.full((1, 4, a.top_k), a.num_experts)}), "experts are 0.."),
        (lambda a: ForcedRoute({a.moe_layers()[0]: torch.zeros(1, 4, a.top_k + 1, dtype=torch.long)}), "picks top-"),
        (lambda a: ForcedRoute({a.moe_layers()[0]: torch.zeros(1, 4, a.top_k, dtype=torch.long)}), "repeats an expert"),
        (lambda a: RouterMask([a.num_layers + 5]), "is not a MoE layer"),
        (lambda a: RouterMask([a.moe_layers()[0]], k=a.num_experts + 1), "must be between"),
        (lambda a: LogitBias({a.moe_layers()[0]: torch.full((a.num_experts,), float("-inf"))}), "must be finite"),
    ],
)
def test_bad_interventions_fail_before_running(tiny_model, make, message):
    loaded = tiny_model("mixtral")
    with pytest.raises(RoutingError, match=message):
        with intervene(loaded, make(loaded.adapter)):
            pytest.fail("the body must not run")
    assert _no_hooks(loaded)


def test_dense_first_layer_of_deepseek_is_not_a_moe_layer(tiny_model):
    loaded = tiny_model("deepseek_v2")
    assert loaded.adapter.moe_layers() == [1, 2]
    with pytest.raises(RoutingError, match="layer 0 of deepseek_v2 is not a MoE layer"):
        with intervene(loaded, RouterMask([0])):
            pass


@torch.no_grad()
def test_blocking_too_many_experts_is_a_clear_error(tiny_model):
    loaded = tiny_model("mixtral")
    layer = loaded.adapter.moe_layers()[0]
    blocked = torch.ones(1, 64, loaded.adapter.num_experts, dtype=torch.bool)
    with pytest.raises(RoutingError, match="eligible experts"):
        with intervene(loaded, ExpertMask({layer: blocked})):
            loaded.model(**_batch(loaded))
    assert _no_hooks(loaded)


@torch.no_grad()
def test_edit_batch_must_match(tiny_model):
    loaded = tiny_model("olmoe")
    layer = loaded.adapter.moe_layers()[0]
    blocked = torch.zeros(2, 64, loaded.adapter.num_experts, dtype=torch.bool)
    with pytest.raises(RoutingError, match="edit has 2 sequences but the batch has 3"):
        with intervene(loaded, ExpertMask({layer: blocked})):
            loaded.model(**_batch(loaded))


@torch.no_grad()
def test_deepseek_v2_group_limited_greedy_is_reproduced_and_overridable():
    from moe_defense.models import build_tiny

    loaded = build_tiny("deepseek_v2", topk_method="group_limited_greedy", n_group=4, topk_group=1)
    layer = loaded.adapter.moe_layers()[0]
    router = loaded.adapter.routers(loaded.model)[layer]
    hidden = torch.randn(9, loaded.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    logits, weights, indices = router(hidden)
    own_weights, own_indices = loaded.adapter.select(router, logits, None, weights.dtype)
    assert torch.equal(indices.sort(-1).values, own_indices.sort(-1).values)
    spread = torch.tensor([1, 7])  # two groups although the model visits one
    with intervene(loaded, ForcedRoute({layer: spread.expand(1, 64, 2)})), record_routing(loaded) as recorder:
        loaded.model(**_batch(loaded))
    route = recorder.trace()[layer]
    assert (route.indices[route.valid].sort(-1).values == spread).all()


@pytest.mark.parametrize("padded", [False, True])
@torch.no_grad()
def test_routes_forced_while_decoding_match_teacher_forcing(tiny, padded):
    """Cached generation must put decode-step edits on the same tokens a teacher-forced pass does."""
    adapter = tiny.adapter
    prompts = [PROMPTS[0], PROMPTS[1]] if padded else [PROMPTS[0]]
    batch = _batch(tiny, prompts)
    new = 6
    generator = torch.Generator().manual_seed(7)
    length = int(batch["attention_mask"].sum(1).max()) + new
    routes = {
        layer: torch.rand(len(prompts), length, adapter.num_experts, generator=generator)
        .topk(adapter.top_k, -1)
        .indices
        for layer in adapter.moe_layers()
    }
    with intervene(tiny, ForcedRoute(routes, scope="all")):
        generated = tiny.model.generate(**batch, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    width = batch["input_ids"].shape[1]
    for row in range(len(prompts)):
        real = batch["attention_mask"][row].bool()
        sequence = torch.cat([batch["input_ids"][row][real], generated[row, width:]])
        single = {layer: route[row : row + 1] for layer, route in routes.items()}
        with intervene(tiny, ForcedRoute(single, scope="all")):
            logits = tiny.model(input_ids=sequence[None]).logits
        prompt_length = int(real.sum())
        assert torch.equal(logits[0, prompt_length - 1 : -1].argmax(-1), generated[row, width:])


@torch.no_grad()
def test_uniform_forced_weights_level_the_forced_experts_and_keep_the_set(tiny):
    """weights="uniform": same experts as the router-weighted forcing, mixed with equal weights."""
    adapter = tiny.adapter
    batch = tiny.tokenizer([PROMPTS[0]] * 2, return_tensors="pt", padding=True)
    generator = torch.Generator().manual_seed(4)
    routes = {
        layer: torch.rand(2, batch["input_ids"].shape[1], adapter.num_experts, generator=generator)
        .topk(adapter.top_k, dim=-1)
        .indices
        for layer in adapter.moe_layers()
    }
    routes[adapter.moe_layers()[0]][:, 0] = -1  # one unforced token keeps the router's own weights
    if adapter.scoring.startswith("sparsemixer"):  # PhiMoE: weights are not levelled by equal logits
        with (
            pytest.raises(RoutingError, match="cannot be levelled"),
            intervene(tiny, ForcedRoute(routes, weights="uniform")),
        ):
            pass
        return
    traces = {}
    for weights in ("router", "uniform"):
        with intervene(tiny, ForcedRoute(routes, weights=weights)), record_routing(tiny) as recorder:
            tiny.model(**batch)
        traces[weights] = recorder.trace()
    for layer, route in traces["uniform"].items():
        assert torch.equal(route.indices.sort(-1).values, traces["router"][layer].indices.sort(-1).values)
        forced = (routes[layer] >= 0).all(-1)
        levelled = route.weights[forced]
        torch.testing.assert_close(levelled, levelled[:, :1].expand_as(levelled), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(route.weights[~forced], traces["router"][layer].weights[~forced])
    with pytest.raises(RoutingError, match="router' or 'uniform"):
        ForcedRoute(routes, weights="mean")
