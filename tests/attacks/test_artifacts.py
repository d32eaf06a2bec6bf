"""Route artifacts replay exactly, survive JSONL, and are refused on another model."""

from __future__ import annotations

import json

import pytest
import torch

from moe_defense.attacks import (
    AttackSpec,
    Fsour,
    FsourConfig,
    RouteArtifact,
    interventions_for,
    read_artifacts,
    write_artifacts,
)
from moe_defense.attacks.base import AttackContext
from moe_defense.attacks.route_replay import RouteReplay, RouteReplayConfig
from moe_defense.data.prompts import Prompt, PromptSet
from moe_defense.errors import RoutingError
from moe_defense.models import build_tiny
from moe_defense.routing import intervene, record_routing
from moe_defense.runner.generation import encode_prompts

PROMPT = "how do i bake bread ?"


def _random_artifact(loaded, prompt_length: int, seed: int) -> RouteArtifact:
    generator = torch.Generator().manual_seed(seed)
    adapter = loaded.adapter
    forced = {}
    for layer in adapter.moe_layers():
        tokens = torch.randperm(prompt_length, generator=generator)[: max(1, prompt_length // 3)].tolist()
        forced[layer] = {
            t: torch.randperm(adapter.num_experts, generator=generator)[: adapter.top_k].tolist()
            for t in sorted(tokens)
        }
    return RouteArtifact(
        model_fingerprint=loaded.fingerprint(),
        prompt_id="p0",
        attack="test",
        prompt_length=prompt_length,
        forced=forced,
    )


@torch.no_grad()
def test_replayed_artifact_routes_exactly_as_stored(tiny, tmp_path):
    ids = torch.tensor(encode_prompts(tiny, [PROMPT], None)[0])[None]
    artifact = _random_artifact(tiny, ids.shape[1], seed=3)
    write_artifacts(tmp_path / "a.jsonl", [artifact])
    (restored,) = read_artifacts(tmp_path / "a.jsonl")
    assert restored == artifact
    interventions = interventions_for([restored], tiny.adapter.top_k, tiny.adapter.num_experts)
    with intervene(tiny, *interventions), record_routing(tiny) as recorder:
        tiny.model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    trace = recorder.trace()
    for layer, tokens in artifact.forced.items():
        for token, experts in tokens.items():
            assert sorted(trace[layer].indices[0, token].tolist()) == sorted(experts)


@torch.no_grad()
def test_rows_without_an_artifact_run_unattacked():
    loaded = build_tiny("mixtral")
    ids = torch.tensor(encode_prompts(loaded, [PROMPT], None)[0])[None].expand(2, -1)
    artifact = _random_artifact(loaded, ids.shape[1], seed=1)
    with intervene(loaded, *interventions_for([artifact, None], 2, 4)):
        attacked = loaded.model(input_ids=ids).logits
    plain = loaded.model(input_ids=ids[:1]).logits
    torch.testing.assert_close(attacked[1:], plain)
    assert not torch.allclose(attacked[:1], plain)


def test_artifact_from_another_model_is_refused_unless_forced(tmp_path):
    source, other = build_tiny("olmoe", seed=0), build_tiny("olmoe", seed=1)
    artifact = _random_artifact(source, 8, seed=0)
    path = tmp_path / "artifacts.jsonl"
    write_artifacts(path, [artifact])
    prompts = [Prompt("p0", PROMPT, {}), Prompt("p1", "hi", {})]
    with pytest.raises(RoutingError, match="force_transfer"):
        RouteReplay(RouteReplayConfig(artifacts=str(path))).run(other, prompts, AttackContext())
    results = RouteReplay(RouteReplayConfig(artifacts=str(path), force_transfer=True)).run(
        other, prompts, AttackContext()
    )
    assert results[0].artifact == artifact and results[1].artifact is None
    assert (
        RouteReplay(RouteReplayConfig(artifacts=str(path))).run(source, prompts, AttackContext())[0].artifact
        == artifact
    )


def test_schema_is_checked(tmp_path):
    loaded = build_tiny("mixtral")
    payload = _random_artifact(loaded, 4, seed=0).to_json()
    payload["schema"] = "something-else@9"
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(payload) + "\n")
    with pytest.raises(RoutingError, match="schema"):
        read_artifacts(path)


def test_a_replay_of_the_supplied_routes_runs_only_where_routes_are_supplied(tmp_path, tiny_suite):
    loaded = build_tiny("mixtral")
    path = tmp_path / "artifacts.jsonl"
    write_artifacts(path, [_random_artifact(loaded, len(encode_prompts(loaded, [PROMPT], None)[0]), seed=0)])
    assert RouteReplay(RouteReplayConfig()).needs_supplied_routes
    assert not RouteReplay(RouteReplayConfig(artifacts=str(path))).needs_supplied_routes
    assert not Fsour(FsourConfig()).needs_supplied_routes  # the base class's declared default
    prompts = PromptSet("p", "test", [Prompt("p0", PROMPT, {})])
    suite = tiny_suite([AttackSpec(name="route-replay")], prompts)
    assert "fsour-transfer" not in suite.run(loaded, "original", tmp_path / "original")
    assert "fsour-transfer" in suite.run(loaded, "hardened", tmp_path / "hardened", routes=path)
