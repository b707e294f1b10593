"""From raw rows to validated preferences: layout detection, column resolution and per-row checks.

Three layouts are recognised from the first row (after the user's column mapping):

* ``plain`` -- ``prompt``, ``chosen``, ``rejected`` as text;
* ``ultrafeedback-messages`` -- ``chosen``/``rejected`` as chat-message lists that end with the
  assistant's reply and (usually) start with the prompt turns;
* ``implicit-prompt`` -- no prompt column; ``chosen``/``rejected`` are whole text transcripts with
  ``Human:``/``Assistant:`` turns (Anthropic HH-RLHF; TRL's "implicit prompt"): the turns before the
  final assistant turn are the prompt, the final assistant turns are the replies;
* ``unordered-pair`` -- ``response_a``/``response_b`` with ``score_a``/``score_b``; the higher score
  becomes ``chosen`` and ties follow ``tie_policy``.

Scores are optional; when present ``margin = score_chosen - score_rejected`` is the ground-truth
margin of the paper's DPO-margin-gt and the source of simulated PoP labels. Every problem is a
:class:`~popalign.data.formats.RowError` naming the file, the 1-based row and the field.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from dataclasses import dataclass
from typing import Any

from popalign.config import ConfigError
from popalign.data.formats import RowError
from popalign.errors import DataError

TARGETS = (
    "id",
    "prompt",
    "chosen",
    "rejected",
    "score_chosen",
    "score_rejected",
    "response_a",
    "response_b",
    "score_a",
    "score_b",
)
ORDERED_ONLY = ("chosen", "rejected", "score_chosen", "score_rejected")
UNORDERED_ONLY = ("response_a", "response_b", "score_a", "score_b")

_MISSING = object()

# Scores beyond this are almost surely a unit or parsing mistake; their differences overflow statistics.
MAX_ABS_SCORE = 1e6
# A prompt at least this long that opens its reply is a mapping mistake (prompt=chosen); shorter ones
# ("Hi") legitimately open replies.
MIN_PROMPT_PREFIX = 16
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_transcript(text: str) -> list[dict[str, str]] | None:
    """``"\n\nHuman: q\n\nAssistant: a"`` -> chat messages; ``None`` when the text has no such turns."""
    marks = list(_TURN.finditer(text))
    if not marks or text[: marks[0].start()].strip():
        return None
    turns = []
    for mark, nxt in zip(marks, [*marks[1:], None], strict=True):
        end = nxt.start() if nxt else len(text)
        turns.append({"role": _ROLES[mark.group(1)], "content": text[mark.end() : end].strip()})
    return turns


def is_transcript(value: Any) -> bool:
    turns = parse_transcript(value) if isinstance(value, str) else None
    return bool(turns) and len(turns) >= 2 and turns[-1]["role"] == "assistant"


def check_column_targets(columns: dict[str, str]) -> None:
    """Reject unknown targets and mappings that mix the ordered and the unordered layout."""
    for target, src in columns.items():
        if target not in TARGETS:
            close = difflib.get_close_matches(target, TARGETS, n=2)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"columns: unknown target {target!r}.{hint} Targets: {', '.join(TARGETS)}")
        if not isinstance(src, str) or not src.strip():
            raise ConfigError(f"columns: {target} must name a source column, got {src!r}")
    if any(t in columns for t in ORDERED_ONLY) and any(t in columns for t in UNORDERED_ONLY):
        raise ConfigError(
            "columns: map either chosen/rejected (ordered preferences) or response_a/response_b "
            "(unordered pairs ordered by score), not both"
        )


def get_path(row: dict[str, Any], path: str) -> Any:
    """``row[path]``, else the value at a dotted path (``metadata.score_chosen``), else ``_MISSING``."""
    value = row.get(path, _MISSING)
    if value is _MISSING and "." in path:
        value = row
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                return _MISSING
            value = value[part]
    return value


def available_columns(row: dict[str, Any]) -> list[str]:
    """Top-level keys and one level of nested keys, as dotted paths a mapping can use."""
    out: list[str] = []
    for key, value in row.items():
        out.append(str(key))
        if isinstance(value, dict):
            out.extend(f"{key}.{sub}" for sub in value)
    return out


def _locate_score(row: dict[str, Any], name: str) -> str | None:
    """Find a score at the top level, one level down (``metadata.score_chosen``) or as a dotted column."""
    if name in row:
        return name
    for key, value in row.items():
        if isinstance(value, dict) and name in value:
            return f"{key}.{name}"
    for key in row:
        if isinstance(key, str) and key.endswith("." + name):
            return key
    return None


@dataclass
class Layout:
    """What the first row told us: the layout name and each target's source path."""

    schema: str
    columns: dict[str, str]

    @property
    def unordered(self) -> bool:
        return self.schema == "unordered-pair"

    @property
    def has_scores(self) -> bool:
        return "score_chosen" in self.columns or "score_a" in self.columns


def detect_layout(row: dict[str, Any], mapping: dict[str, str], source: str, row_number: int = 1) -> Layout:
    """Resolve every target against the first row; raise a :class:`DataError` for what is missing."""
    check_column_targets(mapping)
    avail = available_columns(row)

    def missing(target: str, why: str = "") -> DataError:
        src = mapping.get(target, target)
        named = f"column {src!r} (mapped to {target})" if src != target else f"column {target!r}"
        hint = ""
        if target == "prompt":
            hint = (
                "; replies that hold the whole conversation need no prompt column: as text transcripts "
                "with Human:/Assistant: turns, or as message lists (see docs/data_formats.md)"
            )
        return DataError(
            f"{named} not found{why}; available columns: {', '.join(avail) or '(none)'} "
            f"(map yours with --columns {target}=NAME, or columns: in YAML{hint})",
            file=source,
            row=row_number,
            field=src,
        )

    def has(path: str) -> bool:
        return get_path(row, path) is not _MISSING

    unordered = any(t in mapping for t in UNORDERED_ONLY) or (
        not any(t in mapping for t in ORDERED_ONLY) and not has("chosen") and has("response_a")
    )
    first, second = ("response_a", "response_b") if unordered else ("chosen", "rejected")
    cols: dict[str, str] = {}
    for target in (first, second):
        cols[target] = mapping.get(target, target)
        if not has(cols[target]):
            raise missing(target)

    first_value = get_path(row, cols[first])
    prompt_src = mapping.get("prompt", "prompt")
    implicit = is_transcript(first_value)
    if has(prompt_src):
        cols["prompt"] = prompt_src
        implicit = False
    elif "prompt" in mapping or not (isinstance(first_value, list) and len(first_value) > 1 or implicit):
        # Conversations (message lists or transcripts) hold the prompt turns; everything else needs a prompt.
        raise missing("prompt")

    if "id" in mapping:
        if not has(mapping["id"]):
            raise missing("id")
        cols["id"] = mapping["id"]
    elif has("id"):
        cols["id"] = "id"
    elif has("source_index"):
        cols["id"] = "source_index"

    pair = ("score_a", "score_b") if unordered else ("score_chosen", "score_rejected")
    found = {}
    for target in pair:
        if target in mapping:
            if not has(mapping[target]):
                raise missing(target)
            found[target] = mapping[target]
        else:
            located = _locate_score(row, target)
            if located is not None:
                found[target] = located
    if len(found) == 1:
        (have,) = found
        (lack,) = (t for t in pair if t not in found)
        raise missing(lack, f", but {have} is present at {found[have]!r}: give both scores or neither")
    if unordered and not found:
        raise missing(
            "score_a", ": unordered pairs need score_a and score_b to decide which response is chosen"
        )
    cols.update(found)

    if unordered:
        schema = "unordered-pair"
    elif implicit:
        schema = "implicit-prompt"
    elif isinstance(first_value, list):
        schema = "ultrafeedback-messages"
    else:
        schema = "plain"
    return Layout(schema, cols)


def _same_turns(a: list[dict[str, str]], b: list[dict[str, str]]) -> int | None:
    """The 1-based index of the first differing message, or ``None`` when both lists agree."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i + 1
    return None if len(a) == len(b) else min(len(a), len(b)) + 1


class RowNormaliser:
    """Turns one raw row into ``(id, prompt, chosen, rejected, score_chosen, score_rejected)``.

    Returns ``None`` for a tie (equal scores, ordered row or unordered pair) that ``tie_policy="skip"``
    drops; raises :class:`RowError` for a bad row. Scores are ``None`` when the layout has none. An empty
    reply is a real (poor) response -- UltraFeedback scores a few -- so ``empty_replies="keep"`` accepts
    it; an empty prompt is always an error.
    """

    def __init__(self, layout: Layout, source: str, tie_policy: str = "error", empty_replies: str = "keep"):
        self.layout, self.source, self.tie_policy = layout, source, tie_policy
        self.keep_empty = empty_replies == "keep"
        self.cols = layout.columns
        self.row = 0

    def error(self, message: str, target: str, reason: str) -> RowError:
        src = self.cols.get(target, target)
        if src != target and target not in message:
            message = f"({target}) {message}"
        return RowError(message, reason=reason, file=self.source, row=self.row, field=src)

    def __call__(self, raw: dict[str, Any], row_number: int, position: int) -> tuple | None:
        self.row = row_number
        pref_id = self._id(raw, position)
        if self.layout.unordered:
            return self._unordered(raw, pref_id)
        prompt, chosen, rejected = self._texts(raw, "chosen", "rejected")
        if not self.layout.has_scores:
            return pref_id, prompt, chosen, rejected, None, None
        sc, sr = self._score(raw, "score_chosen"), self._score(raw, "score_rejected")
        if sc < sr:
            raise self.error(
                f"chosen is scored below rejected ({sc:g} < {sr:g}); ordered data must put the preferred "
                "response in chosen (for unordered pairs use response_a/response_b with score_a/score_b)",
                "score_chosen",
                "chosen scored below rejected",
            )
        # An ordered row names its chosen reply even when the scores tie, so only ``skip`` drops it.
        if sc == sr and self.tie_policy == "skip":
            return None
        return pref_id, prompt, chosen, rejected, sc, sr

    def _unordered(self, raw: dict[str, Any], pref_id: str) -> tuple | None:
        prompt, a, b = self._texts(raw, "response_a", "response_b")
        sa, sb = self._score(raw, "score_a"), self._score(raw, "score_b")
        if sa == sb:
            if self.tie_policy == "skip":
                return None
            if self.tie_policy != "keep":
                raise self.error(
                    f"the two responses tie (score_a = score_b = {sa:g}), so neither is preferred; set "
                    "tie_policy to 'skip' or 'keep' (--tie-policy skip|keep; keep puts response_a in chosen)",
                    "score_b",
                    "tie",
                )
        if sb > sa:
            return pref_id, prompt, b, a, sb, sa
        return pref_id, prompt, a, b, sa, sb

    def _id(self, raw: dict[str, Any], position: int) -> str:
        if "id" not in self.cols:
            return str(position)
        value = get_path(raw, self.cols["id"])
        if value is _MISSING or value is None:
            raise self.error("missing id", "id", "missing field")
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 12.0 from a float column is the id "12"
        if isinstance(value, dict | list):
            raise self.error(f"an id must be text or a number, got {type(value).__name__}", "id", "bad id")
        text = str(value).strip()
        if not text:
            raise self.error("empty id", "id", "bad id")
        return text

    def _texts(self, raw: dict[str, Any], first: str, second: str) -> tuple[Any, str, str]:
        turns_1, text_1 = self._response(raw, first)
        turns_2, text_2 = self._response(raw, second)
        if turns_1 or turns_2:
            where = _same_turns(turns_1 or [], turns_2 or [])
            if where is not None:
                raise self.error(
                    f"the prompt turns of {second} differ from those of {first} (first difference at "
                    f"message {where}); both must continue the same conversation (--skip-bad-rows skips "
                    "and counts such rows)",
                    second,
                    "prompt mismatch",
                )
            return self._prompt_from_turns(turns_1, first), text_1, text_2
        prompt = self._prompt(raw)
        if isinstance(prompt, str):
            self._check_not_in_reply(prompt, (text_1, text_2), (first, second))
        return prompt, text_1, text_2

    def _text(self, value: Any, target: str, may_be_empty: bool = False) -> str:
        if value is _MISSING:
            raise self.error("missing field", target, "missing field")
        if value is None:
            raise self.error("missing value (null)", target, "missing field")
        if not isinstance(value, str):
            raise self.error(f"expected text, got {type(value).__name__}", target, "not text")
        if not may_be_empty and not value.strip():
            hint = "" if target == "prompt" else " (set empty_replies to 'keep' to accept empty replies)"
            raise self.error(f"empty text{hint}", target, "empty text")
        return value

    def _messages(self, value: list, target: str) -> list[dict[str, str]]:
        turns = []
        for i, msg in enumerate(value, 1):
            if not (
                isinstance(msg, dict)
                and isinstance(msg.get("role"), str)
                and isinstance(msg.get("content"), str)
            ):
                raise self.error(
                    f"message {i} must be an object with text 'role' and 'content'", target, "bad messages"
                )
            turns.append({"role": msg["role"], "content": msg["content"]})
        return turns

    def _response(self, raw: dict[str, Any], target: str) -> tuple[list[dict[str, str]] | None, str]:
        """A reply as ``(prompt turns or None, reply text)``; message lists must end with the assistant."""
        value = get_path(raw, self.cols[target])
        if self.layout.schema == "implicit-prompt":
            value = self._transcript(value, target)
        if not isinstance(value, list):
            return None, self._text(value, target, self.keep_empty)
        if not value:
            raise self.error("empty message list", target, "empty text")
        turns = self._messages(value, target)
        if turns[-1]["role"] != "assistant":
            raise self.error(
                f"the last message must be the assistant's reply, got role {turns[-1]['role']!r}",
                target,
                "bad messages",
            )
        return turns[:-1], self._text(turns[-1]["content"], target, self.keep_empty)

    def _transcript(self, value: Any, target: str) -> list[dict[str, str]]:
        text = self._text(value, target)
        turns = parse_transcript(text)
        if not turns:
            raise self.error(
                "not a transcript: the implicit-prompt layout needs Human:/Assistant: turns "
                "('\\n\\nHuman: ...\\n\\nAssistant: ...')",
                target,
                "bad transcript",
            )
        return turns

    def _check_not_in_reply(self, prompt: str, replies: tuple[str, str], names: tuple[str, str]) -> None:
        """A prompt that is its reply, or opens it, means the prompt was mapped to a reply column."""
        p = prompt.strip()
        for reply, name in zip(replies, names, strict=True):
            r = reply.strip()
            if r == p or (len(p) >= MIN_PROMPT_PREFIX and r.startswith(p)):
                how = "equals" if r == p else "is the beginning of"
                raise self.error(
                    f"the prompt {how} the {name} reply, so the prompt column holds replies (is prompt "
                    "mapped to a reply column?); when the replies hold the whole conversation, leave the "
                    "prompt column out (implicit-prompt layout, docs/data_formats.md)",
                    "prompt",
                    "prompt in reply",
                )

    def _prompt_from_turns(self, turns: list[dict[str, str]], target: str) -> str | list[dict[str, str]]:
        if not any(t["content"].strip() for t in turns):
            raise self.error("empty prompt (every prompt message is empty)", target, "empty text")
        if len(turns) == 1 and turns[0]["role"] == "user":
            return turns[0]["content"]
        return turns

    def _prompt(self, raw: dict[str, Any]) -> str | list[dict[str, str]]:
        if "prompt" not in self.cols:
            raise self.error("missing field (the replies carry no prompt turns)", "prompt", "missing field")
        value = get_path(raw, self.cols["prompt"])
        if isinstance(value, list):
            if not value:
                raise self.error("empty message list", "prompt", "empty text")
            return self._prompt_from_turns(self._messages(value, "prompt"), "prompt")
        return self._text(value, "prompt")

    def _score(self, raw: dict[str, Any], target: str) -> float:
        value = get_path(raw, self.cols[target])
        if value is _MISSING or value is None:
            raise self.error("missing score", target, "bad score")
        if isinstance(value, bool) or not isinstance(value, numbers.Real | str):
            raise self.error(f"a score must be a number, got {type(value).__name__}", target, "bad score")
        try:
            score = float(value)
        except ValueError:
            raise self.error(f"a score must be a number, got {value!r}", target, "bad score") from None
        if not math.isfinite(score):
            raise self.error(f"a score must be a finite number, got {value!r}", target, "bad score")
        if abs(score) > MAX_ABS_SCORE:
            raise self.error(
                f"score {score:g} is outside the sane range |score| <= {MAX_ABS_SCORE:g} (a unit or parsing "
                "mistake?); rescale the scores",
                target,
                "bad score",
            )
        return score
