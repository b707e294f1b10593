"""The paper's claims, what this run measured for each, and a verdict by a rule fixed in advance.

**Unit of replication: the seed.** Each seed trains its own models (data order, PoP pairs, sampled
replies), so a comparison gives one number per seed: the subject's figure minus the other's, both on every
test item of that seed. Verdicts rest on a Student-t test over those seed-level differences
(:func:`popalign.eval.stats.t_test`, ``n - 1`` degrees of freedom): with the 3-5 seeds a CPU affords, a
percentile bootstrap over seeds would be far too narrow, and the t interval is exact for normal
seed-level differences. The inference is conditional on the fixed test set (every seed is scored on the
same test items). The tables' intervals for a single method's figure stay the percentile bootstrap over
seeds and test items together (:func:`bootstrap_stat`): they describe, they do not decide.

**Claims.** "X is highest" compares X, in each seed, with the best of the other methods *in that seed*
(the rival is re-selected per seed, never fixed on the point estimates); "X is lowest" mirrors it; "X is
better than Y" and "X is above a threshold" compare with a named run or number; "X ~ Y" is an equivalence
within ``+-tolerance``.

**Verdicts** (:func:`decide`). Every claim gets two tests: the two-sided t test of "no difference" and
the TOST equivalence test (:func:`popalign.eval.stats.tost`) at its bound (the tolerance of an "X ~ Y"
claim; otherwise :data:`EQUIVALENCE_BOUNDS`, fixed per metric before any run). Within each family of
verdicts (the pre-registered primary contrasts, and the rest), each kind of test is Holm-adjusted
(:func:`popalign.eval.stats.holm`); at family-wise level :data:`ALPHA`:

- a directional claim is *reproduced* when the difference test rejects and the mean lies in the claimed
  direction, *not reproduced* when it rejects the other way, *equivalent* when the equivalence test
  rejects instead (no difference larger than the bound: the claim is not supported), else *inconclusive*;
- an "X ~ Y" claim is *reproduced* when the equivalence test rejects, *not reproduced* when the
  difference test rejects, else *inconclusive*;
- *unresolved*: the instrument cannot measure the figure as the claim needs (e.g. a matched-KL value read
  off a straight line between distant checkpoints); no test is run and it is left out of the family;
- *not run*: a method the claim needs was not trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from popalign.eval.stats import holm, t_test, tost
from popalign.testbed.results import GENERATIVE, RunResult, margin_split, metric, metric_batch
from popalign.testbed.settings import (
    BASELINE,
    NOMARGIN,
    NOMARGIN_CONTROLS,
    ORACLE,
    PAPER_METHODS,
    STEPS_MATCHED,
    STEPS_MATCHED_CONTROLS,
)

NOMARGIN_ITER = NOMARGIN_CONTROLS["dpo-pop-iter"]
STEPS_MATCHED_ITER = STEPS_MATCHED_CONTROLS["dpo-pop-iter"]

Kind = Literal["best", "worst", "better", "above", "equivalent"]
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_RUN = "reproduced", "not reproduced", "inconclusive", "not run"
EQUIVALENT, UNRESOLVED = "equivalent", "unresolved"
CONFIDENCE = 0.95
ALPHA = 0.05  # family-wise error rate of each family of verdicts (Holm)
PRIMARY, SECONDARY = "primary", "secondary"

# The smallest differences this testbed treats as practically meaningful, per metric: the bounds of the
# equivalence tests behind every "no difference" statement. Fixed before any run, from the paper's scale:
# each is well below the effects the paper reports (accuracy +0.08, correlations +0.05, win rate +14
# points, Tables 1 and 3); r* moves in steps of 0.5 on the score grid, so 0.05 is a tenth of a step.
EQUIVALENCE_BOUNDS = {
    "accuracy": 0.02,
    "pearson": 0.02,
    "spearman": 0.02,
    "accuracy_low": 0.03,
    "accuracy_high": 0.03,
    "win_rate": 0.03,
    "median_advantage": 0.1,
    "mean_reward": 0.05,
    "reward_at_kl": 0.05,
}

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
    control: str = ""


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
    Claim("steps-acc", "DPO-PoP-iter's accuracy is not just more steps: it beats vanilla DPO given its step "
          "count", "control", "better", "accuracy", "dpo-pop-iter", STEPS_MATCHED_ITER, group="control"),
    Claim("steps-winrate", "DPO-PoP-random's win rate is not just more steps: it beats step-matched DPO",
          "control", "better", "win_rate", "dpo-pop-random", STEPS_MATCHED, group="control"),
    Claim("nomargin-winrate", "The PoP margin matters: DPO-PoP-random beats PoP sampling without margin "
          "(win rate)", "control", "better", "win_rate", "dpo-pop-random", NOMARGIN, group="control",
          control="oracle-winrate"),
    Claim("nomargin-spearman", "The PoP margin matters: DPO-PoP-random has a higher Spearman than PoP "
          "sampling without margin", "control", "better", "spearman", "dpo-pop-random", NOMARGIN,
          group="control", control="oracle-spearman"),
    Claim("nomargin-iter-accuracy", "The PoP margin matters: DPO-PoP-iter is more accurate than its PoP "
          "sampling without margin", "control", "better", "accuracy", "dpo-pop-iter", NOMARGIN_ITER,
          group="control", control="oracle-accuracy"),
    Claim("nomargin-iter-spearman", "The PoP margin matters: DPO-PoP-iter has a higher Spearman than its PoP "
          "sampling without margin", "control", "better", "spearman", "dpo-pop-iter", NOMARGIN_ITER,
          group="control", control="oracle-spearman"),
    Claim("oracle-spearman", "Positive control: the oracle margin (from r*) raises the Spearman correlation "
          "of implicit and true margins over vanilla DPO", "positive control", "better", "spearman", ORACLE,
          BASELINE, group="positive-control"),
    Claim("oracle-accuracy", "Positive control: the oracle margin (from r*) raises test accuracy over "
          "vanilla DPO", "positive control", "better", "accuracy", ORACLE, BASELINE,
          group="positive-control"),
    Claim("oracle-over-gt", "The oracle margin beats the score margin (DPO-margin-gt) in Spearman: "
          "calibration of the margin matters", "control", "better", "spearman", ORACLE, "dpo-margin-gt",
          group="control"),
    Claim("oracle-winrate", "Positive control: the oracle margin's replies beat vanilla DPO's (win rate "
          "above 50%)", "positive control", "above", "win_rate", ORACLE, threshold=0.5,
          group="positive-control"),
]  # fmt: skip


@dataclass
class Verdict:
    """A claim beside its measurement: ``difference`` = subject minus ``against`` (a method or threshold).

    ``difference``, ``low``, ``high``: the mean seed-level difference and its t interval; ``per_seed``: the
    differences themselves. ``p_difference`` / ``p_equivalence``: the raw p-values of the two-sided t test
    and of the TOST test at ``bound``; the ``_adjusted`` ones are Holm's within ``family`` (:func:`decide`).
    ``note``: why a verdict is unresolved, or what else a reader must know.
    """

    claim: Claim
    verdict: str
    subject_value: float = float("nan")
    against: str = ""
    against_value: float = float("nan")
    difference: float = float("nan")
    low: float = float("nan")
    high: float = float("nan")
    per_seed: tuple[float, ...] = ()
    bound: float = float("nan")
    p_difference: float = float("nan")
    p_equivalence: float = float("nan")
    p_difference_adjusted: float = float("nan")
    p_equivalence_adjusted: float = float("nan")
    family: str = SECONDARY
    note: str = ""
    where: str = ""
    tested: bool = field(default=False, repr=False)

    @property
    def key(self) -> str:
        """The name in a pre-registration: the claim id, with ``@budget`` for a matched-KL verdict."""
        return f"{self.claim.id}@{self.where}" if self.where else self.claim.id


def bound_of(claim: Claim) -> float:
    """The equivalence bound of ``claim``: its tolerance if it states one, else its metric's."""
    return claim.tolerance if claim.tolerance > 0 else EQUIVALENCE_BOUNDS[claim.metric]


def measured(
    claim: Claim,
    differences: Iterable[float],
    subject_value: float,
    against: str,
    against_value: float,
) -> Verdict:
    """The tests of ``claim`` on its seed-level ``differences`` (subject minus other); verdict pending."""
    d = np.asarray(list(differences), dtype=np.float64)
    test = t_test(d, CONFIDENCE)
    bound = bound_of(claim)
    return Verdict(
        claim,
        INCONCLUSIVE,
        subject_value,
        against,
        against_value,
        test.mean,
        test.low,
        test.high,
        tuple(float(x) for x in d),
        bound,
        test.p,
        tost(d, bound),
        tested=True,
    )


def _adjust(verdicts: list[Verdict], name: str) -> None:
    adjusted = holm([getattr(v, name) for v in verdicts])
    for v, p in zip(verdicts, adjusted, strict=True):
        setattr(v, name + "_adjusted", float(p))


def _significant(p: float) -> bool:
    return not math.isnan(p) and p < ALPHA


def decide(verdicts: list[Verdict], primary: Iterable[str] = ()) -> list[Verdict]:
    """Holm-adjust each family's p-values and set every tested verdict by the module's rule (in place).

    ``primary``: ids of the pre-registered contrasts (their family; all other tested verdicts form the
    second). A directional claim's direction is its sign: ``worst`` claims want a negative difference.
    """
    wanted = set(primary)
    tested = [v for v in verdicts if v.tested]
    for v in tested:
        v.family = PRIMARY if v.key in wanted else SECONDARY
    for family in (PRIMARY, SECONDARY):
        members = [v for v in tested if v.family == family]
        if members:
            _adjust(members, "p_difference")
            _adjust(members, "p_equivalence")
    for v in tested:
        differs = _significant(v.p_difference_adjusted)
        same = _significant(v.p_equivalence_adjusted)
        if v.claim.kind == "equivalent":
            v.verdict = REPRODUCED if same else NOT_REPRODUCED if differs else INCONCLUSIVE
            continue
        sign = -1.0 if v.claim.kind == "worst" else 1.0
        if differs:
            v.verdict = REPRODUCED if sign * v.difference > 0 else NOT_REPRODUCED
        else:
            v.verdict = EQUIVALENT if same else INCONCLUSIVE
    return gate(verdicts)


def gate(verdicts: list[Verdict]) -> list[Verdict]:
    """Withdraw the verdict of every claim whose positive control was not detected (in place).

    A claim about a margin's effect names its positive control (``Claim.control``: the oracle margin's
    effect on the same kind of figure, at the same KL budget for matched-KL claims). An instrument that
    cannot see the oracle margin's effect cannot be trusted to see the PoP margin's, so unless the control
    is *reproduced*, the claim is *unresolved*, whatever its own tests said (they stay in the record).
    """
    by_key = {v.key: v for v in verdicts}
    for v in verdicts:
        if not v.claim.control or not v.tested:
            continue
        control = by_key.get(f"{v.claim.control}@{v.where}" if v.where else v.claim.control)
        if control is None or control.verdict != REPRODUCED:
            seen = control.verdict if control is not None else NOT_RUN
            v.note = (
                f"positive control {v.claim.control} {seen}: the testbed cannot be shown to see a margin here"
            )
            v.verdict = UNRESOLVED
    return verdicts


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


def per_seed_metric(runs: list[RunResult], name: str, split: float) -> dict[int, float]:
    """A figure of each seed's run on every test item: ``{seed: value}``."""
    return {r.seed: metric(r, name, None, split) for r in runs}


def judge_claim(claim: Claim, results: dict[str, list[RunResult]]) -> Verdict:
    """Measure ``claim`` on ``results`` (run name -> finished seeds); the verdict waits for :func:`decide`."""
    if claim.subject not in results or (claim.other and claim.other not in results):
        return Verdict(claim, NOT_RUN)
    if claim.metric in GENERATIVE and any(r.rewards is None for runs in results.values() for r in runs):
        return Verdict(claim, NOT_RUN)  # replies were not judged (no ground-truth reward)
    split = margin_split(results[claim.subject][0].truth)
    subject = per_seed_metric(results[claim.subject], claim.metric, split)
    if claim.kind == "above":
        seeds = sorted(subject)
        mean = float(np.mean([subject[s] for s in seeds]))
        differences = [subject[s] - claim.threshold for s in seeds]
        return measured(claim, differences, mean, f"{claim.threshold:g}", claim.threshold)
    if claim.kind in ("best", "worst"):
        pool = [m for m in PAPER_METHODS if m in results and m != claim.subject]
        if claim.metric in ("win_rate", "median_advantage"):
            pool = [m for m in pool if m != BASELINE]  # the baseline's own win rate is 0.5 by definition
        if not pool:
            return Verdict(claim, NOT_RUN)
        others = {m: per_seed_metric(results[m], claim.metric, split) for m in pool}
        seeds = sorted(set(subject).intersection(*others.values()))
        pick = max if claim.kind == "best" else min
        # The rival is whichever other method leads in that seed: re-selected per seed, never fixed.
        rivals = [pick(pool, key=lambda m, s=s: others[m][s]) for s in seeds]
        rival_values = [others[m][s] for m, s in zip(rivals, seeds, strict=True)]
        names = sorted(set(rivals))
        against = names[0] if len(names) == 1 else f"best other per seed ({', '.join(names)})"
        return measured(
            claim,
            [subject[s] - v for s, v in zip(seeds, rival_values, strict=True)],
            float(np.mean([subject[s] for s in seeds])),
            against,
            float(np.mean(rival_values)),
        )
    other = per_seed_metric(results[claim.other], claim.metric, split)
    seeds = sorted(set(subject) & set(other))
    return measured(
        claim,
        [subject[s] - other[s] for s in seeds],
        float(np.mean([subject[s] for s in seeds])),
        claim.other,
        float(np.mean([other[s] for s in seeds])),
    )


def judge_claims(results: dict[str, list[RunResult]], claims: list[Claim] | None = None) -> list[Verdict]:
    """Every claim measured, in the order of :data:`CLAIMS` (verdicts pending :func:`decide`)."""
    return [judge_claim(c, results) for c in (CLAIMS if claims is None else claims)]
