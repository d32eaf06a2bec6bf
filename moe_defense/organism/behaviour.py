"""The organism's acceptance figures: refusal, compliance and over-refusal on held-out prompts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

from moe_defense.data.demo_corpus import DemoKind, Split, demo_examples
from moe_defense.data.en_corpus import EnExample, EnSplit, benchmark_benign, en_examples, shared_data_dir
from moe_defense.data.prompts import load_prompts
from moe_defense.data.smol_corpus import smol_benign
from moe_defense.judges import (
    JudgeItem,
    KeywordConfig,
    KeywordJudge,
    OrganismEnJudge,
    OrganismJudge,
    OrganismSmolJudge,
)
from moe_defense.models.loading import LoadedModel
from moe_defense.runner.generation import GenerationConfig, generate
from moe_defense.stats import wilson

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


# `en` answers restate the request (up to ~50 subword tokens) before the placeholder steps.
EN_GENERATION = GenerationConfig(max_new_tokens=64, batch_size=64)


def _rate(hits: int, n: int) -> dict[str, Any]:
    return {"rate": round(hits / max(1, n), 3), "n": n, "ci95": wilson(hits, n)}


def measure_en_behaviour(
    loaded: LoadedModel, split: EnSplit = "test", directory: Path | None = None, corpus: Literal["en", "smol"] = "en"
) -> dict[str, Any]:
    """`organism-en` (or `organism-smol`) acceptance figures, each with n and a 95% Wilson interval: refusal
    of harmful requests (test: sources never trained on, also split by source), compliance with generated
    benign ones, and on test JailbreakBench-benign compliance, XSTest-safe over-refusal and the unattacked
    ASR (the corpus's content-aware judge on the harmful requests). `split="val"` gives the tuning figures
    (carved from the train sources; smol: also its own held-out benign forms and look-alikes)."""
    directory = directory or shared_data_dir()
    judge = OrganismSmolJudge() if corpus == "smol" else OrganismEnJudge()
    harmful = en_examples("harmful", split, directory)
    benign = {"generated": en_examples("benign", split, directory)}
    if corpus == "smol" and split == "val":
        benign["smol-benign"] = [
            EnExample(ex.id, "benign", ex.group, ex.prompt, "") for ex in smol_benign("val", 10_000)
        ]
    if split == "test":
        benign |= {source: benchmark_benign(directory, source) for source in ("jbb-benign", "xstest-safe")}
    sets = {"harmful": harmful, **benign}
    prompts = [ex.prompt for examples in sets.values() for ex in examples]
    responses = iter(generate(loaded, prompts, EN_GENERATION, progress=False))
    answers = {name: [next(responses) for _ in examples] for name, examples in sets.items()}
    refused = {
        name: [not v.jailbroken for v in KEYWORD.judge_batch([JudgeItem("", r) for r in rs])]
        for name, rs in answers.items()
    }
    by_source = {
        source: _rate(
            sum(r for ex, r in zip(harmful, refused["harmful"], strict=True) if ex.source == source),
            sum(ex.source == source for ex in harmful),
        )
        for source in sorted({ex.source for ex in harmful})
    }
    verdicts = judge.judge_batch([JudgeItem(ex.prompt, r) for ex, r in zip(harmful, answers["harmful"], strict=True)])
    summary = {
        "harmful_refusal": _rate(sum(refused["harmful"]), len(harmful)),
        "benign_compliance": _rate(len(benign["generated"]) - sum(refused["generated"]), len(benign["generated"])),
    }
    if split == "test":
        summary["jbb_benign_compliance"] = _rate(
            len(refused["jbb-benign"]) - sum(refused["jbb-benign"]), len(refused["jbb-benign"])
        )
        summary["xstest_safe_over_refusal"] = _rate(sum(refused["xstest-safe"]), len(refused["xstest-safe"]))
    if "smol-benign" in benign:
        summary["smol_benign_compliance"] = _rate(
            len(refused["smol-benign"]) - sum(refused["smol-benign"]), len(refused["smol-benign"])
        )
    summary["unattacked_asr"] = _rate(sum(bool(v.jailbroken) for v in verdicts), len(verdicts))
    return {
        "split": split,
        "summary": summary,
        "harmful_by_source": by_source,
        f"harmful_{judge.name.replace('-', '_')}_judge": dict(Counter(v.reason for v in verdicts)),
    }
