"""Utility a release sign-off reads: lm-evaluation-harness tasks (mmlu, gsm8k, ifeval, ...) on the model in memory.

`verify.utility_tasks` runs through lm-eval's Python API (`simple_evaluate` over an `HFLM` wrapping the
already-loaded model and tokenizer: nothing is re-loaded, the hardened phase is scored with its route
guards attached) on the original and the hardened model. Each phase writes `utility-tasks/lm_eval.json`
(lm-eval's own results) in its directory and keeps per task its numeric metrics, their standard errors
and the number of examples, which summary.json and the report show beside safety. Needs the `lm-eval`
extra; a recipe naming tasks without it fails at validation.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moe_defense.errors import ConfigError
from moe_defense.models import LoadedModel
from moe_defense.runner.process import ProcessInfo
from moe_defense.runner.rundir import atomic_write

ROW = "utility-tasks"  # the suite's row (and directory) of the lm-eval scores
RESULTS = "lm_eval.json"


@functools.cache
def task_manager(tasks: tuple[str, ...], include_path: str | None):
    """lm-eval's TaskManager: only `include_path`'s tasks when they are all that is asked for (indexing
    lm-eval's ~15k built-in tasks takes ~30 s), else the built-in ones as well."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        own = TaskManager(include_path=include_path, include_defaults=False)
        if set(tasks) <= set(own.all_tasks):
            return own
    return TaskManager(include_path=include_path)


@dataclass(frozen=True)
class UtilityTasks:
    """The lm-eval tasks of a recipe and how they are run."""

    tasks: tuple[str, ...]
    include_path: str | None = None
    limit: int | None = None
    batch_size: int = 8
    seed: int = 0

    def check(self) -> None:
        """Every task is one lm-eval knows: an unknown name fails here, before any model loads (the extra itself
        is checked at recipe validation)."""
        known = set(task_manager(self.tasks, self.include_path).all_tasks)
        unknown = [task for task in self.tasks if task not in known]
        if unknown:
            where = f" or in {self.include_path}" if self.include_path else ""
            raise ConfigError(
                f"verify.utility_tasks: {unknown} are not lm-eval tasks (built in{where}; list them with "
                "`lm-eval ls tasks`)"
            )

    def run(self, loaded: LoadedModel, directory: Path, *, info: ProcessInfo, resume: bool) -> dict[str, Any]:
        """The tasks' scores on `loaded` (rank 0 evaluates, every rank gets them); read back on resume."""
        path = directory / ROW / RESULTS
        scores = None
        if info.is_main:
            if not (resume and path.is_file()):
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, json.dumps(self._evaluate(loaded), indent=2, default=str) + "\n")
            scores = scores_of(json.loads(path.read_text()))
        return info.broadcast(scores)

    def _evaluate(self, loaded: LoadedModel) -> dict[str, Any]:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        training = loaded.model.training
        loaded.model.eval()
        try:
            results = simple_evaluate(
                model=HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=self.batch_size),
                tasks=list(self.tasks),
                task_manager=task_manager(self.tasks, self.include_path),
                limit=self.limit,
                log_samples=False,
                # no process-wide reseeding (random / numpy / torch stay as they were); few-shot draws are seeded
                random_seed=None,
                numpy_random_seed=None,
                torch_random_seed=None,
                fewshot_random_seed=self.seed,
            )
        finally:
            loaded.model.train(training)
        kept = ("results", "n-samples", "n-shot", "versions", "lm_eval_version")  # not the environment dump
        return {key: results[key] for key in kept if key in results}  # results is None only off rank 0


def scores_of(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task: numeric metrics (`acc`, `exact_match,strict-match`, ...), their stderr and the examples scored."""
    scores = {}
    for task, values in results["results"].items():
        metrics, stderr = {}, {}
        for key, value in values.items():
            if "," not in key or not isinstance(value, int | float):
                continue  # alias, name, sample_len; "N/A" stderr
            metric, _, filter_name = key.partition(",")
            name = metric if filter_name == "none" else f"{metric},{filter_name}"
            if metric.endswith("_stderr"):
                stderr[name.replace("_stderr", "", 1)] = value
            else:
                metrics[name] = value
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        scores[task] = {"metrics": metrics, "stderr": stderr, "n": n}
    return scores
