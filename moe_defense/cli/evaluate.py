"""The `evaluate` verb: check every data and judge argument, then load the model, evaluate, print a table.

Data-parallel: `accelerate launch --multi_gpu --num_processes N -m moe_defense.cli.evaluate evaluate ...`
(on a CPU-only machine too: accelerate's `--cpu` flag starts a single process).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from moe_defense import load_model  # the top-level loader also resolves `organism`
from moe_defense.cli.options import (
    DTYPE_CHOICES,
    add_chat_arguments,
    add_checkpoint_arguments,
    key_values,
    load_options,
)
from moe_defense.data import PROMPT_SETS, PromptSet, load_prompts
from moe_defense.errors import ConfigError, MoEDefenseError
from moe_defense.judges import JUDGES, Judge
from moe_defense.judges.defaults import ENGLISH_JUDGE, default_judges
from moe_defense.judges.factory import JudgeSpec, build_judges, model_judges
from moe_defense.models import LoadedModel
from moe_defense.registry import validated
from moe_defense.runner.evaluate import evaluate, summary_table
from moe_defense.runner.generation import GenerationConfig
from moe_defense.runner.process import ProcessInfo, exit_process, process_info
from moe_defense.runner.rundir import default_out_dir

SUMMARY = "measure refusal / compliance / ASR of a model on a prompt set"


def add_model_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, prompt set and run-directory arguments of every run verb (`evaluate`, `attack`, `score`)."""
    parser.add_argument("model", help="hub id, local path, tiny:<model_type> or organism")
    parser.add_argument(
        "--data",
        required=True,
        help=f"a registered set ({', '.join(PROMPT_SETS.names())}), a local CSV/JSON/JSONL/Parquet file or a hub id",
    )
    parser.add_argument("--split", help="train|test for the demo sets (default test); the hub split of a hub set")
    parser.add_argument("--data-file", help="read a registered set from this local copy (same columns, same ids)")
    parser.add_argument(
        "--prompt-column", help="prompt column of a file (default: goal, prompt, forbidden_prompt or behavior)"
    )
    parser.add_argument("--limit", type=int, help="use a seeded random subset of N prompts")
    parser.add_argument("--seed", type=int, default=0, help="seed of --limit sampling and of tiny:<model_type> init")
    parser.add_argument("--out", help="run directory (default runs/<verb>-<time>)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out; finished work is not recomputed"
    )
    parser.add_argument(
        "--dtype", default="auto", choices=DTYPE_CHOICES, help="weights dtype (default auto: the checkpoint's)"
    )
    add_checkpoint_arguments(parser)
    add_chat_arguments(parser)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and data arguments plus the judge and generation ones, for the verbs that answer and judge
    (`evaluate`, `attack`)."""
    defaults = GenerationConfig()
    add_model_data_arguments(parser)
    parser.add_argument(
        "--judge",
        nargs="+",
        action="extend",
        metavar="NAME",
        help=f"judges ({', '.join(JUDGES.names())}); the first is the headline; default: the set's organism corpus "
        f"judge, else {ENGLISH_JUDGE} (free-form English), then keyword",
    )
    parser.add_argument(
        "--judge-url", help=f"OpenAI-compatible endpoint of a model judge ({', '.join(model_judges())})"
    )
    parser.add_argument(
        "--judge-model", help="model name served at --judge-url, or a local path/hub id of the judge model without it"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=defaults.max_new_tokens, help="tokens per answer (default %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="prompts per generate call (default %(default)s)"
    )
    parser.add_argument("--system-prompt", help="system turn before every prompt (default: none)")


def add_evaluate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `evaluate` to the `moe-defense` sub-command parsers (the result of `add_subparsers`)."""
    parser = subparsers.add_parser("evaluate", help=SUMMARY, description=f"{SUMMARY[0].upper()}{SUMMARY[1:]}.")
    add_run_arguments(parser)
    parser.set_defaults(run=run_evaluate)
    return parser


def judge_specs(
    names: Sequence[str], *, judge_url: str | None = None, judge_model: str | None = None
) -> list[JudgeSpec]:
    """Judge specs from --judge names; --judge-url/--judge-model configure the model judges among them.

    Validated here, before the model loads; the judges themselves are built once the model is known."""
    specs = []
    for name in dict.fromkeys(names):
        JUDGES.get(name)  # an unknown name fails here, naming the registered ones
        args: dict[str, Any] = {}
        if name in model_judges():
            if judge_model is None:
                raise ConfigError(
                    f"judge {name!r} grades with a judge model: pass --judge-url URL --judge-model NAME "
                    "(an OpenAI-compatible endpoint), or --judge-model PATH (a local model)."
                )
            args = {"url": judge_url, "model": judge_model} if judge_url else {"local_model": judge_model}
        specs.append(validated(JudgeSpec, {"name": name, "args": args}, f"judge {name!r}"))
    if (judge_url or judge_model) and not any(spec.name in model_judges() for spec in specs):
        raise ConfigError(
            f"--judge-url / --judge-model apply to model judges ({', '.join(model_judges())}); none was chosen with "
            "--judge."
        )
    return specs


def _generation_config(args: argparse.Namespace) -> GenerationConfig:
    settings = {
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "system_prompt": args.system_prompt,
    }
    return validated(GenerationConfig, settings, "generation settings", flag_style=True)


@dataclass
class PreparedRun:
    """Everything a run verb checks before the model loads: the prompts, the run directory, the settings a
    resume must match, the chat options."""

    prompt_set: PromptSet
    out: Path
    info: ProcessInfo
    extra_config: dict[str, Any]
    chat: dict[str, Any]  # LoadOptions' chat_template_kwargs and reasoning


@dataclass
class JudgedRun(PreparedRun):
    """A run that answers and judges (`evaluate`, `attack`): also its generation settings and judges."""

    gen_config: GenerationConfig
    judge_specs: list[JudgeSpec]

    def judges(self, loaded: LoadedModel) -> list[Judge]:
        """The judges, case folding following the loaded model's tokenizer."""
        return build_judges(self.judge_specs, lower_cased=loaded.lower_cased)


def prepare_run(args: argparse.Namespace, verb: str) -> PreparedRun:
    """Validate the data and run-directory arguments (no model is loaded here)."""
    if args.resume and args.out is None:
        raise ConfigError("--resume needs --out DIR: the run directory to continue.")
    prompt_set = load_prompts(
        args.data,
        split=args.split,
        limit=args.limit,
        seed=args.seed,
        prompt_column=args.prompt_column,
        data_file=args.data_file,
    )
    info = process_info()
    out = Path(args.out) if args.out else info.broadcast(default_out_dir(verb))
    data_args = {
        "data": args.data,
        "split": args.split,
        "data_file": args.data_file,
        "prompt_column": args.prompt_column,
        "limit": args.limit,
    }
    chat = {
        "chat_template_kwargs": key_values(args.chat_template_kwarg, "--chat-template-kwarg"),
        "reasoning": args.reasoning or "auto",
    }
    extra = {
        "data_args": data_args,
        "seed": args.seed,
        "dtype": args.dtype,
        "trust_remote_code": args.trust_remote_code,
        "revision": args.revision,
        **chat,
    }
    return PreparedRun(prompt_set, out, info, extra, chat)


def prepare_judged_run(args: argparse.Namespace, verb: str) -> JudgedRun:
    """`prepare_run` plus the generation settings and the judges (default: `default_judges` of --data)."""
    gen_config = _generation_config(args)
    judges = judge_specs(
        args.judge or default_judges(args.data), judge_url=args.judge_url, judge_model=args.judge_model
    )
    return JudgedRun(**vars(prepare_run(args, verb)), gen_config=gen_config, judge_specs=judges)


def load_for_run(args: argparse.Namespace, run: PreparedRun) -> LoadedModel:
    return load_model(args.model, load_options(args, device=run.info.device, **run.chat))


Run = TypeVar("Run", bound=PreparedRun)


def run_verb(
    verb: str,
    args: argparse.Namespace,
    body: Callable[[Run], dict[str, Any]],
    render: Callable[[dict[str, Any]], str] = summary_table,
    prepare: Callable[[argparse.Namespace, str], Run] = prepare_judged_run,
) -> int:
    """Prepare (`prepare_judged_run`, or `prepare_run` for a verb that does not judge), run `body`, print the
    summary; a known failure prints one line and returns 1, Ctrl-C returns 130 with the resume command."""
    run: PreparedRun | None = None
    try:
        run = prepare(args, verb)
        summary = body(run)
    except MoEDefenseError as error:
        print(f"moe-defense {verb}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        where = f" Finished work is saved; continue with --resume --out {run.out}." if run is not None else ""
        print(f"moe-defense {verb}: interrupted.{where}", file=sys.stderr)
        return 130
    if run.info.is_main:
        print(render(summary))
        print(f"\nrun directory: {run.out}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    def body(run: JudgedRun) -> dict[str, Any]:
        loaded = load_for_run(args, run)
        return evaluate(
            loaded,
            run.prompt_set,
            run.judges(loaded),
            gen_config=run.gen_config,
            out_dir=run.out,
            resume=args.resume,
            extra_config=run.extra_config,
            info=run.info,
        )

    return run_verb("evaluate", args, body)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m moe_defense.cli.evaluate evaluate ...`: the verb on its own, e.g. under `accelerate launch -m`."""
    parser = argparse.ArgumentParser(prog="moe-defense")
    add_evaluate_parser(parser.add_subparsers(dest="verb", metavar="VERB", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    exit_process(main())
