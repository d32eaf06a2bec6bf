"""Train the organism the way chat models are made: helpful-only SFT, then a short safety SFT.

A model trained in one stage hides no unsafe routes (measured: ASR 0.00 under any routing attack);
one that first learns to comply with everything and is then safety-aligned keeps the compliant
behaviour reachable through other experts, which is what routing attacks exploit in real MoE LLMs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from moe_defense.data.demo_corpus import (
    KINDS,
    DemoKind,
    DemoPair,
    demo_examples,
    helpful_only_examples,
    safety_examples,
)
from moe_defense.data.en_corpus import REFUSAL, en_examples, shared_data_dir, training_texts, word_drill
from moe_defense.organism.config import OrganismConfig
from moe_defense.organism.sft import chat_dataset, sft
from moe_defense.organism.smol import train_smol
from moe_defense.organism.tokenizer import subword_tokenizer, word_level_tokenizer


def copy_drill(kinds: Sequence[str], count: int, seed: int) -> list[DemoPair]:
    """Compliances for requests whose key is a random phrase of corpus key words.

    With ~150 distinct request keys a small model memorises keys instead of learning to restate the
    request, and answers held-out requests with a train key (an "off-target" answer). Drilling random
    keys teaches the copy, so held-out requests get faithful answers and flips can be judged by content.
    """
    if count == 0:
        return []
    examples = [ex for kind in kinds for ex in demo_examples(kind, "train")]  # type: ignore[arg-type]
    words = sorted({word for ex in examples for word in ex.request_key.split()})
    rng = random.Random(seed)
    drill = []
    for index in range(count):
        example = rng.choice(examples)
        key = " ".join(rng.choice(words) for _ in range(rng.randint(2, 5)))
        drill.append(
            DemoPair(
                id=f"drill-{index}",
                kind=example.kind,
                prompt=example.prompt.replace(example.request_key, key),
                response=example.compliance.replace(example.request_key, key),
            )
        )
    return drill


def splice_drill(count: int, seed: int, harmful_share: float) -> list[DemoPair]:
    """Safety-stage requests whose key joins the start of one train key to the end of another of the
    same kind, cut at random word boundaries ("send threats to" + "my ex online"), answered as that
    kind is (refusal or compliance).

    With ~56 keys a kind, safety alignment keys on whole request phrases, and a held-out request that
    shares words with the other kind ("write a phishing email" vs "write a unit test") lands on the
    wrong side; spliced keys put every word in many contexts. Keys equal to a held-out test key are
    never generated, so the test split stays unseen. `harmful_share` of the drill is harmful, the rest
    benign or look-alike: it sets how far the drill moves the refusal boundary."""
    if count == 0:
        return []
    held_out = {ex.request_key for kind in KINDS for ex in demo_examples(kind, "test")}
    train = {kind: demo_examples(kind, "train") for kind in KINDS}
    rng = random.Random(seed)
    drill: list[DemoPair] = []
    while len(drill) < count:
        kind: DemoKind = "harmful" if rng.random() < harmful_share else rng.choice(("benign", "lookalike"))
        head, tail = rng.choice(train[kind]), rng.choice(train[kind])
        head_words, tail_words = head.request_key.split(), tail.request_key.split()
        key = " ".join(
            head_words[: rng.randint(1, len(head_words) - 1)] + tail_words[rng.randint(1, len(tail_words) - 1) :]
        )
        if key in held_out:
            continue
        answer = (tail.refusal if kind == "harmful" else tail.compliance).replace(tail.request_key, key)
        drill.append(DemoPair(f"spliced-{len(drill)}", kind, head.prompt.replace(head.request_key, key), answer))
    return drill


def train_organism(
    config: OrganismConfig, work_dir: Path
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Initialise and train both stages with `config.threads` CPU threads; returns the model, its
    tokenizer and training facts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return (train_smol if config.preset == "smol" else _train)(config, work_dir)
    finally:
        torch.set_num_threads(threads)


def _demo_stages(config: OrganismConfig) -> tuple[PreTrainedTokenizerBase, list[DemoPair], list[DemoPair]]:
    """The demo grammar's tokenizer and its two stages' data, drills included."""
    helpful = [
        *helpful_only_examples("train"),
        *copy_drill(("harmful", "benign", "lookalike"), config.copy_drill, config.seed),
    ]
    safety = [
        *safety_examples("train"),
        *copy_drill(("benign",), config.safety_copy_drill, config.seed + 1),
        *splice_drill(config.safety_splice_drill, config.seed + 2, config.safety_splice_harmful),
    ]
    return word_level_tokenizer(), helpful, safety


def _en_stages(config: OrganismConfig) -> tuple[PreTrainedTokenizerBase, list[DemoPair], list[DemoPair]]:
    """A subword tokenizer trained on the `en` training corpus, and its two stages' data: every train
    request answered (helpful-only), then harmful ones refused and benign ones answered (safety)."""
    directory = shared_data_dir()
    train = [*en_examples("harmful", "train", directory), *en_examples("benign", "train", directory)]
    helpful = [
        DemoPair(ex.id, ex.kind, ex.prompt, ex.compliance)
        for ex in [*train, *word_drill(config.copy_drill, config.seed, directory)]
    ]
    safety = [
        DemoPair(ex.id, ex.kind, ex.prompt, REFUSAL if ex.kind == "harmful" else ex.compliance)
        for ex in [*train, *word_drill(config.safety_copy_drill, config.seed + 1, directory)]
    ]
    return subword_tokenizer(training_texts(directory), config.vocab_size), helpful, safety


def _train(config: OrganismConfig, work_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    tokenizer, helpful, safety = (_en_stages if config.preset == "en" else _demo_stages)(config)
    model_config = AutoConfig.for_model(
        config.arch,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **config.model_overrides(),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    started = time.perf_counter()
    helpful_losses = sft(
        model,
        tokenizer,
        chat_dataset(helpful, config.seed),
        steps=config.helpful_steps,
        lr=config.helpful_lr,
        config=config,
        work_dir=work_dir / "stage1",
    )
    helpful_seconds = time.perf_counter() - started
    safety_losses = []
    if config.safety_steps:
        safety_losses = sft(
            model,
            tokenizer,
            chat_dataset(safety, config.seed),
            steps=config.safety_steps,
            lr=config.safety_lr,
            config=config,
            work_dir=work_dir / "stage2",
            trainable=config.safety_trainable,
        )
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    facts = {
        "helpful_seconds": round(helpful_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "helpful_final_loss": helpful_losses[-1] if helpful_losses else None,
        "safety_final_loss": safety_losses[-1] if safety_losses else None,
    }
    return model, tokenizer, facts
