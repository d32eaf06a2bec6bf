"""Choice types shared by the loader, recipes and the command line, each written once.

A module of its own that imports nothing heavy, so the CLI derives its argparse `choices` from these
(`typing.get_args`) without importing torch or transformers.
"""

from __future__ import annotations

from typing import Literal

# weights dtype; auto: the checkpoint's own (moe_defense.models.loading.DTYPES holds the rest)
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
# how a reply splits into reasoning and answer: the parsers of moe_defense.models.chat, plus auto (from the template)
ReasoningChoice = Literal["auto", "none", "think", "gpt-oss"]
