"""Every `moe-defense ...` command in README.md and docs/ parses with the real CLI, and the recipes, grids and
attack settings it names validate; no model is loaded. A removed or misspelt flag fails here."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from moe_defense.cli import build_parser, harden_overrides
from moe_defense.errors import MoEDefenseError

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
# `deepspeed ... train/harden.py --recipe R ...` and `accelerate launch ... train/harden.py ...` run `harden R ...`
LAUNCHED = re.compile(r"\btrain/harden\.py\b(?P<rest>.*)$")
# a placeholder the reader replaces: RECIPE, MODEL_ID, MY_RECIPE.yaml, <run>
PLACEHOLDER = re.compile(r"[A-Z]{2,}|<[^>]+>")


@dataclass(frozen=True)
class Command:
    where: str
    argv: list[str]


def fenced_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line inside a fenced code block, continuation lines (`\\`) joined."""
    lines, inside, pending, start = [], False, "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        if not pending:
            start = number
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append((start, pending + stripped))
        pending = ""
    return lines


def commands_in(text: str, where: str) -> list[Command]:
    """The `moe-defense` command lines of a markdown text (comments and a trailing `&` dropped)."""
    found = []
    for number, line in fenced_lines(text):
        line = line.strip().removeprefix("$ ")
        launched = LAUNCHED.search(line)
        if launched:
            words = shlex.split(launched["rest"], comments=True)
            if "--recipe" in words:  # as train/harden.py rewrites it
                i = words.index("--recipe")
                words = [words[i + 1], *words[:i], *words[i + 2 :]]
            found.append(Command(f"{where}:{number}", ["harden", *words]))
            continue
        if not line.startswith("moe-defense "):
            continue
        words = shlex.split(line, comments=True)
        if words and words[-1] == "&":
            words = words[:-1]
        found.append(Command(f"{where}:{number}", words[1:]))
    return found


def all_commands() -> list[Command]:
    return [c for path in DOCS for c in commands_in(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))]


COMMANDS = all_commands()


def parse(argv: list[str], capsys: pytest.CaptureFixture[str]):
    """The real `moe-defense` parser on `argv`; an argparse error becomes a test failure naming it."""
    try:
        return build_parser(argv).parse_args(argv)
    except SystemExit as exit_:
        error = capsys.readouterr().err.strip().splitlines()
        reason = error[-1] if error else exit_
        raise AssertionError(f"`moe-defense {shlex.join(argv)}` does not parse: {reason}") from None


def is_placeholder(ref: str) -> bool:
    return bool(PLACEHOLDER.search(ref))


def check_recipe(args) -> None:
    """What `_harden` checks before any model loads: the recipe, with the command's overrides."""
    from moe_defense.recipe import find_recipe, load_recipe

    try:
        find_recipe(args.recipe, REPO)
    except MoEDefenseError:
        if is_placeholder(args.recipe):
            return  # an illustrative RECIPE the reader supplies
        raise
    load_recipe(args.recipe, harden_overrides(args), base=REPO)


def check_grid(args) -> None:
    from moe_defense.ablate import load_grid

    load_grid(args.grid, args.reduced, args.seed)  # every cell's recipe validated


def check_attack(args) -> None:
    from moe_defense.cli.attack import attack_spec

    attack_spec(args).build()  # every point of the sweep is a valid config of a registered attack


def check_organism(args) -> None:
    from moe_defense.organism import OrganismConfig

    OrganismConfig.for_preset(args.preset, args.arch, seed=args.seed)


CHECKS = {"harden": check_recipe, "demo": check_recipe, "ablate": check_grid, "attack": check_attack}


def validate(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(argv, capsys)
    check = CHECKS.get(args.verb)
    if args.verb == "organism" and args.organism_verb == "build":
        check = check_organism
    if check is None:
        return
    try:
        check(args)
    except MoEDefenseError as error:
        if "pip install 'moe-defense[" in str(error):
            pytest.skip(f"needs an optional extra: {error}")
        raise AssertionError(f"`moe-defense {shlex.join(argv)}`: {error}") from error


def test_the_docs_hold_commands():
    verbs = {c.argv[0] for c in COMMANDS}
    assert len(COMMANDS) >= 15, [c.where for c in COMMANDS]
    assert {"harden", "attack", "evaluate", "ablate", "patch", "inspect"} <= verbs, verbs


def test_readme_states_the_install_and_ci_test_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    ci_line = 'pip install -e ".[cpu,test]" && ruff check . && python -m pytest -q'
    assert ci_line in ci
    assert ci_line in readme
    assert 'pip install -e ".[cpu]" && moe-defense demo' in readme
    assert 'pip install -e ".[cpu,test]" && python -m pytest -q' in readme


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_documented_command_parses_and_validates(command, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # relative recipe and grid paths as a reader in the checkout runs them
    validate(command.argv, capsys)


REMOVED_FLAGS = [
    ["--force-decode"],
    ["--restarts", "5"],
    ["--in-loop-judge", "organism"],
    ["--budget-sweep", "1,2,4"],
    ["--budget-strategy", "best"],
    ["--n", "2"],
    ["--selection", "rosais"],
]


@pytest.mark.parametrize("flag", REMOVED_FLAGS, ids=[f[0] for f in REMOVED_FLAGS])
def test_a_removed_flag_fails(flag, capsys):
    argv = ["attack", "organism", "--attack", "fsour", "--data", "demo-harmful", *flag]
    with pytest.raises(AssertionError, match="does not parse"):
        validate(argv, capsys)


def test_an_unknown_flag_in_a_doc_fails(capsys):
    (command,) = commands_in("```bash\nmoe-defense harden demo \\\n  --out runs/x --no-such-flag\n```\n", "snippet.md")
    assert command.argv == ["harden", "demo", "--out", "runs/x", "--no-such-flag"]
    with pytest.raises(AssertionError, match="unrecognized arguments: --no-such-flag"):
        validate(command.argv, capsys)


def test_an_unknown_attack_field_fails(capsys):
    argv = ["attack", "organism", "--attack", "fsour", "--data", "demo-harmful", "--attack-arg", "force_decod=true"]
    with pytest.raises(AssertionError, match="force_decod"):
        validate(argv, capsys)


def test_a_missing_packaged_recipe_fails(capsys):
    with pytest.raises(AssertionError, match="neither a file nor a packaged recipe"):
        validate(["harden", "models/olmo"], capsys)


def test_a_stale_recipe_key_fails(tmp_path, capsys):
    recipe = (REPO / "moe_defense" / "recipes" / "demo.yaml").read_text(encoding="utf-8")
    stale = tmp_path / "stale.yaml"
    stale.write_text(recipe.replace("verify:\n", "verify:\n  budgets: [2, 8, null]\n", 1), encoding="utf-8")
    with pytest.raises(AssertionError, match="budgets"):
        validate(["harden", str(stale)], capsys)


def test_extraction_handles_comments_continuations_and_launchers():
    text = (
        "```bash\n"
        "moe-defense attack organism --attack top-k \\\n"
        "  --data demo-harmful --sweep k=1,3   # a comment\n"
        "deepspeed --num_gpus 4 train/harden.py --recipe models/olmoe --out runs/o\n"
        "echo not a command\n"
        "```\n"
        "moe-defense outside a fence is prose\n"
    )
    commands = commands_in(text, "t.md")
    assert [c.argv for c in commands] == [
        ["attack", "organism", "--attack", "top-k", "--data", "demo-harmful", "--sweep", "k=1,3"],
        ["harden", "models/olmoe", "--out", "runs/o"],
    ]
    assert [c.where for c in commands] == ["t.md:2", "t.md:4"]
