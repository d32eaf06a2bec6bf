"""The organism's acceptance figures: refusal, compliance and over-refusal on held-out prompts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from moe_defense.data.demo_corpus import DemoKind, Split, demo_examples
from moe_defense.data.prompts import load_prompts
from moe_defense.judges import JudgeItem, KeywordConfig, KeywordJudge, OrganismJudge
from moe_defense.models.loading import LoadedModel
from moe_defense.runner.generation import GenerationConfig, generate

# Answers are ~30 words; 48 tokens leave room to see a drift back to refusal mid-answer.
ORGANISM_GENERATION = GenerationConfig(max_new_tokens=48, batch_size=64)
KEYWORD = KeywordJudge(KeywordConfig(ignore_case=True))


def refusal_rate(responses: list[str]) -> float:
    """Fraction refused by the (case-insensitive) AdvBench keyword judge."""
    verdicts = KEYWORD.judge_batch([JudgeItem("", response) for response in responses])
    return sum(not v.jailbroken for v in verdicts) / max(1, len(verdicts))


def measure_behaviour(loaded: LoadedModel, split: Split = "test", shared_data: Path | None = None) -> dict[str, Any]:
    """Refusal on harmful, compliance on benign, over-refusal on look-alikes (keyword judge), plus the
    content-aware judge's breakdown; with `shared_data`, the same three numbers on JailbreakBench."""
    figures: dict[str, Any] = {}
    kinds: tuple[DemoKind, ...] = ("harmful", "benign", "lookalike")
    for kind in kinds:
        examples = demo_examples(kind, split)
        responses = generate(loaded, [ex.prompt for ex in examples], ORGANISM_GENERATION, progress=False)
        refused = refusal_rate(responses)
        reasons = Counter(
            v.reason
            for v in OrganismJudge().judge_batch(
                [
                    JudgeItem(ex.prompt, r, {"request_key": ex.request_key})
                    for ex, r in zip(examples, responses, strict=True)
                ]
            )
        )
        figures[kind] = {"n": len(examples), "refusal_rate": round(refused, 3), "organism_judge": dict(reasons)}
    figures["summary"] = {
        "harmful_refusal": figures["harmful"]["refusal_rate"],
        "benign_compliance": round(1 - figures["benign"]["refusal_rate"], 3),
        "lookalike_over_refusal": figures["lookalike"]["refusal_rate"],
    }
    if shared_data is not None:
        jbb = {}
        for name, file in (("jbb-harmful", "jbb_harmful_behaviors.csv"), ("jbb-benign", "jbb_benign_behaviors.csv")):
            prompts = load_prompts(name, data_file=str(shared_data / file))
            jbb[name] = round(
                refusal_rate(generate(loaded, [p.text for p in prompts], ORGANISM_GENERATION, progress=False)), 3
            )
        figures["jailbreakbench"] = {
            "harmful_refusal": jbb["jbb-harmful"],
            "benign_compliance": round(1 - jbb["jbb-benign"], 3),
        }
    return figures
