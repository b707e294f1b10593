"""The testbed's annotators: scores on each annotator's own scale, comparative judgements of the truth.

The paper's premise (Section 1): absolute Likert-style scores are not calibrated across annotators
(Wadhwa et al. 2024), while comparative judgements are more reliable (Kiritchenko & Mohammad 2017), so the
size of a score margin says little across prompts, yet "which of these two preferences is stronger" can be
answered. The testbed models both.

**Scores.** A pool of ``annotators`` annotators; annotator ``a`` has a scale ``s_a = exp(N(0, scale_sd^2))``
and an offset ``o_a ~ N(0, offset_sd^2)``. All candidates of one prompt are scored by one annotator, drawn
uniformly from the pool::

    score = clip_[1, 10](round_step(r* + o_a + (s_a - 1) (r* - 5.5) + N(0, noise^2)))

that is, ``5.5 + o_a + s_a (r* - 5.5)`` plus noise: the annotator stretches or shrinks the 1-10 scale around
its midpoint and is more or less lenient. One annotator per prompt keeps the ranking of a prompt's
candidates (up to noise, rounding and clipping); only the size of the margins differs between prompts.
With ``scale_sd = offset_sd = 0`` the scores are exactly those of a single calibrated annotator.

**PoP judgements** (Thurstone's case V): the judge reads the two preferences' replies, perceives each
reply's ``r*`` with independent ``N(0, judge_noise^2)`` errors, so each preference's true margin with
standard deviation ``sqrt(2) judge_noise``, and calls the preference with the larger perceived margin the
stronger. No scale, offset or rounding enters: a comparison needs no calibrated scale. A pair whose true
margins differ by ``g`` is misjudged with probability ``Phi(-g / (2 judge_noise))``.

:func:`write_judged_labels` writes such judgements as an ordinary PoP label file (``id_a``, ``id_b``,
``stronger``; :mod:`popalign.pop.labels`), and :func:`annotator_statistics` summarises the model's effect
(observed vs true margins, PoP label error) for the task record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from popalign.io import atomic_open

if TYPE_CHECKING:
    from popalign.pop.build import PoPSpec

SCALE_CENTRE = 5.5  # the midpoint of the 1-10 scale, which an annotator's scale stretches around
# Pairs per chunk in the all-pairs statistics: memory stays near chunk * N floats however large N is.
_CHUNK = 512


class AnnotatorSettings(Protocol):
    """The settings the model reads: :class:`popalign.testbed.make_data.TaskSpec` (``task.*``) has them."""

    seed: int
    noise: float
    score_step: float
    annotators: int
    annotator_scale_sd: float
    annotator_offset_sd: float
    judge_noise: float


@dataclass(frozen=True)
class AnnotatorPool:
    """Each annotator's scale ``s_a`` and offset ``o_a``, arrays of shape ``(annotators,)``."""

    scales: np.ndarray
    offsets: np.ndarray

    @classmethod
    def draw(cls, spec: AnnotatorSettings) -> AnnotatorPool:
        """The pool of ``spec``, from its own stream of ``spec.seed`` (prompts and replies are unaffected)."""
        rng = np.random.default_rng([spec.seed, 2])
        scales = np.exp(rng.normal(0.0, spec.annotator_scale_sd, size=spec.annotators))
        offsets = rng.normal(0.0, spec.annotator_offset_sd, size=spec.annotators)
        return cls(scales, offsets)


def assign_annotators(spec: AnnotatorSettings, prompts: int, split: int) -> np.ndarray:
    """Which annotator scores each prompt of a split, ``(prompts,)``; ``split`` numbers the split's stream."""
    return np.random.default_rng([spec.seed, 3, split]).integers(spec.annotators, size=prompts)


def observed_scores(
    true: np.ndarray,
    spec: AnnotatorSettings,
    rng: np.random.Generator,
    scale: float | np.ndarray = 1.0,
    offset: float | np.ndarray = 0.0,
) -> np.ndarray:
    """One annotator's scores of ``true`` rewards (see the module doc) on ``score_step``'s grid in [1, 10]."""
    # Written so that scale 1 and offset 0 add exact zeros: the calibrated annotator's scores, bit for bit.
    seen = true + offset + (scale - 1.0) * (true - SCALE_CENTRE)
    noisy = seen + rng.normal(0.0, spec.noise, size=true.shape)
    return np.clip(np.round(noisy / spec.score_step) * spec.score_step, 1.0, 10.0)


def judgement_error(gaps: np.ndarray, judge_noise: float) -> np.ndarray:
    """The probability of misjudging which of two preferences is stronger, given their true margins' gap."""
    from scipy.stats import norm

    gaps = np.abs(np.asarray(gaps, dtype=np.float64))
    if judge_noise == 0:
        return np.where(gaps > 0, 0.0, 0.5)
    return norm.sf(gaps / (2.0 * judge_noise))


def judge(strong: np.ndarray, weak: np.ndarray, judge_noise: float, rng: np.random.Generator) -> np.ndarray:
    """Whether the judge calls ``strong`` (true margins, ``(P,)``) stronger than ``weak``, pair by pair."""
    spread = np.sqrt(2.0) * judge_noise
    seen_strong = strong + rng.normal(0.0, spread, size=strong.shape)
    seen_weak = weak + rng.normal(0.0, spread, size=weak.shape)
    return seen_strong > seen_weak


def true_margins(rows: list[dict]) -> np.ndarray:
    """``true_chosen - true_rejected`` of testbed records, ``(N,)``."""
    return np.array([r["true_chosen"] - r["true_rejected"] for r in rows], dtype=np.float64)


def score_margins(rows: list[dict]) -> np.ndarray:
    """``score_chosen - score_rejected`` of testbed records, ``(N,)``."""
    return np.array([r["score_chosen"] - r["score_rejected"] for r in rows], dtype=np.float64)


def oracle_scale(true: np.ndarray, observed: np.ndarray) -> float:
    """The factor giving the oracle margins ``scale * true`` the root mean square of the observed margins.

    A rule fixed before any run, on training data only: the oracle arm's margins are then as large, on
    average, as the score margins dpo-margin-gt trains with, and differ from them only in calibration.
    """
    true_rms = float(np.sqrt(np.mean(true**2)))
    return float(np.sqrt(np.mean(observed**2))) / true_rms if true_rms > 0 else 0.0


def _pairwise(margins: np.ndarray, min_gap: float, value) -> tuple[float, int]:
    """Sum of ``value(stronger, weaker)`` over all pairs whose ``margins`` differ by ``min_gap`` or more."""
    total, count = 0.0, 0
    for start in range(0, margins.size, _CHUNK):
        rows = np.arange(start, min(start + _CHUNK, margins.size))
        gap = margins[rows, None] - margins[None, :]
        strong, weak = np.nonzero(gap >= min_gap)
        total += float(value(rows[strong], weak).sum())
        count += strong.size
    return total, count


def pop_label_errors(true: np.ndarray, observed: np.ndarray, judge_noise: float, min_gap: float) -> dict:
    """PoP label error against the true margins, over every valid pair, for both ways of labelling.

    ``judged``: the expected error of the annotators' comparative judgements over the pairs whose true
    margins differ by ``min_gap`` or more (what the testbed's PoP arms use). ``scores``: the share of pairs
    whose score margins differ by ``min_gap`` or more (the paper's construction from scores) that the true
    margins order the other way round (or tie).
    """
    judged, n_judged = _pairwise(true, min_gap, lambda s, w: judgement_error(true[s] - true[w], judge_noise))
    scored, n_scored = _pairwise(observed, min_gap, lambda s, w: true[s] <= true[w])
    return {
        "min_gap": min_gap,
        "judged": judged / n_judged if n_judged else float("nan"),
        "judged_pairs": n_judged,
        "scores": scored / n_scored if n_scored else float("nan"),
        "scores_pairs": n_scored,
    }


def annotator_statistics(rows: list[dict], spec: AnnotatorSettings, min_gap: float) -> dict[str, Any]:
    """What the annotator model does to the training preferences ``rows``, for the task record.

    The correlation (Pearson and Spearman) of observed and true margins, the oracle arm's scale, the PoP
    label error of judgements and of score-derived labels (:func:`pop_label_errors`), and the pool (every
    annotator's scale and offset, and their quartiles).
    """
    from scipy.stats import pearsonr, spearmanr

    true, observed = true_margins(rows), score_margins(rows)
    pool = AnnotatorPool.draw(spec)
    return {
        "margin_correlation": float(pearsonr(observed, true).statistic),
        "margin_rank_correlation": float(spearmanr(observed, true).statistic),
        "oracle_scale": oracle_scale(true, observed),
        "pop_label_error": pop_label_errors(true, observed, spec.judge_noise, min_gap),
        "pool": {
            "annotators": spec.annotators,
            "scale_quartiles": np.percentile(pool.scales, [25, 50, 75]).tolist(),
            "offset_quartiles": np.percentile(pool.offsets, [25, 50, 75]).tolist(),
            # Each record's ``annotator`` indexes these, so any analysis can undo or redo the model.
            "scales": pool.scales.tolist(),
            "offsets": pool.offsets.tolist(),
        },
    }


def write_judged_labels(
    rows: list[dict], pop: PoPSpec, judge_noise: float, path: str | Path
) -> dict[str, Any]:
    """Judge PoP pairs drawn on the true margins and write them as a PoP label file; returns its summary.

    The pairs are drawn by ``pop``'s sampler (strategy, ``k``, ``min_gap``, seed) on the TRUE margins, as a
    person judging pairs sees the replies, not scores. Each pair is then judged (:func:`judge`), and
    ``pop.noise`` flips the judged label with that probability (Appendix F's injected noise). The file lists
    the sampler's stronger preference as ``id_a``; ``stronger`` is the label given. Deterministic in
    ``rows``, ``pop`` and ``judge_noise``: the same inputs write the same bytes.
    """
    from dataclasses import replace

    from popalign.pop.build import build_pop

    true = true_margins(rows)
    pairs = build_pop(true, replace(pop, noise=0.0))
    strong, weak = pairs.strong_idx, pairs.weak_idx
    # Streams of their own: the judgements and flips never move the sampler's pairs (stream of pop.seed).
    judge_seed, flip_seed = np.random.SeedSequence([pop.seed, 4]).spawn(2)
    right = judge(true[strong], true[weak], judge_noise, np.random.default_rng(judge_seed))
    flipped = np.random.default_rng(flip_seed).random(strong.size) < pop.noise
    a_wins = right ^ flipped
    ids = [str(r["id"]) for r in rows]
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for s, w, win in zip(strong.tolist(), weak.tolist(), a_wins.tolist(), strict=True):
            fh.write(json.dumps({"id_a": ids[s], "id_b": ids[w], "stronger": "a" if win else "b"}) + "\n")
    return {
        "pairs": int(strong.size),
        "judge_errors": int(np.count_nonzero(~right)),
        "expected_judge_error": float(judgement_error(true[strong] - true[weak], judge_noise).mean())
        if strong.size
        else float("nan"),
        "flipped": int(np.count_nonzero(flipped)),
        "label_errors": int(np.count_nonzero(~a_wins)),
        "shortfall": pairs.meta["shortfall"],
    }
