"""Dataset text to safe HTML: Markdown rendered by markdown-it-py, then cleaned by nh3's allow-list.

Dataset text is untrusted. Two independent layers keep it from becoming active markup:

1. markdown-it-py (CommonMark plus tables and strikethrough) with raw HTML **off**: ``<script>``,
   ``<img onerror>`` and the like in the text come out escaped, as text. Its link check already
   drops ``javascript:``/``vbscript:``/``data:`` targets; images are off (a remote image would leak
   that the page was opened), so ``![x](url)`` shows as a link.
2. nh3 (the ammonia sanitiser) keeps only the tags and attributes listed below, links only with
   ``http``, ``https`` or ``mailto`` (no relative ones: they would point into this app), and adds
   ``rel="noopener noreferrer nofollow"``.

Code fences keep their language as ``data-lang`` on ``<pre>`` (the page shows it above the code).
"""

from __future__ import annotations

import functools
from typing import Any

TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "em", "strong", "del", "s", "code", "pre",
    "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
ATTRIBUTES = {"a": {"href", "title"}, "pre": {"data-lang"}, "ol": {"start"}}
URL_SCHEMES = {"http", "https", "mailto"}
LINK_REL = "noopener noreferrer nofollow"


@functools.lru_cache(maxsize=1)
def _markdown() -> Any:
    from markdown_it import MarkdownIt
    from markdown_it.common.utils import escapeHtml

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"]).disable("image")

    def fence(_renderer: Any, tokens: Any, idx: int, _options: Any, _env: Any) -> str:
        token = tokens[idx]
        lang = token.info.strip().split()[0] if token.info.strip() else ""
        attr = f' data-lang="{escapeHtml(lang[:32])}"' if lang else ""
        return f"<pre{attr}><code>{escapeHtml(token.content)}</code></pre>\n"

    md.add_render_rule("fence", fence)
    return md


def clean_html(html: str) -> str:
    """``html`` with everything outside the allow-list removed."""
    import nh3

    return nh3.clean(
        html,
        tags=TAGS,
        attributes=ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel=LINK_REL,
        url_relative="deny",
    )


def markdown_html(text: str | None) -> Any:
    """``text`` as sanitised HTML (a ``markupsafe.Markup``, so templates insert it without escaping)."""
    from markupsafe import Markup

    return Markup(clean_html(_markdown().render(text or "")))


def prompt_turns(prompt: Any) -> list[tuple[str, Any]]:
    """A prompt as ``(role, html)`` turns: one ``("user", ...)`` for a string, one per chat message."""
    if isinstance(prompt, str):
        return [("user", markdown_html(prompt))]
    turns = []
    for message in prompt or []:
        if isinstance(message, dict):
            turns.append((str(message.get("role", "")), markdown_html(str(message.get("content", "")))))
        else:
            turns.append(("", markdown_html(str(message))))
    return turns


def size_note(text: str) -> str:
    """ "1,234 words" — shown beside long responses, so their length is visible before scrolling."""
    words = len((text or "").split())
    return f"{words:,} word{'s' if words != 1 else ''}"
