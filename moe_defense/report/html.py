"""report.md and report.html side by side: the markdown rendered by markdown-it-py (CommonMark + tables), every
plot inlined as a data URL so the page is one self-contained file."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token

from moe_defense.runner.rundir import atomic_write

STYLE = (
    "body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}"
)


def _inline_image(self: RendererHTML, tokens: Sequence[Token], idx: int, options: Any, env: dict[str, Any]) -> str:
    """An image whose src (a PNG beside the report, `env["base"]`) is replaced by its bytes as a data URL."""
    token = tokens[idx]
    data = base64.b64encode((env["base"] / str(token.attrGet("src"))).read_bytes()).decode()
    token.attrSet("src", f"data:image/png;base64,{data}")
    return self.image(tokens, idx, options, env)


MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")  # raw HTML in a report is shown, not run
MARKDOWN.add_render_rule("image", _inline_image)


def markdown_to_html(markdown: str, base: Path, title: str) -> str:
    """A self-contained HTML page of report markdown whose images are PNG paths relative to `base`."""
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style>"
    body = MARKDOWN.render(markdown, {"base": base})
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>"


def write_report(out: Path, markdown: str, title: str) -> Path:
    """out/report.md and its page out/report.html (plots already written beside it); returns report.md."""
    path = out / "report.md"
    atomic_write(path, markdown)
    atomic_write(out / "report.html", markdown_to_html(markdown, out, title))
    return path
