"""Evaluation core: batched greedy generation, the run directory contract, and `evaluate`.

    summary = evaluate(loaded, load_prompts("demo-harmful"), [KeywordJudge()], out_dir="runs/x")

Attacks reuse the same pieces: `generate(..., route_for_batch=...)` for per-row routing,
`RunDir` for crash-safe records, `summarize` for the summary rows.
"""

from moe_defense.runner.evaluate import (
    evaluate,
    is_benign,
    judge_responses,
    make_record,
    render_report,
    summarize,
    summary_table,
)
from moe_defense.runner.generation import (
    GenerationConfig,
    RouteForBatch,
    encode_prompts,
    generate,
    generate_replies,
)
from moe_defense.runner.process import ProcessInfo, process_info
from moe_defense.runner.rundir import (
    RecordWriter,
    RunDir,
    atomic_write,
    default_out_dir,
    provenance,
    read_jsonl,
)

__all__ = [
    "GenerationConfig",
    "ProcessInfo",
    "RecordWriter",
    "RouteForBatch",
    "RunDir",
    "atomic_write",
    "default_out_dir",
    "encode_prompts",
    "evaluate",
    "generate",
    "generate_replies",
    "is_benign",
    "judge_responses",
    "make_record",
    "process_info",
    "provenance",
    "read_jsonl",
    "render_report",
    "summarize",
    "summary_table",
]
