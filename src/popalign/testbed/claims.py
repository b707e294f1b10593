"""The paper's claims, what this run measured for each, and a verdict by a rule fixed in advance.

**Intervals.** Every interval is a 95% percentile bootstrap over *seeds and test items together*: each
resample draws the seeds with replacement and the test items (preferences / prompts) with replacement, the
same draw for every method (so comparisons are paired by seed and by item), recomputes each figure on the
drawn items for each drawn seed, and averages over the drawn seeds. With one seed it is the usual item
bootstrap. It covers both sources of chance here: which seed trained the model, and which test items were
drawn.

**Verdicts.** For a claim about a difference ``d`` (e.g. PoP-iter's accuracy minus the runner-up's):

- *reproduced*: the claimed direction holds in the mean over seeds **and** the interval of ``d`` excludes 0;
- *not reproduced*: the opposite direction holds with an interval excluding 0;
- *inconclusive*: the interval contains 0 (this many seeds and test items cannot tell).

"X is highest" compares X with the best of the other methods (the runner-up when X leads); "X is lowest"
mirrors it. "X ~ Y" (equivalence) is *reproduced* when the whole interval of ``X - Y`` lies within the
tolerance ``+-delta``, *not reproduced* when it excludes 0 without lying within the tolerance, else
*inconclusive*. A claim whose methods were not run is *not run*.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from popalign.testbed.results import GENERATIVE, RunResult, margin_split, metric, metric_batch
from popalign.testbed.settings import BASELINE, NOMARGIN, PAPER_METHODS, STEPS_MATCHED

Kind = Literal["best", "worst", "better", "above", "equivalent"]
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_RUN = "reproduced", "not reproduced", "inconclusive", "not run"
CONFIDENCE = 0.95

METRIC_NAMES = {
    "accuracy": "accuracy",
    "pearson": "Pearson",
    "spearman": "Spearman",
    "accuracy_low": "accuracy on low-margin preferences",
    "accuracy_high": "accuracy on high-margin preferences",
    "win_rate": "win rate vs vanilla DPO",
    "median_advantage": "median advantage vs vanilla DPO",
    "mean_reward": "mean r* of replies",
    "reward_at_kl": "mean r* at matched KL",
}


@dataclass(frozen=True)
class Claim:
    """One statement of the paper (or one control question), testable on the runs.

    ``kind``: ``best``/``worst`` (subject has the highest/lowest ``metric`` among the paper's methods),
    ``better`` (subject > other), ``above`` (subject > ``threshold``), ``equivalent`` (|subject - other|
    within ``tolerance``). ``paper``: what the paper reports (LLaMA3.2-3B, Tables 1 and 3, Figure 2).
    """

    id: str
    text: str
    source: str
    kind: Kind
    metric: str
    subject: str
    other: str | None = None
    threshold: float = 0.0
    tolerance: float = 0.0
    paper: str = ""
    group: str = "paper"


CLAIMS: list[Claim] = [
    Claim("acc-best", "DPO-PoP-iter has the highest test accuracy", "Table 1", "best", "accuracy",
          "dpo-pop-iter", paper="0.79 vs at most 0.72"),
    Claim("pearson-best", "DPO-PoP-random has the highest Pearson correlation", "Table 1", "best", "pearson",
          "dpo-pop-random", paper="0.3598 vs at most 0.3489"),
    Claim("spearman-best", "DPO-PoP-random has the highest Spearman correlation", "Table 1", "best",
          "spearman", "dpo-pop-random", paper="0.3674 vs at most 0.3644"),
    Claim("iter-pearson-lowest", "DPO-PoP-iter has the lowest Pearson correlation", "Table 1", "worst",
          "pearson", "dpo-pop-iter", paper="0.2471 vs at least 0.3018"),
    Claim("iter-beats-gt", "DPO-PoP-iter is more accurate than DPO-margin-gt, which sees the true margins",
          "Section 4.3", "better", "accuracy", "dpo-pop-iter", "dpo-margin-gt", paper="0.79 vs 0.71"),
    Claim("margin1-acc", "DPO-margin-1 ~ vanilla DPO in accuracy (tolerance 0.02)", "Table 1", "equivalent",
          "accuracy", "dpo-margin", "dpo", tolerance=0.02, paper="0.71 vs 0.71"),
    Claim("margin1-pearson", "DPO-margin-1 ~ vanilla DPO in Pearson (tolerance 0.02)", "Table 1",
          "equivalent", "pearson", "dpo-margin", "dpo", tolerance=0.02, paper="0.3019 vs 0.3018"),
    Claim("winrate-best", "DPO-PoP-random has the highest win rate against vanilla DPO", "Table 3", "best",
          "win_rate", "dpo-pop-random", paper="64% vs at most 63%"),
    Claim("madv-best", "DPO-PoP-random has the highest median advantage over vanilla DPO", "Table 3", "best",
          "median_advantage", "dpo-pop-random", paper="0.7344 vs at most 0.6875"),
    Claim("random-beats-dpo", "DPO-PoP-random's replies beat vanilla DPO's (win rate above 50%)", "Table 3",
          "above", "win_rate", "dpo-pop-random", threshold=0.5, paper="64%"),
    Claim("random-gen-over-iter", "DPO-PoP-random generates better than DPO-PoP-iter (win rate)",
          "Section 4.4", "better", "win_rate", "dpo-pop-random", "dpo-pop-iter", paper="64% vs 57%"),
    Claim("tradeoff-acc", "DPO-PoP-iter is more accurate than DPO-PoP-random (the trade-off)",
          "Section 4.5", "better", "accuracy", "dpo-pop-iter", "dpo-pop-random", paper="0.79 vs 0.71"),
    Claim("fig2-low", "DPO-PoP-iter is more accurate than vanilla DPO on low-margin preferences",
          "Figure 2a", "better", "accuracy_low", "dpo-pop-iter", "dpo", paper="higher lower curve"),
    Claim("fig2-high", "DPO-PoP-random is more accurate than DPO-PoP-iter on high-margin preferences",
          "Figure 2b", "better", "accuracy_high", "dpo-pop-random", "dpo-pop-iter",
          paper="PoP-iter's upper curve drops"),
    Claim("steps-acc", "DPO-PoP-iter's accuracy is not just more steps: it beats step-matched vanilla DPO",
          "control", "better", "accuracy", "dpo-pop-iter", STEPS_MATCHED, group="control"),
    Claim("steps-winrate", "DPO-PoP-random's win rate is not just more steps: it beats step-matched DPO",
          "control", "better", "win_rate", "dpo-pop-random", STEPS_MATCHED, group="control"),
    Claim("nomargin-winrate", "The PoP margin matters: DPO-PoP-random beats PoP sampling without margin "
          "(win rate)", "control", "better", "win_rate", "dpo-pop-random", NOMARGIN, group="control"),
    Claim("nomargin-spearman", "The PoP margin matters: DPO-PoP-random has a higher Spearman than PoP "
          "sampling without margin", "control", "better", "spearman", "dpo-pop-random", NOMARGIN,
          group="control"),
]  # fmt: skip


@dataclass
class Verdict:
    """A claim beside its measurement: ``difference`` = subject minus ``against`` (a method or threshold)."""

    claim: Claim
    verdict: str
    subject_value: float = float("nan")
    against: str = ""
    against_value: float = float("nan")
    difference: float = float("nan")
    low: float = float("nan")
    high: float = float("nan")


def seed_mean(runs: list[RunResult], name: str, idx: np.ndarray | None = None, split: float | None = None):
    """The mean of a figure over a method's seeds."""
    return float(np.mean([metric(r, name, idx, split) for r in runs]))


def _paired(a: list[RunResult], b: list[RunResult] | None) -> tuple[list[RunResult], list[RunResult] | None]:
    if b is None:
        return a, None
    seeds = sorted({r.seed for r in a} & {r.seed for r in b})
    return [r for r in a if r.seed in seeds], [r for r in b if r.seed in seeds]


def bootstrap_stat(
    a: list[RunResult],
    b: list[RunResult] | None,
    per_run: Callable[[RunResult, np.ndarray], np.ndarray],
    *,
    constant: float = 0.0,
    n_resamples: int = 1000,
    seed: int = 0,
    min_defined: float = 0.0,
) -> tuple[float, float, float]:
    """``(value, low, high)`` of ``mean_seeds(a) - mean_seeds(b)`` (or ``- constant`` when ``b`` is None).

    ``per_run(run, idx)`` is the figure of one run on each row of item draws ``idx`` ``(R, n)``: ``(R,)``.
    Seeds and test items are resampled together (see the module doc); ``a`` and ``b`` are paired by seed.
    Resamples where the figure is undefined are left out; when fewer than ``min_defined`` of them remain
    the interval is undefined (nan), since the rest would describe a selected subset.
    """
    a, b = _paired(a, b)
    n_items, n_seeds = len(a[0].truth), len(a)

    def per_seed(idx: np.ndarray) -> np.ndarray:
        """The difference on each row of item draws ``idx`` (R, n), for each seed: (n_seeds, R)."""
        d = np.stack([per_run(r, idx) for r in a])
        return d - (constant if b is None else np.stack([per_run(r, idx) for r in b]))

    value = float(per_seed(np.arange(n_items)[None, :])[:, 0].mean())
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n_items, size=(n_resamples, n_items))
    seeds = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    # Resample r averages the differences of its drawn seeds, each on the same drawn items.
    draws = per_seed(items)[seeds, np.arange(n_resamples)[:, None]].mean(axis=1)
    defined = ~np.isnan(draws)
    draws = draws[defined]
    if not len(draws) or defined.mean() < min_defined:
        return value, float("nan"), float("nan")
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return value, float(low), float(high)


def bootstrap_difference(
    a: list[RunResult],
    b: list[RunResult] | None,
    name: str,
    *,
    constant: float = 0.0,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """:func:`bootstrap_stat` of the figure ``name`` (:func:`~popalign.testbed.results.metric_batch`)."""
    split = margin_split(_paired(a, b)[0][0].truth)
    return bootstrap_stat(
        a,
        b,
        lambda r, idx: metric_batch(r, name, idx, split),
        constant=constant,
        n_resamples=n_resamples,
        seed=seed,
    )


def bootstrap_value(runs: list[RunResult], name: str, *, n_resamples: int = 1000, seed: int = 0):
    """``(mean over seeds, low, high)`` of one figure of one method (the tables' intervals)."""
    return bootstrap_difference(runs, None, name, n_resamples=n_resamples, seed=seed)


def direction_verdict(low: float, high: float) -> str:
    if low > 0:
        return REPRODUCED
    if high < 0:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def judge_claim(
    claim: Claim, results: dict[str, list[RunResult]], *, n_resamples: int = 1000, seed: int = 0
) -> Verdict:
    """Measure ``claim`` on ``results`` (run name -> finished seeds) and apply the verdict rule."""
    if claim.subject not in results or (claim.other and claim.other not in results):
        return Verdict(claim, NOT_RUN)
    if claim.metric in GENERATIVE and any(r.rewards is None for runs in results.values() for r in runs):
        return Verdict(claim, NOT_RUN)  # replies were not judged (no ground-truth reward)
    subject = results[claim.subject]
    boot = {"n_resamples": n_resamples, "seed": seed}
    if claim.kind in ("best", "worst"):
        pool = [m for m in PAPER_METHODS if m in results and m != claim.subject]
        if claim.metric in ("win_rate", "median_advantage"):
            pool = [m for m in pool if m != BASELINE]  # the baseline's own win rate is 0.5 by definition
        if not pool:
            return Verdict(claim, NOT_RUN)
        sign = 1.0 if claim.kind == "best" else -1.0
        means = {m: seed_mean(results[m], claim.metric) for m in pool}
        rival = max(pool, key=lambda m: sign * means[m])
        value, low, high = bootstrap_difference(subject, results[rival], claim.metric, **boot)
        verdict = direction_verdict(*sorted((sign * low, sign * high)))
        return Verdict(
            claim, verdict, seed_mean(subject, claim.metric), rival, means[rival], value, low, high
        )
    if claim.kind == "above":
        value, low, high = bootstrap_difference(subject, None, claim.metric, constant=claim.threshold, **boot)
        return Verdict(
            claim, direction_verdict(low, high), value + claim.threshold, f"{claim.threshold:g}",
            claim.threshold, value, low, high,
        )  # fmt: skip
    other = results[claim.other]
    value, low, high = bootstrap_difference(subject, other, claim.metric, **boot)
    if claim.kind == "better":
        verdict = direction_verdict(low, high)
    elif -claim.tolerance <= low and high <= claim.tolerance:
        verdict = REPRODUCED
    else:
        verdict = NOT_REPRODUCED if (low > 0 or high < 0) else INCONCLUSIVE
    return Verdict(
        claim, verdict, seed_mean(subject, claim.metric), claim.other, seed_mean(other, claim.metric),
        value, low, high,
    )  # fmt: skip


def judge_claims(
    results: dict[str, list[RunResult]], claims: list[Claim] | None = None, **boot
) -> list[Verdict]:
    """Every claim's verdict, in the order of :data:`CLAIMS`."""
    return [judge_claim(c, results, **boot) for c in (CLAIMS if claims is None else claims)]
