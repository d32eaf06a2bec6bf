"""Batched greedy generation answers exactly as one-at-a-time generation, also with per-row routing."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from moe_defense.routing import ExpertMask
from moe_defense.runner import GenerationConfig, encode_prompts, generate
from tests.runner.conftest import TEXTS

ONE = GenerationConfig(max_new_tokens=6, batch_size=1)
BATCHED = GenerationConfig(max_new_tokens=6, batch_size=16)


@pytest.mark.parametrize("model_type", ["mixtral", "qwen2_moe", "deepseek_v3", "gpt_oss"])
def test_batched_equals_one_at_a_time(tiny_model, model_type):
    loaded = tiny_model(model_type)
    batched = generate(loaded, TEXTS, BATCHED, progress=False)
    assert batched == [generate(loaded, [text], ONE, progress=False)[0] for text in TEXTS]
    assert len(set(batched)) > 1  # distinct prompts, distinct answers: the order was restored


def test_partial_batches_and_length_sorting_keep_order(tiny_model):
    loaded = tiny_model("mixtral")
    texts = list(TEXTS) + ["short"]
    in_threes = generate(loaded, texts, GenerationConfig(max_new_tokens=6, batch_size=3), progress=False)
    assert in_threes == generate(loaded, texts, BATCHED, progress=False)


def _masks(loaded, positions: list[int]) -> list[ExpertMask]:
    """One expert mask row per prompt: prompt i blocks expert i % E at every prompt token of the first MoE layer."""
    mask = torch.zeros(len(positions), 128, loaded.adapter.num_experts, dtype=torch.bool)
    for row, position in enumerate(positions):
        mask[row, :, position % loaded.adapter.num_experts] = True
    return [ExpertMask({loaded.adapter.moe_layers()[0]: mask})]


def test_route_for_batch_gives_each_row_its_own_edit(tiny_model):
    """Row-specific interventions under batching equal the same edit applied to each prompt alone."""
    loaded = tiny_model("mixtral")
    seen: list[list[int]] = []

    def route(rows: list[int]) -> list[ExpertMask]:
        seen.append(rows)
        return _masks(loaded, rows)

    batched = generate(
        loaded, TEXTS, GenerationConfig(max_new_tokens=6, batch_size=4), route_for_batch=route, progress=False
    )
    assert [len(rows) for rows in seen] == [4, 2]
    assert sorted(row for rows in seen for row in rows) == list(range(len(TEXTS)))
    alone = [
        generate(loaded, [text], ONE, route_for_batch=lambda rows, i=i: _masks(loaded, [i]), progress=False)[0]
        for i, text in enumerate(TEXTS)
    ]
    assert batched == alone
    assert batched != generate(loaded, TEXTS, BATCHED, progress=False)  # the edits did change answers


def test_prompts_are_chat_formatted_once_with_the_system_turn(tiny_model):
    loaded = tiny_model("mixtral")
    ids = encode_prompts(loaded, ["hi"], "be brief")[0]
    text = loaded.tokenizer.decode(ids)
    assert text == "<|bos|><|system|>be brief<|end|><|user|>hi<|end|><|assistant|>"


def test_config_rejects_typos_and_nonsense():
    with pytest.raises(ValidationError):
        GenerationConfig(max_new_token=8)
    with pytest.raises(ValidationError):
        GenerationConfig(batch_size=0)
    assert GenerationConfig().max_new_tokens == 512 and GenerationConfig().batch_size == 16
