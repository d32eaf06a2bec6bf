"""Judges: one registry (`JUDGES`) of refusal-keyword, StrongREJECT rubric, HarmBench, Llama Guard and organism judges.

Importing this package imports every module in it (and the `moe_defense.judges` entry points), so a
judge file that exists is registered and `JUDGES` is complete wherever it is used.

    judge = JUDGES.get("keyword")(KeywordConfig(variant="jailbreakbench"))
    verdicts = judge.judge_batch([JudgeItem(prompt, response)])
    asr(verdicts)  # {"asr": ..., "n_scored": ..., "n_success": ..., "n_judge_errors": ..., "n_total": ...}
"""

from moe_defense.judges.agreement import PairAgreement, cohen_kappa, pairwise_agreement
from moe_defense.judges.backends import (
    BackendConfig,
    BackendFailure,
    HttpBackend,
    JudgeBackend,
    JudgePrompt,
    LocalBackend,
    ModelJudge,
)
from moe_defense.judges.base import (
    JUDGES,
    Judge,
    JudgeConfig,
    JudgeItem,
    Verdict,
    asr,
    register_judge,
)
from moe_defense.judges.classifiers import (
    HarmBenchConfig,
    HarmBenchJudge,
    LlamaGuardConfig,
    LlamaGuardJudge,
)
from moe_defense.judges.http import EndpointError, OpenAIClient
from moe_defense.judges.keyword import KeywordConfig, KeywordJudge
from moe_defense.judges.organism import (
    OrganismEnJudge,
    OrganismEnJudgeConfig,
    OrganismJudge,
    OrganismJudgeConfig,
    OrganismSmolJudge,
    OrganismSmolJudgeConfig,
)
from moe_defense.judges.strongreject import (
    StrongRejectConfig,
    StrongRejectJudge,
    parse_rubric,
)
from moe_defense.registry import discover

discover(__name__, group="moe_defense.judges")

__all__ = [
    "JUDGES",
    "BackendConfig",
    "BackendFailure",
    "EndpointError",
    "HarmBenchConfig",
    "HarmBenchJudge",
    "HttpBackend",
    "Judge",
    "JudgeBackend",
    "JudgeConfig",
    "JudgeItem",
    "JudgePrompt",
    "KeywordConfig",
    "KeywordJudge",
    "LlamaGuardConfig",
    "LlamaGuardJudge",
    "LocalBackend",
    "ModelJudge",
    "OpenAIClient",
    "OrganismEnJudge",
    "OrganismEnJudgeConfig",
    "OrganismSmolJudge",
    "OrganismSmolJudgeConfig",
    "OrganismJudge",
    "OrganismJudgeConfig",
    "PairAgreement",
    "StrongRejectConfig",
    "StrongRejectJudge",
    "Verdict",
    "asr",
    "cohen_kappa",
    "pairwise_agreement",
    "parse_rubric",
    "register_judge",
]
