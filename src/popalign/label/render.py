"""Dataset text to display blocks: prose and fenced code, kept as plain strings.

Nothing here produces HTML: the templates escape every string (Jinja2 autoescape), so text from the
dataset, which is untrusted, can never become markup. This module only decides the *structure* —
which parts are fenced code (shown monospaced and scrollable) and which are prose (wrapped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*?)[ \t]*$")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")


@dataclass(frozen=True)
class Block:
    """``kind`` is ``"text"`` or ``"code"``; ``lang`` is the fence's info word (may be empty)."""

    kind: str
    body: str
    lang: str = ""

    def spans(self) -> list[tuple[str, str]]:
        """Prose as ``("text", s)`` and ``("code", s)`` parts: single-backtick spans become inline code."""
        out: list[tuple[str, str]] = []
        pos = 0
        for m in _INLINE_CODE.finditer(self.body):
            if m.start() > pos:
                out.append(("text", self.body[pos : m.start()]))
            out.append(("code", m.group(1)))
            pos = m.end()
        if pos < len(self.body):
            out.append(("text", self.body[pos:]))
        return out


def blocks(text: str) -> list[Block]:
    """Split ``text`` at Markdown code fences (```` ``` ```` or ``~~~``); an unclosed one runs to the end."""
    out: list[Block] = []
    prose: list[str] = []
    code: list[str] = []
    fence: str | None = None
    lang = ""
    for line in (text or "").split("\n"):
        m = _FENCE.match(line)
        if fence is None:
            if m:
                _flush(out, "text", prose)
                fence, lang = m.group("fence"), (m.group("info").split() or [""])[0]
            else:
                prose.append(line)
        elif (
            m
            and m.group("fence")[0] == fence[0]
            and len(m.group("fence")) >= len(fence)
            and not m.group("info")
        ):
            _flush(out, "code", code, lang)
            fence, lang = None, ""
        else:
            code.append(line)
    if fence is not None:
        _flush(out, "code", code, lang, keep_empty=True)
    _flush(out, "text", prose)
    return out


def _flush(out: list[Block], kind: str, lines: list[str], lang: str = "", keep_empty: bool = False) -> None:
    body = "\n".join(lines)
    if kind == "text":
        body = body.strip("\n")
    if body.strip() or (kind == "code" and (keep_empty or lines)):
        out.append(Block(kind, body, lang))
    lines.clear()


def prompt_turns(prompt: Any) -> list[tuple[str, list[Block]]]:
    """A prompt as ``(role, blocks)`` turns: one ``("user", ...)`` for a string, one per chat message."""
    if isinstance(prompt, str):
        return [("user", blocks(prompt))]
    turns = []
    for message in prompt or []:
        if isinstance(message, dict):
            turns.append((str(message.get("role", "")), blocks(str(message.get("content", "")))))
        else:
            turns.append(("", blocks(str(message))))
    return turns


def size_note(text: str) -> str:
    """ "1,234 words" — shown beside long responses, so their length is visible before scrolling."""
    words = len((text or "").split())
    return f"{words:,} word{'s' if words != 1 else ''}"
