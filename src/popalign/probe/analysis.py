"""The probe's figures, paired contrasts and verdicts, from out-of-fold predicted margins.

**Unit of replication: the row, averaged over seeds.** Every row is scored out of fold by each seed's
heads; a row's credit (1 right sign, 0 wrong, 0.5 a zero margin; ties left out,
:func:`popalign.eval.discriminative.correctness`) is averaged over the seeds, which removes most of the
training noise (folds, initial weights, batch order, PoP pairs). A contrast of two arms is then a paired
Student-t test over the non-tied rows of their seed-averaged credit difference
(:func:`popalign.eval.stats.t_test`), and an equivalence a TOST over the same values
(:func:`popalign.eval.stats.tost`). The question is whether an objective helps on preferences like these,
so the rows, which are a sample of such preferences, are what must be replicated; a t test over the
seeds alone would be conditional on these 1,200 rows and far too narrow for that question. Cross-fitting
makes the rows' scores mildly dependent (they share training folds); with 5 folds and 20 seeds that is
averaged out, and is the usual assumption of cross-fitted estimates.

Correlations (Pearson, Spearman) are not sums over rows: their intervals are percentile bootstraps over
rows of the seed-mean correlation (the same row draws for both arms of a difference) and describe only.

**Verdicts** mirror the testbed's (:mod:`popalign.testbed.claims`): within the pre-registered primary
family and within the secondary one, the difference p-values and the equivalence p-values are each
Holm-adjusted (:func:`popalign.eval.stats.holm`); at family-wise level :data:`ALPHA` a directional
contrast is *reproduced* when the difference test rejects in the claimed direction, *not reproduced* when
it rejects the other way, *equivalent* when the equivalence test rejects instead, else *inconclusive*; an
"X ~ Y" contrast is *reproduced* when the equivalence test rejects. A contrast whose arm did not run
(the data has no scores or no margin column) is *not run*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from popalign.eval.discriminative import accuracy, correctness, cumulative_accuracy
from popalign.eval.stats import holm, pearson_rows, spearman_rows, t_test, tost

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_RUN = "reproduced", "not reproduced", "inconclusive", "not run"
EQUIVALENT = "equivalent"
ALPHA = 0.05
PRIMARY, SECONDARY = "primary", "secondary"
# Fixed before any run, as the testbed's: well below the paper's accuracy gap (+0.08, Table 1).
EQUIVALENCE_BOUNDS = {"accuracy": 0.02, "accuracy_low": 0.03, "accuracy_high": 0.03}
ROW_METRICS = ("accuracy", "accuracy_low", "accuracy_high")


@dataclass(frozen=True)
class Contrast:
    """``subject - other`` on a per-row ``metric``; ``kind`` better (subject > other) or equivalent."""

    id: str
    text: str
    subject: str
    other: str
    metric: str = "accuracy"
    kind: Literal["better", "equivalent"] = "better"
    family: str = PRIMARY
    source: str = ""


CONTRASTS: list[Contrast] = [
    Contrast("iter-vs-bt", "PoP-iter (Eq. 5) is more accurate than Bradley-Terry", "pop-iter", "bt",
             source="Table 1"),
    Contrast("random-vs-bt", "PoP-random (Eq. 5) is more accurate than Bradley-Terry", "pop-random", "bt",
             source="Table 1"),
    Contrast("iter-vs-steps", "PoP-iter's gain is not just more steps: it beats step-matched BT", "pop-iter",
             "bt-steps", source="control"),
    Contrast("iter-margin", "The margin matters: PoP-iter beats iterative PoP pairs without margin",
             "pop-iter", "pop-nomargin", source="control"),
    Contrast("random-margin", "The margin matters: PoP-random beats random PoP pairs without margin",
             "pop-random", "pop-nomargin-random", source="control"),
    Contrast("iter-vs-gt", "PoP-iter is more accurate than the margin from the scores", "pop-iter",
             "margin-gt", family=SECONDARY, source="Section 4.3"),
    Contrast("iter-low", "PoP-iter is more accurate than BT on low-margin preferences", "pop-iter", "bt",
             metric="accuracy_low", family=SECONDARY, source="Figure 2a"),
    Contrast("random-high", "PoP-random is more accurate than PoP-iter on high-margin preferences",
             "pop-random", "pop-iter", metric="accuracy_high", family=SECONDARY, source="Figure 2b"),
    Contrast("margin1-eq", "Margin-1 ~ Bradley-Terry in accuracy (bound 0.02)", "margin", "bt",
             kind="equivalent", family=SECONDARY, source="Table 1"),
    Contrast("sbt-vs-bt", "Scaled BT (Eq. 8) is more accurate than Bradley-Terry", "sbt", "bt",
             family=SECONDARY, source="Table 1"),
    Contrast("column-vs-bt", "An oracle margin column beats Bradley-Terry", "margin-column", "bt",
             family=SECONDARY, source="positive control"),
]  # fmt: skip
"""The contrasts, fixed before any run; the primary family is the question the probe answers."""


def margin_split(truth: np.ndarray) -> float:
    """The median non-tied margin: low-margin rows have margins up to it, high-margin rows above."""
    nonzero = truth[truth != 0]
    return float(np.median(nonzero)) if len(nonzero) else 0.0


def row_credit(predicted: np.ndarray, truth: np.ndarray, metric: str) -> np.ndarray:
    """Seed-averaged credit of each row counted by ``metric``, ``(n,)``; ``predicted`` is ``(S, N)``."""
    credit = np.stack([correctness(p, truth) for p in predicted]).mean(axis=0)
    keep = ~np.isnan(credit)
    if metric == "accuracy_low":
        keep &= truth <= margin_split(truth)
    elif metric == "accuracy_high":
        keep &= truth > margin_split(truth)
    return credit[keep]


def _correlation_draws(predicted: np.ndarray, truth: np.ndarray, draws: np.ndarray, rank: bool) -> np.ndarray:
    """The seed-mean correlation on each row of ``draws`` ``(R, n)``: ``(R,)``."""
    rows = spearman_rows if rank else pearson_rows
    return np.mean([rows(p[draws], truth[draws]) for p in predicted], axis=0)


CORRELATIONS = {"pearson": False, "spearman": True}  # name -> on ranks


def correlation_draws(predicted: np.ndarray, truth: np.ndarray, draws: np.ndarray) -> dict[str, np.ndarray]:
    """Per correlation: ``(1 + R,)`` seed-mean values, on all rows first, then on each row draw."""
    rows = np.concatenate([np.arange(len(truth))[None], draws])
    return {name: _correlation_draws(predicted, truth, rows, rank) for name, rank in CORRELATIONS.items()}


def _interval(values: np.ndarray) -> dict[str, float]:
    low, high = np.nanquantile(values[1:], [0.025, 0.975])
    return {"mean": float(values[0]), "ci_low": float(low), "ci_high": float(high)}


def arm_figures(predicted: np.ndarray, truth: np.ndarray, corr: dict[str, np.ndarray]) -> dict[str, Any]:
    """One arm's figures: seed means with intervals (t over rows; correlations: bootstrap over rows)."""
    out: dict[str, Any] = {
        metric: t_test_dict(row_credit(predicted, truth, metric)) for metric in ROW_METRICS
    }
    out.update({name: _interval(values) for name, values in corr.items()})
    out["per_seed_accuracy"] = [accuracy(p, truth) for p in predicted]
    return out


def t_test_dict(values: np.ndarray) -> dict[str, Any]:
    res = t_test(values)
    return {"mean": res.mean, "ci_low": res.low, "ci_high": res.high, "n": res.n}


def judge(contrasts: list[Contrast], predicted: dict[str, np.ndarray], truth: np.ndarray) -> list[dict]:
    """Each contrast's paired difference, its tests, Holm within its family, and its verdict."""
    results = []
    for c in contrasts:
        res: dict[str, Any] = dict(vars(c))
        if c.subject not in predicted or c.other not in predicted:
            results.append({**res, "verdict": NOT_RUN})
            continue
        diff = row_credit(predicted[c.subject], truth, c.metric) - row_credit(
            predicted[c.other], truth, c.metric
        )
        test = t_test(diff)
        bound = EQUIVALENCE_BOUNDS[c.metric]
        disagree = _disagreement(predicted[c.subject], predicted[c.other], truth)
        res.update(
            difference=test.mean, ci_low=test.low, ci_high=test.high, half_width=(test.high - test.low) / 2,
            n=test.n, p_difference=test.p, p_equivalence=tost(diff, bound), bound=bound,
            disagreement=disagree,
        )  # fmt: skip
        results.append(res)
    for family in (PRIMARY, SECONDARY):
        members = [r for r in results if r["family"] == family and r.get("verdict") != NOT_RUN]
        for key in ("p_difference", "p_equivalence"):
            adjusted = holm([r[key] for r in members])
            for r, p in zip(members, adjusted, strict=True):
                r[f"{key}_adjusted"] = float(p)
    for r in results:
        if r.get("verdict") == NOT_RUN:
            continue
        differs = r["p_difference_adjusted"] < ALPHA
        same = r["p_equivalence_adjusted"] < ALPHA
        if r["kind"] == "equivalent":
            r["verdict"] = REPRODUCED if same else NOT_REPRODUCED if differs else INCONCLUSIVE
        elif differs:
            r["verdict"] = REPRODUCED if r["difference"] > 0 else NOT_REPRODUCED
        else:
            r["verdict"] = EQUIVALENT if same else INCONCLUSIVE
    return results


def _disagreement(a: np.ndarray, b: np.ndarray, truth: np.ndarray) -> float:
    """The share of (seed, non-tied row) where the two arms' signs differ: ``q`` of the power formula."""
    keep = truth != 0
    return float(np.mean(np.sign(a[:, keep]) != np.sign(b[:, keep])))


def curves(predicted: np.ndarray, truth: np.ndarray) -> dict[str, list]:
    """Figure 2's lower and upper cumulative accuracy, averaged over seeds (all seeds' rows pooled)."""
    out = cumulative_accuracy(
        predicted.ravel(), np.tile(truth, len(predicted)), grid=np.unique(truth[truth != 0])
    )
    return {k: [None if np.isnan(x) else float(x) for x in v] for k, v in out.items()}


def analyse(
    predicted: dict[str, np.ndarray], truth: np.ndarray, n_resamples: int = 200, seed: int = 0
) -> dict:
    """Every arm's figures and curves, and every contrast's verdict (JSON-ready).

    ``n_resamples`` row draws for the correlations' intervals, which describe and decide nothing (the
    verdicts' t tests need none); 200 keep a rerun from the feature cache within its two minutes.
    """
    draws = np.random.default_rng(seed).integers(0, len(truth), size=(n_resamples, len(truth)))
    corr = {name: correlation_draws(p, truth, draws) for name, p in predicted.items()}
    arms = {name: arm_figures(p, truth, corr[name]) for name, p in predicted.items()}
    for name, p in predicted.items():
        arms[name]["curves"] = curves(p, truth)
    contrasts = judge(CONTRASTS, predicted, truth)
    for r in contrasts:
        if r["verdict"] != NOT_RUN:
            a, b = corr[r["subject"]], corr[r["other"]]
            r["correlations"] = {name: _interval(a[name] - b[name]) for name in CORRELATIONS}
    return {"arms": arms, "contrasts": contrasts, "margin_split": margin_split(truth)}
