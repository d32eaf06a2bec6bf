"""The `score` verb: it takes only the flags it uses, refuses a used --out unless resuming, and a resume
recomputes nothing."""

from __future__ import annotations

import json

import pytest

from moe_defense.cli import build_parser, main

ARGV = ["score", "tiny:mixtral", "--data", "demo-harmful", "--limit", "2", "--samples", "1"]


@pytest.mark.parametrize("flag", [["--judge", "keyword"], ["--max-new-tokens", "4"], ["--batch-size", "2"]])
def test_score_has_no_judge_or_generation_flags(flag, capsys):
    argv = [*ARGV, *flag]
    with pytest.raises(SystemExit) as exit_:
        build_parser(argv).parse_args(argv)
    assert exit_.value.code == 2 and f"unrecognized arguments: {flag[0]}" in capsys.readouterr().err


def test_score_refuses_a_used_out_and_resumes_without_recomputing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main([*ARGV, "--out", str(out)]) == 0
    first = capsys.readouterr().out
    payload = json.loads((out / "rosais.json").read_text())
    assert payload["n_prompts"] == 2 and sorted(payload["ranking"]) == sorted(int(k) for k in payload["rosais"])
    assert "scores: " in first and "RoSais" in first

    assert main([*ARGV, "--out", str(out)]) == 1
    assert "already holds a run. Pass --resume" in capsys.readouterr().err
    assert json.loads((out / "rosais.json").read_text()) == payload  # nothing overwritten

    def must_not_score(*args, **kwargs):
        pytest.fail("a finished score was recomputed on --resume")

    monkeypatch.setattr("moe_defense.cli.attack.rosais", must_not_score)
    assert main([*ARGV, "--out", str(out), "--resume"]) == 0
    assert capsys.readouterr().out.split("\n\nrun directory")[0] == first.split("\n\nrun directory")[0]
    assert main([*ARGV[:-2], "--samples", "2", "--out", str(out), "--resume"]) == 1
    assert "rosais.samples: 1 -> 2" in capsys.readouterr().err
