"""The run directory contract (docs/architecture.md): config.yaml, results.jsonl, summary.json, report.md.

Crash safety: records are appended one line at a time with flush + fsync, every other file is written
to a temporary file and moved into place with `os.replace`. A line is finished only once its newline
is on disk, so a kill mid-write leaves at most one unfinished last line, which a resume drops (and cuts
off the file) before appending. A resume compares the new run config with the stored one and refuses
any difference, naming the keys, so one results file never mixes two configurations.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

from moe_defense.errors import ConfigError, DataError

CONFIG = "config.yaml"
RESULTS = "results.jsonl"
SUMMARY = "summary.json"
REPORT = "report.md"
RANK_RESULTS_GLOB = "results.rank*.jsonl"
VERSIONED_PACKAGES = ("moe-defense", "torch", "transformers", "accelerate", "datasets", "pydantic", "trl")

RecordKey = tuple[str, str]  # (prompt id, attack)


def default_out_dir(verb: str, now: dt.datetime | None = None) -> Path:
    """`runs/<verb>-<YYYYmmdd-HHMMSS>`, relative to the working directory."""
    return Path("runs") / f"{verb}-{(now or dt.datetime.now()).strftime('%Y%m%d-%H%M%S')}"


def record_key(record: Mapping[str, Any]) -> RecordKey:
    return (str(record["prompt_id"]), str(record["attack"]))


def provenance() -> dict[str, Any]:
    """What produced a run, so any number can be replayed: library versions and the git commit."""
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"versions": versions, "git_sha": _git_sha(), "created": dt.datetime.now().isoformat(timespec="seconds")}


def _git_sha() -> str | None:
    """HEAD of the checkout the package runs from; None outside a git checkout (e.g. a wheel install)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and sha else None


def atomic_write(path: Path, content: str | bytes) -> None:
    """Write `content` (text as UTF-8) to a temporary file next to `path`, fsync it, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content.encode("utf-8") if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat or {prefix: {}}
    return {prefix: value}


def config_differences(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """`key: stored -> new` for every dotted key whose value differs (missing keys count as None)."""
    old, cur = _flatten(stored), _flatten(new)
    return [
        f"{key}: {old.get(key)!r} -> {cur.get(key)!r}"
        for key in sorted(old.keys() | cur.keys())
        if old.get(key) != cur.get(key)
    ]


def read_jsonl(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Finished records of a JSONL file; an unfinished last line (no newline: killed mid-write) is dropped.

    With `repair`, the unfinished tail is also cut off the file, so the next append starts on a clean
    line. A finished line that is not JSON is corruption, not an interruption: that raises.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):
        with path.open("r+b") as handle:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
    records = []
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as error:
            raise DataError(
                f"{path}:{number} is not a JSON record ({error}); the file was edited or damaged. "
                "Remove that line to resume, or start a new run directory."
            ) from error
    return records


class RecordWriter:
    """Appends records to one JSONL file, each flushed and fsynced before the next is written."""

    def __init__(self, path: Path) -> None:
        read_jsonl(path, repair=True)
        self.path = path

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())


class RunDir:
    """One run directory: its config, result records, summary and report."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS

    def check(self, run_config: Mapping[str, Any], *, resume: bool) -> None:
        """Refuse to mix runs: a used directory needs `resume`, and a resume needs the same config.

        Read-only, so every process of a data-parallel run can call it before any process writes.
        """
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise ConfigError(f"run directory {str(self.path)!r} is a file. Choose another --out.")
        used = self.config_path.exists() or self.results_path.exists() or any(self.path.glob(RANK_RESULTS_GLOB))
        if not used:
            return
        if not resume:
            raise ConfigError(
                f"run directory {str(self.path)!r} already holds a run. Pass --resume to continue it, or choose "
                "another --out."
            )
        if not self.config_path.exists():
            raise ConfigError(
                f"cannot resume {str(self.path)!r}: it has results but no {CONFIG}. Start a new run directory."
            )
        stored = self.stored_config()
        differences = config_differences(stored, json.loads(json.dumps(run_config)))
        if differences:
            raise ConfigError(
                f"cannot resume {str(self.path)!r} with a different config ({'; '.join(differences)}). "
                "Rerun with the original settings, or start a new run directory with --out."
            )

    def stored_config(self) -> dict[str, Any]:
        """The `run` section of config.yaml: the settings a resume must match."""
        try:
            document = yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise DataError(f"{self.config_path} is not valid YAML: {error}") from error
        return document.get("run", {})

    def write_config(self, run_config: Mapping[str, Any]) -> None:
        """config.yaml = `run` (compared on resume) + `provenance` (versions, git SHA: recorded, not compared).

        A resumed run keeps the provenance of the run that started it; the config is equal anyway.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        if self.config_path.exists():
            return
        document = {"run": json.loads(json.dumps(run_config)), "provenance": provenance()}
        atomic_write(self.config_path, yaml.safe_dump(document, sort_keys=False, allow_unicode=True))

    def result_files(self) -> list[Path]:
        return [self.results_path, *sorted(self.path.glob(RANK_RESULTS_GLOB))]

    def records(self) -> list[dict[str, Any]]:
        """Every finished record, merged or still in a per-rank file; the first copy of a key wins."""
        seen: dict[RecordKey, dict[str, Any]] = {}
        for path in self.result_files():
            for record in read_jsonl(path):
                seen.setdefault(record_key(record), record)
        return list(seen.values())

    def finished(self) -> set[RecordKey]:
        """(prompt id, attack) pairs already answered and judged: a resume skips them."""
        return {record_key(record) for record in self.records()}

    def writer(self, rank: int | None = None) -> RecordWriter:
        """The append-only file of this process: results.jsonl, or results.rank{r}.jsonl in a data-parallel run."""
        self.path.mkdir(parents=True, exist_ok=True)
        return RecordWriter(self.results_path if rank is None else self.path / f"results.rank{rank}.jsonl")

    def merge(self, order: Mapping[str, int]) -> list[dict[str, Any]]:
        """Fold the per-rank files into results.jsonl (sorted by prompt position, then attack), atomically,
        then delete them; a kill before the replace leaves every record where it was."""
        records = sorted(self.records(), key=lambda r: (order.get(str(r["prompt_id"]), len(order)), str(r["attack"])))
        rank_files = self.result_files()[1:]
        atomic_write(self.results_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        for path in rank_files:
            path.unlink()
        return records

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write(self.path / SUMMARY, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")

    def read_summary(self) -> dict[str, Any]:
        return json.loads((self.path / SUMMARY).read_text(encoding="utf-8"))

    def write_report(self, text: str) -> None:
        atomic_write(self.path / REPORT, text)


@contextlib.contextmanager
def exclusive(path: Path, wait: bool = True) -> Iterator[bool]:
    """An advisory file lock: yields True when held, False when another process holds it and `wait` is off.
    The kernel drops it when the holder dies, so a killed run never leaves a stale lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
