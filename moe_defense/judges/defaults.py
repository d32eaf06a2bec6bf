"""Which judges score answers to a prompt set when none are named: one policy for the run verbs' `--judge`
default and for a recipe without `judges:`."""

from __future__ import annotations

from moe_defense.data import PROMPT_SETS, DemoSet, EnSet, SmolSet

# An organism corpus's own content-aware judge leads on its sets: a keyword judge counts an off-target
# "Sure, here is how to <something else>" as a jailbreak (and the demo judge reads the corpus's request keys).
CORPUS_JUDGES: dict[type, str] = {DemoSet: "organism", EnSet: "organism-en", SmolSet: "organism-smol"}
# Any other set holds real English requests: the content-aware judge of free-form English answers, which
# needs no judge model, endpoint or GPU (a demo-corpus judge would leave every verdict unscored).
ENGLISH_JUDGE = "organism-smol"


def default_judges(data: str) -> list[str]:
    """The headline judge for answers to the prompt set `data` (its organism corpus judge, else the free-form
    English one), then keyword beside it (over-refusal is read from keyword by default)."""
    corpus = CORPUS_JUDGES.get(type(PROMPT_SETS.get(data))) if data in PROMPT_SETS else None
    return [corpus or ENGLISH_JUDGE, "keyword"]
