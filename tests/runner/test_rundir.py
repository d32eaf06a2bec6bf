"""The run directory contract: crash-safe appends, resume checks naming the differing keys, atomic files."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from moe_defense.errors import ConfigError, DataError
from moe_defense.runner import RunDir, atomic_write, default_out_dir, read_jsonl
from moe_defense.runner.rundir import exclusive

CONFIG = {"model": "tiny:mixtral", "generation": {"max_new_tokens": 4, "batch_size": 2}, "judges": ["keyword"]}


def record(prompt_id: str, attack: str = "none") -> dict:
    return {"prompt_id": prompt_id, "attack": attack, "response": "ok"}


def test_default_out_dir_is_verb_and_time():
    assert default_out_dir("evaluate", dt.datetime(2025, 3, 4, 5, 6, 7)) == Path("runs/evaluate-20250304-050607")


def test_an_unfinished_last_line_is_dropped_and_cut_off_before_appending(tmp_path):
    run = RunDir(tmp_path / "run")
    run.writer().append([record("a"), record("b")])
    with run.results_path.open("a") as handle:
        handle.write('{"prompt_id": "c", "attack": "no')  # killed mid-write
    assert [r["prompt_id"] for r in read_jsonl(run.results_path)] == ["a", "b"]
    assert run.finished() == {("a", "none"), ("b", "none")}
    run.writer().append([record("c")])  # a new writer repairs the tail first
    assert [r["prompt_id"] for r in read_jsonl(run.results_path)] == ["a", "b", "c"]
    assert run.results_path.read_text().count("\n") == 3


def test_a_damaged_finished_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(record("a")) + "\nnot json\n" + json.dumps(record("b")) + "\n")
    with pytest.raises(DataError, match="results.jsonl:2"):
        read_jsonl(path)


def test_a_used_directory_needs_resume(tmp_path):
    run = RunDir(tmp_path / "run")
    run.check(CONFIG, resume=False)  # absent: fine
    run.write_config(CONFIG)
    with pytest.raises(ConfigError, match="--resume"):
        run.check(CONFIG, resume=False)
    run.check(CONFIG, resume=True)


def test_resume_with_another_config_names_the_differing_keys(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_config(CONFIG)
    changed = {**CONFIG, "generation": {"max_new_tokens": 8, "batch_size": 2}, "judges": ["keyword", "organism"]}
    with pytest.raises(ConfigError) as error:
        run.check(changed, resume=True)
    message = str(error.value)
    assert "generation.max_new_tokens: 4 -> 8" in message and "judges" in message
    assert "batch_size" not in message


def test_config_yaml_holds_the_run_and_its_provenance(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_config(CONFIG)
    document = yaml.safe_load(run.config_path.read_text())
    assert document["run"] == CONFIG
    assert {"torch", "transformers", "moe-defense"} <= set(document["provenance"]["versions"])
    assert "git_sha" in document["provenance"]


def test_merge_folds_rank_files_in_prompt_order(tmp_path):
    run = RunDir(tmp_path / "run")
    run.writer(0).append([record("p0"), record("p2")])
    run.writer(1).append([record("p1")])
    merged = run.merge({"p0": 0, "p1": 1, "p2": 2})
    assert [r["prompt_id"] for r in merged] == ["p0", "p1", "p2"]
    assert [r["prompt_id"] for r in read_jsonl(run.results_path)] == ["p0", "p1", "p2"]
    assert sorted(p.name for p in run.path.iterdir()) == ["results.jsonl"]


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write(path, "old")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_exclusive_lock_is_held_once_and_freed_when_its_holder_dies(tmp_path):
    lock = tmp_path / "cells" / "a.lock"
    with exclusive(lock) as held:
        assert held
        with exclusive(lock, wait=False) as second:
            assert not second  # another holder (here: another open file) waits or is turned away
    script = textwrap.dedent(f"""
        import pathlib, time
        from moe_defense.runner.rundir import exclusive
        with exclusive(pathlib.Path({str(lock)!r})):
            print("held", flush=True)
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with exclusive(lock, wait=False) as taken:
            assert not taken
        holder.kill()
        holder.wait(timeout=30)
        with exclusive(lock, wait=False) as taken:
            assert taken  # a killed holder leaves no stale lock
    finally:
        holder.kill()
