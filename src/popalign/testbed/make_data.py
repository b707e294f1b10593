"""The testbed's preference data: prompts, behaviour-policy candidates, annotators' scores, binarising.

For each prompt a fixed stochastic **behaviour policy** (not the model being trained) writes
``candidates`` responses of varying quality; one **annotator** of a pool scores them on its own scale and
offset with Gaussian noise, rounded to UltraFeedback's 0.5 grid and clipped to 1-10
(:mod:`popalign.testbed.annotators`). As in UltraFeedback-binarized, the best-scored candidate is
``chosen`` (ties broken at random) and a uniformly random other one ``rejected``, so equal scores give ties.

The files are ordinary preference files (``prompt``, ``chosen``, ``rejected``, ``score_chosen``,
``score_rejected``, ``id``) that :func:`popalign.data.load.load_preferences` reads, plus for analysis the
exact rewards ``true_chosen``/``true_rejected``, the ``annotator`` who scored the prompt, the prompt's
``topic`` and ``style``, and ``margin``: the oracle arm's margin ``oracle_scale * (true_chosen -
true_rejected)`` (the data's ``margin`` column, read by the ``column`` margin source only).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from popalign.config import ConfigError, help_field
from popalign.io import atomic_open, atomic_write_json
from popalign.pop.build import PoPSpec
from popalign.testbed.annotators import (
    AnnotatorPool,
    annotator_statistics,
    assign_annotators,
    observed_scores,
    oracle_scale,
    score_margins,
    true_margins,
)
from popalign.testbed.task import FILLER, GLUE, KEYWORDS_PER_PROMPT, STYLES, TOPICS, TaskPrompt, reward

DATA_FORMAT = "popalign.testbed.data/2"
MAX_WORDS = 18


@dataclass
class TaskSpec:
    """How the testbed's data is drawn (``task.*`` in the reproduce presets); see docs/testbed.md."""

    train_prompts: int = help_field(2000, help="Training preferences (one per prompt, as in UltraFeedback).")
    test_prompts: int = help_field(500, help="Test preferences; their prompts never occur in training.")
    validation_prompts: int = help_field(
        0,
        help="Validation preferences for tuning (validation.jsonl; 0: none), drawn like the training ones, "
        "disjoint from train and test, from their own random stream so train and test stay as they are.",
    )
    candidates: int = help_field(4, help="Behaviour-policy responses per prompt (UltraFeedback has 4).")
    noise: float = help_field(0.5, help="Annotator noise: standard deviation of the Gaussian added to r*.")
    annotators: int = help_field(
        20, help="Annotators in the pool; each prompt's candidates are scored by one, drawn uniformly."
    )
    annotator_scale_sd: float = help_field(
        0.5,
        help="Annotator scale s_a = exp(N(0, sd^2)): how far each stretches or shrinks the 1-10 scale around "
        "its midpoint, so score margins are miscalibrated across prompts (0: every annotator calibrated).",
    )
    annotator_offset_sd: float = help_field(
        1.0, help="Annotator leniency o_a ~ N(0, sd^2), added to every score it gives (0: none)."
    )
    judge_noise: float = help_field(
        0.5,
        help="PoP judgements: the judge perceives each reply's r* with N(0, judge_noise^2) error and calls "
        "the preference with the larger perceived margin stronger (Thurstone; no scale or offset enters).",
    )
    score_step: float = help_field(
        0.5, help="Observed scores are rounded to multiples of this (UltraFeedback: 0.5)."
    )
    quality_a: float = help_field(
        1.2, help="Prompt difficulty d ~ Beta(quality_a, quality_b), shared by its candidates."
    )
    quality_b: float = help_field(1.2, help="Second Beta parameter of the prompt difficulty.")
    quality_spread: float = help_field(
        0.2, help="Each candidate's quality is d + N(0, quality_spread^2), clipped to [0, 1]."
    )
    oracle_factor: float = help_field(
        1.0,
        help="The oracle arm's margins are oracle_factor * oracle_scale * (r*(chosen) - r*(rejected)), where "
        "oracle_scale gives them the root mean square of the score margins; the factor was chosen on "
        "validation prompts (docs/testbed.md).",
    )
    seed: int = help_field(0, help="Seed of prompts, responses and noise: same seed, same files.")

    def validate(self) -> None:
        if self.train_prompts < 2 or self.test_prompts < 2:
            raise ConfigError("task.train_prompts and task.test_prompts must be at least 2")
        if self.candidates < 2:
            raise ConfigError(f"task.candidates must be at least 2, got {self.candidates}")
        if self.noise < 0 or self.score_step <= 0:
            raise ConfigError("task.noise must be >= 0 and task.score_step > 0")
        if self.annotators < 1:
            raise ConfigError(f"task.annotators must be at least 1, got {self.annotators}")
        if min(self.annotator_scale_sd, self.annotator_offset_sd, self.judge_noise) < 0:
            raise ConfigError(
                "task.annotator_scale_sd, task.annotator_offset_sd and task.judge_noise must be >= 0"
            )
        if self.quality_a <= 0 or self.quality_b <= 0 or self.quality_spread < 0:
            raise ConfigError("task.quality_a and task.quality_b must be positive, task.quality_spread >= 0")
        if self.oracle_factor < 0:
            raise ConfigError(f"task.oracle_factor must be >= 0, got {self.oracle_factor}")
        if self.validation_prompts < 0:
            raise ConfigError("task.validation_prompts must be >= 0")
        if self.train_prompts + self.test_prompts + self.validation_prompts > max_prompts():
            raise ConfigError(f"the task has {max_prompts()} distinct prompts; ask for fewer")

    def fingerprint(self) -> str:
        fields = asdict(self)
        # Data made before these settings existed stays valid at their neutral values.
        if not self.validation_prompts:
            del fields["validation_prompts"]
        if self.oracle_factor == 1.0:
            del fields["oracle_factor"]
        text = json.dumps({"format": DATA_FORMAT, **fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def max_prompts() -> int:
    """Distinct prompts: per topic, ordered keyword triples times styles."""
    per_topic = [len(w) * (len(w) - 1) * (len(w) - 2) for w in TOPICS.values()]
    return sum(per_topic) * len(STYLES)


def draw_prompts(
    n: int, rng: np.random.Generator, exclude: set[TaskPrompt] | None = None
) -> list[TaskPrompt]:
    """``n`` distinct prompts not in ``exclude``, topics and styles uniform, keywords distinct in a prompt."""
    topics, styles = sorted(TOPICS), sorted(STYLES)
    seen: set[TaskPrompt] = set(exclude or ())
    out: list[TaskPrompt] = []
    while len(out) < n:
        topic = topics[rng.integers(len(topics))]
        words = TOPICS[topic]
        keys = tuple(words[i] for i in rng.choice(len(words), KEYWORDS_PER_PROMPT, replace=False))
        p = TaskPrompt(topic, keys, styles[rng.integers(len(styles))])
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def behaviour_response(prompt: TaskPrompt, quality: float, rng: np.random.Generator) -> str:
    """One response of the behaviour policy at quality ``q`` in ``[0, 1]``; it never looks at ``r*``.

    Higher quality means a length closer to the asked range, more on-topic words, each keyword more likely
    mentioned, and fewer repeats; glue words appear at a fixed rate (a quarter of the words) whatever the
    quality. Responses end with a full stop.
    """
    low, high = prompt.length_range
    n = int(np.clip(round(rng.normal((low + high) / 2, 0.5 + 3.0 * (1.0 - quality))), 1, MAX_WORDS))
    on_words = TOPICS[prompt.topic]
    off_words = [w for t, ws in TOPICS.items() if t != prompt.topic for w in ws]
    words: list[str] = []
    for _ in range(n):
        if rng.random() < 0.25:
            words.append(GLUE[rng.integers(len(GLUE))])
        elif words and rng.random() < 0.3 * (1.0 - quality):
            # A low-effort writer repeats itself (or pads a glue word with filler).
            words.append(words[-1] if words[-1] not in GLUE else FILLER[rng.integers(len(FILLER))])
        elif rng.random() < quality:
            words.append(on_words[rng.integers(len(on_words))])
        elif rng.random() < 0.5:
            words.append(FILLER[rng.integers(len(FILLER))])
        else:
            words.append(off_words[rng.integers(len(off_words))])
    for keyword in prompt.keywords:
        if rng.random() < quality:
            words[rng.integers(len(words))] = keyword
    return " ".join(words) + "."


def candidate_qualities(spec: TaskSpec, rng: np.random.Generator) -> np.ndarray:
    """Qualities ``(candidates,)`` of one prompt's responses: a shared difficulty plus each writer's spread.

    UltraFeedback answers each prompt with several models of different strength; the prompt's difficulty
    ``d ~ Beta(quality_a, quality_b)`` is common to all of them and each differs from it by
    ``N(0, quality_spread^2)``.
    """
    difficulty = rng.beta(spec.quality_a, spec.quality_b)
    return np.clip(difficulty + rng.normal(0.0, spec.quality_spread, size=spec.candidates), 0.0, 1.0)


def binarise(scores: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """UltraFeedback-binarized: best score chosen (random among equals), a random other one rejected."""
    best = np.flatnonzero(scores == scores.max())
    chosen = int(best[rng.integers(len(best))])
    others = [i for i in range(len(scores)) if i != chosen]
    return chosen, int(others[rng.integers(len(others))])


# Each split's annotators come from its own stream, so adding a split leaves the others as they were.
SPLIT_STREAMS = {"train": 0, "test": 1, "validation": 2}


def make_split(prompts: list[TaskPrompt], spec: TaskSpec, rng: np.random.Generator, split: str) -> list[dict]:
    """One preference record per prompt (see the module doc for the fields; ``margin`` comes later)."""
    pool = AnnotatorPool.draw(spec)
    who = assign_annotators(spec, len(prompts), SPLIT_STREAMS[split])
    rows = []
    for i, p in enumerate(prompts):
        quality = candidate_qualities(spec, rng)
        responses = [behaviour_response(p, float(q), rng) for q in quality]
        true = np.array([reward(p.text, r) for r in responses])
        a = int(who[i])
        scores = observed_scores(true, spec, rng, scale=pool.scales[a], offset=pool.offsets[a])
        c, r = binarise(scores, rng)
        rows.append(
            {
                "id": f"{split}-{i:05d}",
                "prompt": p.text,
                "chosen": responses[c],
                "rejected": responses[r],
                "score_chosen": float(scores[c]),
                "score_rejected": float(scores[r]),
                "true_chosen": float(true[c]),
                "true_rejected": float(true[r]),
                "annotator": a,
                "topic": p.topic,
                "style": p.style,
            }
        )
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def add_oracle_margins(rows: list[dict], scale: float) -> None:
    """Set each record's ``margin`` to the oracle arm's ``scale * (true_chosen - true_rejected)``."""
    for row, m in zip(rows, true_margins(rows), strict=True):
        row["margin"] = float(scale * m)


def make_dataset(spec: TaskSpec, out_dir: str | Path, min_gap: float = PoPSpec.min_gap) -> dict[str, Any]:
    """Write ``train.jsonl``, ``test.jsonl`` (``validation.jsonl``) and ``task.json`` into ``out_dir``.

    Returns the task record, with the annotator model's statistics on the training split
    (:func:`~popalign.testbed.annotators.annotator_statistics`; PoP pairs need a true-margin gap of
    ``min_gap``). The oracle margins' scale is fixed on the training split alone and applied to every split.

    Deterministic in ``spec``: the same settings write the same bytes. Test prompts never occur in training.
    """
    spec.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    prompts = draw_prompts(spec.train_prompts + spec.test_prompts, rng)
    splits = {
        "train": make_split(prompts[: spec.train_prompts], spec, rng, "train"),
        "test": make_split(prompts[spec.train_prompts :], spec, rng, "test"),
    }
    if spec.validation_prompts:
        stream = np.random.default_rng([spec.seed, 1])
        held_out = draw_prompts(spec.validation_prompts, stream, exclude=set(prompts))
        splits["validation"] = make_split(held_out, spec, stream, "validation")
    train = splits["train"]
    scale = spec.oracle_factor * oracle_scale(true_margins(train), score_margins(train))
    for name, rows in splits.items():
        add_oracle_margins(rows, scale)
        _write_jsonl(out / f"{name}.jsonl", rows)
    record = {
        "format": DATA_FORMAT,
        "fingerprint": spec.fingerprint(),
        "spec": asdict(spec),
        "score_fn": "popalign.testbed.task:reward",
        "splits": {name: len(rows) for name, rows in splits.items()},
        "annotators": annotator_statistics(train, spec, min_gap),
        "oracle_margin_scale": scale,
    }
    atomic_write_json(out / "task.json", record)
    return record


def read_split(data_dir: str | Path, split: str) -> list[dict]:
    """The raw records of ``<data_dir>/<split>.jsonl``, including the exact rewards."""
    with open(Path(data_dir) / f"{split}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
