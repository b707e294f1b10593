"""The question an LLM judge is asked about two preferences, and how its answer is read.

A PoP question shows two preferences, each a prompt with its chosen and its rejected reply, and asks
which of the two shows the clearer difference in quality between its replies (paper Section 3: the
stronger preference). The default template is :data:`DEFAULT_TEMPLATE`; a template file replaces it.
Templates use ``string.Template`` placeholders (``${prompt_a}``), so literal braces in a template or in
the preference text need no escaping. The placeholders:

* ``${prompt_a}``, ``${chosen_a}``, ``${rejected_a}`` — the preference shown first (as "A");
* ``${prompt_b}``, ``${chosen_b}``, ``${rejected_b}`` — the one shown second (as "B");
* ``${answer_format}`` — the answer instruction: ``Answer with one letter: A or B.``, or with
  ``allow_same`` also ``SAME`` for "about the same".

The answer is read from its start: optional spaces, quotes, ``*``, brackets, and the words "Preference"
or "Answer:", then ``A``, ``B`` or (with ``allow_same``) ``SAME`` as a whole word, any case, with no other
option named on the same line ("A or B" echoes the instruction). Anything else is *unparseable*:
counted, never guessed.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

from popalign.errors import PopalignError
from popalign.pop.labels import SAME

SIDES = ("a", "b")
FIELDS = tuple(f"{part}_{side}" for side in SIDES for part in ("prompt", "chosen", "rejected"))
PLACEHOLDERS = (*FIELDS, "answer_format")

SYSTEM = "You are a careful annotator of preference data for training language models."

DEFAULT_TEMPLATE = """\
Each preference below is a prompt with two replies: a chosen reply that annotators preferred and a \
rejected one. In some preferences the chosen reply is far better than the rejected one; in others the \
two are nearly as good as each other.

Which preference shows the clearer difference in quality between its chosen and its rejected reply?

### Preference A
Prompt:
${prompt_a}

Chosen reply:
${chosen_a}

Rejected reply:
${rejected_a}

### Preference B
Prompt:
${prompt_b}

Chosen reply:
${chosen_b}

Rejected reply:
${rejected_b}

${answer_format}"""

ANSWER_FORMAT = "Answer with one letter: A or B."
ANSWER_FORMAT_SAME = "Answer with one word: A, B, or SAME if the two differences are about equally clear."

_ANSWER = re.compile(r"""^[\s"'`*(\[]*(?:preference\s+|answer\s*:\s*)?(a|b|same)\b""", re.IGNORECASE)


def load_template(path: str | Path | None) -> str:
    """The template text: the default for ``None``, else the file, checked for its placeholders."""
    if path is None:
        return DEFAULT_TEMPLATE
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PopalignError(f"{path}: cannot read the judge prompt template: {exc.strerror}") from None
    check_template(text, str(path))
    return text


def check_template(text: str, source: str) -> None:
    """Every placeholder known and the six preference fields present; else one error naming ``source``."""
    template = string.Template(text)
    if not template.is_valid():
        raise PopalignError(f"{source}: a '$' that starts no placeholder; write '$$' for a literal '$'")
    used = set(template.get_identifiers())
    unknown = sorted(used - set(PLACEHOLDERS))
    if unknown:
        raise PopalignError(
            f"{source}: unknown placeholder ${{{unknown[0]}}} (known: {', '.join(PLACEHOLDERS)})"
        )
    missing = [name for name in FIELDS if name not in used]
    if missing:
        raise PopalignError(f"{source}: the template never shows ${{{missing[0]}}}")


def prompt_text(prompt: str | list[dict[str, str]]) -> str:
    """A prompt as text: itself, or a multi-turn prompt's turns as ``Role: content`` paragraphs."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m.get('role', 'user').capitalize()}: {m.get('content', '')}" for m in prompt)


def _clip(text: str, max_chars: int) -> str:
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    return text[:max_chars] + " [...]"


def render_messages(
    template: str,
    first: dict[str, str],
    second: dict[str, str],
    allow_same: bool,
    max_chars: int = 0,
) -> list[dict[str, str]]:
    """The chat messages asking about ``first`` (shown as A) and ``second`` (as B).

    ``first``/``second`` hold ``prompt``, ``chosen`` and ``rejected``; ``max_chars > 0`` cuts each text
    to that many characters (marked ``[...]``) so that long preferences fit a small judge's context.
    """
    values = {"answer_format": ANSWER_FORMAT_SAME if allow_same else ANSWER_FORMAT}
    for side, pref in zip(SIDES, (first, second), strict=True):
        for part in ("prompt", "chosen", "rejected"):
            values[f"{part}_{side}"] = _clip(pref[part], max_chars)
    user = string.Template(template).substitute(values)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_answer(text: str | None, allow_same: bool) -> str | None:
    """``"a"``, ``"b"``, ``"same"`` (only with ``allow_same``) or ``None`` when the answer is unparseable."""
    if not text:
        return None
    match = _ANSWER.match(text)
    if match is None:
        return None
    answer = match.group(1).lower()
    if answer == SAME and not allow_same:
        return None
    # "A or B", "A/B": the answer's first line naming another option too is an echo, not a choice.
    others = {"a", "b", SAME} - {answer}
    first_line = text[match.end() :].split("\n", 1)[0].lower()
    if any(re.search(rf"\b{o}\b", first_line) for o in others):
        return None
    return answer
