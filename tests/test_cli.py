"""The top-level command line: every verb is listed, and listing them imports no ML library."""

from __future__ import annotations

import subprocess
import sys

from moe_defense.cli import HEAVY_VERBS, build_parser


def test_help_lists_every_verb_without_importing_torch():
    code = (
        "import sys; from moe_defense.cli import build_parser; text = build_parser([]).format_help(); "
        "print(text); print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for verb in ("inspect", "organism", "evaluate", "attack", "score", "harden", "demo", "ablate", "report"):
        assert verb in output
    assert output.strip().endswith("False False")


def test_a_heavy_verb_asked_for_is_built_in_full():
    argvs = {
        "evaluate": ["evaluate", "organism", "--data", "demo-harmful"],
        "attack": ["attack", "organism", "--data", "demo-harmful", "--attack", "fsour"],
        "score": ["score", "organism", "--data", "demo-harmful"],
    }
    assert set(argvs) == set(HEAVY_VERBS)
    for verb, argv in argvs.items():
        args = build_parser(argv).parse_args(argv)
        assert args.verb == verb and args.run.__module__ == HEAVY_VERBS[verb][0]


def test_organism_build_with_an_architecture_its_preset_cannot_build_is_a_clear_error(capsys):
    from moe_defense.cli import main

    assert main(["organism", "build", "--preset", "smol", "--arch", "olmoe"]) == 1
    error = capsys.readouterr().err
    assert "upcycles into" in error and "olmoe" in error and "Traceback" not in error
