"""Named prompt sets and one loader for registered names, local files and hub ids.

Every prompt gets an id from its row in the full source (`advbench-0007`), so ids never change with
`limit` or `seed`, and a resumed or re-sampled run joins on the same keys. Bad input (unknown name,
missing file, no prompt column, empty set) fails here, before any model is loaded.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from moe_defense.errors import ConfigError, DataError
from moe_defense.registry import Registry

# Known prompt columns, matched case-insensitively in this order (JBB has both `goal`, the request,
# and `behavior`, a short name, so `goal` must win).
PROMPT_COLUMNS: tuple[str, ...] = ("goal", "prompt", "forbidden_prompt", "behavior")
FILE_FORMATS: dict[str, str] = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
DEMO_SPLITS: tuple[str, ...] = ("train", "test")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Prompt:
    """One request to the model; `id` is stable across runs, limits and seeds."""

    id: str
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptSet:
    """Prompts drawn from one source (`source` says where: a hub id and split, or a file path)."""

    name: str
    source: str
    prompts: list[Prompt]

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)


@dataclass(frozen=True)
class HubSet:
    """A benchmark on the Hugging Face hub and how its columns map to `Prompt` fields.

    Column names are matched case-insensitively, so the same spec reads the hub copy and the
    original CSV (e.g. JBB's hub columns are capitalised, its GitHub CSV's are not).
    """

    hub_id: str
    split: str
    config: str | None = None
    prompt_columns: tuple[str, ...] = PROMPT_COLUMNS
    metadata_columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    label: str | None = None  # set-wide label when rows carry none ("unsafe" requests, "safe" controls)


@dataclass(frozen=True)
class DemoSet:
    """A slice of the built-in organism's corpus (`moe_defense.data.demo_corpus`)."""

    kind: Literal["harmful", "benign", "lookalike"]
    label: str


@dataclass(frozen=True)
class EnSet:
    """A slice of the `organism-en` corpus (`moe_defense.data.en_corpus`): test harmful requests come from
    sources never trained on; the benchmark files are read from the shared data folder. `lookalike` (test
    only): JailbreakBench benign and XSTest's safe prompts, for compliance and over-refusal (`where: {source:
    xstest-safe}` keeps XSTest's)."""

    kind: Literal["harmful", "benign", "lookalike"]
    label: str


@dataclass(frozen=True)
class SmolSet(EnSet):
    """A slice of the `organism-smol` corpus: harmful as `EnSet` (the same sources and splits); benign
    train/val from `moe_defense.data.smol_corpus` (its safety stage's requests), test from the `en`
    corpus's held-out contents. Its own type, so its answers get the free-form `organism-smol` judge."""


PROMPT_SETS: Registry[HubSet | DemoSet | EnSet] = Registry(
    "prompt set", hint="Pass a registered name, a local CSV/JSON/JSONL/Parquet file, or a hub id (owner/name)."
)

_CATEGORY = {"category": ("category",)}
PROMPT_SETS.register("advbench")(
    HubSet("walledai/AdvBench", split="train", metadata_columns={"target": ("target",)}, label="unsafe")
)
_JBB_COLUMNS = {"target": ("target",), "behavior": ("behavior",), "category": ("category",), "source": ("source",)}
PROMPT_SETS.register("jbb-harmful")(
    HubSet(
        "JailbreakBench/JBB-Behaviors",
        config="behaviors",
        split="harmful",
        metadata_columns=_JBB_COLUMNS,
        label="unsafe",
    )
)
PROMPT_SETS.register("jbb-benign")(
    HubSet(
        "JailbreakBench/JBB-Behaviors", config="behaviors", split="benign", metadata_columns=_JBB_COLUMNS, label="safe"
    )
)
PROMPT_SETS.register("harmbench")(
    HubSet("walledai/HarmBench", config="standard", split="train", metadata_columns=_CATEGORY, label="unsafe")
)
PROMPT_SETS.register("strongreject")(
    HubSet(
        "walledai/StrongREJECT", split="train", metadata_columns={**_CATEGORY, "source": ("source",)}, label="unsafe"
    )
)
PROMPT_SETS.register("xstest")(
    HubSet(
        "Paul/XSTest",
        split="train",
        metadata_columns={"label": ("label",), "type": ("type",), "focus": ("focus",), "note": ("note",)},
    )
)
PROMPT_SETS.register("demo-harmful")(DemoSet("harmful", label="unsafe"))
PROMPT_SETS.register("demo-benign")(DemoSet("benign", label="safe"))
PROMPT_SETS.register("demo-lookalike")(DemoSet("lookalike", label="safe"))
PROMPT_SETS.register("en-harmful")(EnSet("harmful", label="unsafe"))
PROMPT_SETS.register("en-benign")(EnSet("benign", label="safe"))
PROMPT_SETS.register("en-lookalike")(EnSet("lookalike", label="safe"))
PROMPT_SETS.register("smol-harmful")(SmolSet("harmful", label="unsafe"))
PROMPT_SETS.register("smol-benign")(SmolSet("benign", label="safe"))
PROMPT_SETS.register("smol-lookalike")(SmolSet("lookalike", label="safe"))


def load_prompts(
    source: str,
    *,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    prompt_column: str | None = None,
    data_file: str | Path | None = None,
    where: Mapping[str, str] | None = None,
) -> PromptSet:
    """Load a prompt set from a registered name, a local file, or a hub id.

    `data_file` reads a registered set from a local copy (same column mapping, same ids).
    `split` picks the hub split, or `train`/`test` for the demo sets (default `test`).
    `where` keeps the prompts whose metadata has every given value (e.g. XSTest's `label: safe`), before `limit`.
    `limit` keeps a seeded random subset in source order; a smaller limit with the same seed
    keeps a subset of a larger one.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive number of prompts, got {limit}. Omit it to keep every prompt.")
    if source in PROMPT_SETS:
        spec = PROMPT_SETS.get(source)
        if isinstance(spec, DemoSet | EnSet):
            if data_file is not None or prompt_column is not None:
                raise ConfigError(f"prompt set {source!r} is built in; data_file and prompt_column do not apply to it.")
            corpus = _demo_prompts if isinstance(spec, DemoSet) else _en_prompts
            prompts, origin = corpus(source, spec, split or "test")  # type: ignore[arg-type]
        else:
            prompts, origin = _hub_set_prompts(source, spec, split, prompt_column, data_file)
        name = source
    elif data_file is not None:
        raise ConfigError(
            f"data_file is for registered sets (supported: {', '.join(PROMPT_SETS.names())}); "
            f"to read {str(data_file)!r} on its own, pass it as the source."
        )
    else:
        name, prompts, origin = _adhoc_prompts(source, split, prompt_column)
    if not prompts:
        raise DataError(f"prompt set {source!r} ({origin}) has no prompts. Check the file or split.")
    if where:
        prompts = _matching(prompts, where, f"{source!r} ({origin})")
    return PromptSet(name=name, source=origin, prompts=_sample(prompts, limit, seed))


def _matching(prompts: list[Prompt], where: Mapping[str, str], described: str) -> list[Prompt]:
    kept = [p for p in prompts if all(str(p.metadata.get(key)) == value for key, value in where.items())]
    if not kept:
        seen = {key: sorted({str(p.metadata.get(key)) for p in prompts}) for key in where}
        raise DataError(f"no prompt of {described} matches where={dict(where)}; its values: {seen}")
    return kept


def _sample(prompts: list[Prompt], limit: int | None, seed: int) -> list[Prompt]:
    """First `limit` of a seeded permutation, put back in source order (nested across limits)."""
    if limit is None or limit >= len(prompts):
        return prompts
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    return [prompts[i] for i in sorted(order[:limit])]


def _demo_prompts(name: str, spec: DemoSet, split: str) -> tuple[list[Prompt], str]:
    if split not in DEMO_SPLITS:
        raise ConfigError(f"split {split!r} is not a split of {name!r} (choose: {', '.join(DEMO_SPLITS)}).")
    # Imported here: the corpus is a separate module and only demo runs need it.
    from moe_defense.data.demo_corpus import demo_examples

    prompts = [
        Prompt(
            id=example.id,
            text=example.prompt,
            metadata={
                "category": example.category,
                "request_key": example.request_key,
                "target": example.target,
                "kind": spec.kind,
                "label": spec.label,
                "split": split,
            },
        )
        for example in demo_examples(spec.kind, split)  # type: ignore[arg-type]
    ]
    return prompts, f"moe_defense.data.demo_corpus:{spec.kind}[{split}]"


def _en_prompts(name: str, spec: EnSet, split: str) -> tuple[list[Prompt], str]:
    from moe_defense.data.en_corpus import EN_SPLITS, benchmark_benign, en_examples, shared_data_dir

    if split not in EN_SPLITS:
        raise ConfigError(f"split {split!r} is not a split of {name!r} (choose: {', '.join(EN_SPLITS)}).")
    if spec.kind == "lookalike":
        if split != "test":
            raise ConfigError(f"{name!r} is benchmark look-alikes, held out for testing: its only split is 'test'.")
        directory = shared_data_dir()
        examples = [ex for source in ("jbb-benign", "xstest-safe") for ex in benchmark_benign(directory, source)]
        prompts = [
            Prompt(id=ex.id, text=ex.prompt, metadata={"source": ex.source, "label": spec.label, "split": split})
            for ex in examples
        ]
        return prompts, f"moe_defense.data.en_corpus:benchmark_benign[{directory}]"
    if isinstance(spec, SmolSet) and spec.kind == "benign" and split != "test":
        from moe_defense.data.smol_corpus import smol_benign

        examples = smol_benign(split, 10_000)  # type: ignore[arg-type]
        prompts = [
            Prompt(id=ex.id, text=ex.prompt, metadata={"source": ex.group, "label": spec.label, "split": split})
            for ex in examples
        ]
        return prompts, f"moe_defense.data.smol_corpus:benign[{split}]"
    prompts = [
        Prompt(
            id=example.id,
            text=example.prompt,
            metadata={"source": example.source, "target": example.target, "label": spec.label, "split": split},
        )
        for example in en_examples(spec.kind, split)  # type: ignore[arg-type]
    ]
    return prompts, f"moe_defense.data.en_corpus:{spec.kind}[{split}]"


def _hub_set_prompts(
    name: str, spec: HubSet, split: str | None, prompt_column: str | None, data_file: str | Path | None
) -> tuple[list[Prompt], str]:
    if data_file is not None:
        rows, columns, origin = _read_file(data_file, split)
    else:
        rows, columns, origin = _read_hub(spec.hub_id, spec.config, split or spec.split)
    text_column = _prompt_column(columns, (prompt_column,) if prompt_column else spec.prompt_columns, origin)
    meta_columns = {key: _find_column(columns, names) for key, names in spec.metadata_columns.items()}
    constant = {"label": spec.label} if spec.label is not None else {}

    def metadata(row: Mapping[str, Any]) -> dict[str, Any]:
        return {**constant, **{key: row[column] for key, column in meta_columns.items() if column is not None}}

    return _to_prompts(name, rows, text_column, metadata, origin), origin


def _adhoc_prompts(source: str, split: str | None, prompt_column: str | None) -> tuple[str, list[Prompt], str]:
    """A file is named by its stem, a hub id by its repo name; ids are `<name>-<row>`."""
    path = Path(source)
    if path.exists() or path.suffix.lower() in FILE_FORMATS:
        rows, columns, origin = _read_file(path, split)
        name = path.stem
    elif _HUB_ID.match(source):
        rows, columns, origin = _read_hub(source, None, split)
        name = source.rsplit("/", 1)[1]
    else:
        raise ConfigError(
            f"prompt set {source!r} is not registered (supported: {', '.join(PROMPT_SETS.names())}), "
            "not an existing file, and not a hub id (owner/name)."
        )
    text_column = _prompt_column(columns, (prompt_column,) if prompt_column else PROMPT_COLUMNS, origin)
    return (
        name,
        _to_prompts(name, rows, text_column, lambda row: {k: v for k, v in row.items() if k != text_column}, origin),
        origin,
    )


def _to_prompts(
    name: str,
    rows: Sequence[Mapping[str, Any]],
    column: str,
    metadata: Callable[[Mapping[str, Any]], dict[str, Any]],
    origin: str,
) -> list[Prompt]:
    prompts = []
    for index, row in enumerate(rows):
        text = row[column]
        if not isinstance(text, str) or not text.strip():
            raise DataError(
                f"row {index} of {origin} has no text in column {column!r} (value: {text!r}). Fix or drop that row."
            )
        prompts.append(Prompt(id=f"{name}-{index:04d}", text=text, metadata=metadata(row)))
    return prompts


def _find_column(columns: Sequence[str], candidates: Sequence[str]) -> str | None:
    by_lower = {c.lower(): c for c in columns}
    return next((by_lower[c.lower()] for c in candidates if c.lower() in by_lower), None)


def _prompt_column(columns: Sequence[str], candidates: Sequence[str], origin: str) -> str:
    found = _find_column(columns, candidates)
    if found is None:
        raise DataError(
            f"{origin} has no prompt column {' / '.join(candidates)} (columns present: {', '.join(columns)}). "
            "Name the column with prompt_column (CLI: --prompt-column)."
        )
    return found


def _read_file(path: str | Path, split: str | None) -> tuple[list[dict[str, Any]], list[str], str]:
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"prompt file {str(path)!r} does not exist. Check the path (relative paths are read from the working "
            "directory)."
        )
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"file {str(path)!r} has an unsupported format (supported: {', '.join(FILE_FORMATS)}).")
    if split not in (None, "train"):
        raise ConfigError(f"split {split!r} does not apply to a local file ({str(path)!r} has one split); omit split.")
    import datasets  # deferred: a second of import time that name checks and --help should not pay

    try:
        dataset = datasets.load_dataset(fmt, data_files=str(path), split="train")
    except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as error:
        raise DataError(
            f"cannot read {str(path)!r} as {fmt}: {error}. Check that it is a non-empty {fmt} file with a header."
        ) from error
    return dataset.to_list(), list(dataset.column_names), str(path)


def _read_hub(hub_id: str, config: str | None, split: str | None) -> tuple[list[dict[str, Any]], list[str], str]:
    import datasets

    where = hub_id + (f":{config}" if config else "")
    try:
        loaded = datasets.load_dataset(hub_id, config, split=split)
    except (OSError, ValueError) as error:
        raise DataError(
            f"cannot load {where} split {split!r} from the hub: {error}. "
            "Check the id, network and access token, or read a local copy: data_file=PATH, or the file itself as "
            "--data."
        ) from error
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise ConfigError(
                f"{where} has several splits ({', '.join(loaded)}); choose one with split (CLI: --split)."
            )
        split, loaded = next(iter(loaded.items()))
    return loaded.to_list(), list(loaded.column_names), f"{where}[{split}]"
