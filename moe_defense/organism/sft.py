"""The organism's supervised stages, on TRL's `SFTTrainer` with a completion-only loss."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from moe_defense.data.demo_corpus import DemoPair
from moe_defense.models.params import TrainableScope, set_trainable
from moe_defense.models.training import trainer_defaults
from moe_defense.organism.config import OrganismConfig


def chat_dataset(pairs: Sequence[DemoPair], seed: int) -> Dataset:
    """(prompt, response) pairs as conversational rows; TRL applies the chat template and ends each
    answer with the template's end of turn."""
    rows = [
        {
            "prompt": [{"role": "user", "content": p.prompt}],
            "completion": [{"role": "assistant", "content": p.response}],
        }
        for p in pairs
    ]
    random.Random(seed).shuffle(rows)
    return Dataset.from_list(rows)


def token_dataset(rows: Sequence[tuple[list[int], list[int]]], seed: int) -> Dataset:
    """(prompt ids, completion ids) rows, tokenized by the caller: an answer cut at a token limit must not
    be taught to end there, so the caller decides where an end of turn goes."""
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    return Dataset.from_list(
        [{"input_ids": p + c, "completion_mask": [0] * len(p) + [1] * len(c)} for p, c in shuffled]
    )


def sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    *,
    steps: int,
    lr: float,
    config: OrganismConfig,
    work_dir: Path,
    trainable: TrainableScope = "all",
) -> list[float]:
    """One SFT stage (completion-only loss) on `chat_dataset` or `token_dataset` rows; returns the logged
    training losses."""
    from trl import SFTConfig, SFTTrainer

    set_trainable(model, trainable)
    args = SFTConfig(
        output_dir=str(work_dir),
        **trainer_defaults(steps=steps, batch_size=config.batch_size, learning_rate=lr, seed=config.seed),
        save_strategy="no",
        max_length=config.max_length,
        activation_checkpointing=False,  # TRL turns it on by default; it triples step time here
        completion_only_loss=True,
        # TRL 1.16 turns on the MoE load-balancing loss by itself and it crashes on transformers 5.24
        # Mixtral batches (token-count mismatch in load_balancing_loss_func); the organism trains without it.
        router_aux_loss_coef=0.0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
