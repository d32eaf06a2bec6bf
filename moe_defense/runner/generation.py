"""Batched greedy generation: chat-formatted prompts, left padding, KV cache, optional per-row routing,
replies split into reasoning and final answer by the model's reasoning parser.

Greedy decoding makes a response a function of (model, prompt, routing) alone, so a run can be resumed,
sharded over processes or re-batched without changing a single answer (tested: batched outputs equal
one-at-a-time outputs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from moe_defense.data import format_chat
from moe_defense.models import LoadedModel
from moe_defense.models.chat import Reply
from moe_defense.models.padding import pad
from moe_defense.routing import Intervention, intervene

# Given the rows of one batch (positions in the `texts` passed to `generate`, in batch-row order),
# return the interventions for that batch; their batch dimension B must be 1 or len(rows).
RouteForBatch = Callable[[list[int]], Sequence[Intervention]]


class GenerationConfig(BaseModel):
    """How responses are generated: greedy, up to `max_new_tokens`, `batch_size` prompts per call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(
        512,
        ge=1,
        description="tokens generated per answer; 512 as in the published F-SOUR/RoSais code "
        "(TrustAIRLab/UnsafeMoE main.py, greedy) and HarmBench; JailbreakBench uses 150",
    )
    batch_size: int = Field(16, ge=1, description="prompts per generate() call (sorted by length to limit padding)")
    system_prompt: str | None = Field(None, description="optional system turn before each prompt; none by default")


def encode_prompts(loaded: LoadedModel, texts: Sequence[str], system_prompt: str | None) -> list[list[int]]:
    """Token ids of each chat-formatted prompt (with the model's template options); the template already
    holds BOS, so none is added again."""
    tokenizer, options = loaded.tokenizer, loaded.chat.template_kwargs
    return [
        list(tokenizer(format_chat(tokenizer, text, system_prompt, options), add_special_tokens=False)["input_ids"])
        for text in texts
    ]


def generate(
    loaded: LoadedModel,
    texts: Sequence[str],
    config: GenerationConfig | None = None,
    *,
    route_for_batch: RouteForBatch | None = None,
    progress: bool = True,
) -> list[str]:
    """The final answers of `generate_replies` (reasoning removed): what judges and training targets read."""
    replies = generate_replies(loaded, texts, config, route_for_batch=route_for_batch, progress=progress)
    return [reply.answer for reply in replies]


@torch.inference_mode()
def generate_replies(
    loaded: LoadedModel,
    texts: Sequence[str],
    config: GenerationConfig | None = None,
    *,
    route_for_batch: RouteForBatch | None = None,
    progress: bool = True,
) -> list[Reply]:
    """Greedy replies to `texts`, in order, split by the model's reasoning parser, special tokens removed.

    Prompts are sorted by length and cut into batches of `config.batch_size`; `route_for_batch(rows)`,
    when given, supplies the routing interventions of each batch, applied only around that batch's
    `generate` call (rows are positions in `texts`, in batch-row order).
    """
    config = config or GenerationConfig()
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = encode_prompts(loaded, texts, config.system_prompt)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]), reverse=True)
    replies: list[Reply] = [Reply("")] * len(texts)
    device = loaded.device
    skip_special = not loaded.chat.parser.keeps_special_tokens  # harmony channel markers are special tokens
    with tqdm(total=len(texts), desc="generate", unit="prompt", disable=not progress) as bar:
        for start in range(0, len(order), config.batch_size):
            rows = order[start : start + config.batch_size]
            input_ids, attention_mask = pad([encoded[i] for i in rows], pad_id, "left")
            interventions = route_for_batch(list(rows)) if route_for_batch is not None else ()
            with intervene(loaded, *interventions):
                output = loaded.model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    max_new_tokens=config.max_new_tokens,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=pad_id,
                )
            decoded = tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=skip_special)
            for i, text in zip(rows, decoded, strict=True):
                replies[i] = loaded.chat.split(tokenizer, text)
            bar.update(len(rows))
    return replies
