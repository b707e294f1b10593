"""The testbed's alignment task and its hidden ground-truth reward ``r*(x, y)`` on UltraFeedback's 1-10 scale.

A prompt asks for a description of three keywords of one topic, briefly or in detail::

    Briefly describe rose, soil and bee.
    Describe in detail tide, reef and gull.

A response is a short run of words. ``r*`` scores it from four transparent parts, each in ``[0, 1]``:

- **relevance** ``R``: the share of the response's content words (every word but the neutral glue words
  such as "the", "and") that belong to the prompt's topic; filler ("um", "stuff") and other topics' words
  lower it;
- **coverage** ``C``: the share of the prompt's three keywords the response mentions;
- **length** ``L``: 1 inside the length range the prompt's style asks for (5-8 words brief, 10-14 detailed),
  falling by 0.2 per word outside it;
- **diversity** ``D``: distinct content words over content words (repetition lowers it).

``r* = 1 + 9 * (0.35 R + 0.30 C + 0.20 L + 0.15 D)``, so the empty reply scores 1 and a perfect one 10.
Everything a tiny language model needs to learn (which words go with which topic, how long to answer) is a
token-level pattern, so a few hundred optimiser steps can move it; the parts make every judgement
auditable. :func:`reward` is importable as ``popalign.testbed.task:reward`` for ``--score-fn``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from popalign.data.schema import Prompt

TOPICS: dict[str, tuple[str, ...]] = {
    "garden": (
        "rose",
        "soil",
        "seed",
        "leaf",
        "bloom",
        "shovel",
        "weed",
        "tulip",
        "hedge",
        "bee",
        "fence",
        "pond",
    ),
    "ocean": (
        "wave",
        "tide",
        "reef",
        "shell",
        "whale",
        "sand",
        "salt",
        "boat",
        "gull",
        "coral",
        "storm",
        "fish",
    ),
    "kitchen": (
        "bread",
        "oven",
        "knife",
        "spoon",
        "soup",
        "flour",
        "butter",
        "pan",
        "salad",
        "honey",
        "plate",
        "cake",
    ),
    "city": (
        "street",
        "tower",
        "bus",
        "bridge",
        "market",
        "crowd",
        "train",
        "taxi",
        "park",
        "shop",
        "light",
        "noise",
    ),
    "forest": (
        "pine",
        "moss",
        "deer",
        "owl",
        "trail",
        "fern",
        "bark",
        "wolf",
        "cabin",
        "log",
        "mist",
        "root",
    ),
    "music": (
        "piano",
        "drum",
        "song",
        "guitar",
        "choir",
        "rhythm",
        "note",
        "violin",
        "band",
        "melody",
        "stage",
        "bass",
    ),
    "space": (
        "star",
        "moon",
        "orbit",
        "comet",
        "planet",
        "rocket",
        "galaxy",
        "dust",
        "sun",
        "crater",
        "probe",
        "void",
    ),
    "sport": (
        "ball",
        "goal",
        "team",
        "coach",
        "race",
        "court",
        "score",
        "match",
        "net",
        "bat",
        "medal",
        "field",
    ),
}
# Words that are neither on nor off topic: they pass through relevance and diversity untouched.
GLUE: tuple[str, ...] = ("the", "a", "and", "with", "of", "in", "on", "is", "are", "has", "very", "near")
# Low-effort words: content that is never relevant.
FILLER: tuple[str, ...] = ("um", "stuff", "things", "whatever", "maybe", "like", "so", "anyway")

# style -> (prompt opening, inclusive range of words the style asks for)
STYLES: dict[str, tuple[str, tuple[int, int]]] = {
    "brief": ("Briefly describe", (5, 8)),
    "detailed": ("Describe in detail", (10, 14)),
}
WEIGHTS: dict[str, float] = {"relevance": 0.35, "coverage": 0.30, "length": 0.20, "diversity": 0.15}
LENGTH_SLOPE = 0.2
KEYWORDS_PER_PROMPT = 3
MIN_REWARD, MAX_REWARD = 1.0, 10.0

_WORD_TOPIC = {w: t for t, words in TOPICS.items() for w in words}
_GLUE = frozenset(GLUE)
_PROMPT = re.compile(r"^(Briefly describe|Describe in detail) ([a-z]+), ([a-z]+) and ([a-z]+)\.$")
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class TaskPrompt:
    """A parsed prompt: its topic, its three keywords and the style (``brief`` or ``detailed``)."""

    topic: str
    keywords: tuple[str, ...]
    style: str

    @property
    def text(self) -> str:
        opening = STYLES[self.style][0]
        a, b, c = self.keywords
        return f"{opening} {a}, {b} and {c}."

    @property
    def length_range(self) -> tuple[int, int]:
        return STYLES[self.style][1]


def _prompt_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else prompt[-1]["content"]


def parse_prompt(prompt: Prompt) -> TaskPrompt:
    """The :class:`TaskPrompt` of a prompt written by :attr:`TaskPrompt.text`.

    Raises:
        ValueError: the prompt is not one of the task's (wrong template, unknown or mixed-topic keywords).
    """
    text = _prompt_text(prompt).strip()
    m = _PROMPT.match(text)
    if not m:
        raise ValueError(f"not a testbed prompt: {text[:80]!r}")
    style = next(s for s, (opening, _) in STYLES.items() if opening == m.group(1))
    keywords = (m.group(2), m.group(3), m.group(4))
    topics = {_WORD_TOPIC.get(k) for k in keywords}
    if len(topics) != 1 or None in topics:
        raise ValueError(f"testbed prompt keywords must share one known topic: {keywords}")
    return TaskPrompt(topics.pop(), keywords, style)


def response_words(response: str) -> list[str]:
    """The lower-case words of a response; punctuation and anything non-alphabetic are ignored."""
    return _WORD.findall(response.lower())


def length_score(n_words: int, length_range: tuple[int, int]) -> float:
    """1 inside the range, minus ``LENGTH_SLOPE`` per word outside it, never below 0."""
    low, high = length_range
    off = max(low - n_words, n_words - high, 0)
    return max(0.0, 1.0 - LENGTH_SLOPE * off)


def reward_parts(prompt: Prompt, response: str) -> dict[str, float]:
    """The four parts of ``r*`` (relevance, coverage, length, diversity), each in ``[0, 1]``."""
    task = parse_prompt(prompt)
    words = response_words(response)
    content = [w for w in words if w not in _GLUE]
    on_topic = sum(_WORD_TOPIC.get(w) == task.topic for w in content)
    n = len(content)
    return {
        "relevance": on_topic / n if n else 0.0,
        "coverage": len(set(task.keywords) & set(words)) / len(task.keywords),
        "length": length_score(len(words), task.length_range) if words else 0.0,
        "diversity": len(set(content)) / n if n else 0.0,
    }


def reward(prompt: Prompt, response: str) -> float:
    """The ground-truth reward ``r*(x, y) = 1 + 9 * sum_k w_k part_k`` in ``[1, 10]`` (see module doc)."""
    parts = reward_parts(prompt, response)
    return MIN_REWARD + (MAX_REWARD - MIN_REWARD) * sum(WEIGHTS[k] * v for k, v in parts.items())


def vocabulary() -> list[str]:
    """Every word the task uses (topics, glue, filler, prompt openings), sorted."""
    words = set(_WORD_TOPIC) | _GLUE | set(FILLER)
    for opening, _ in STYLES.values():
        words.update(opening.lower().split())
    return sorted(words)
