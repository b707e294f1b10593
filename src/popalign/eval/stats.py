"""Statistics every evaluation shares: correlations, win rates and seeded bootstrap intervals.

Arrays in, numbers out; correlations are scipy's (``scipy.stats.pearsonr``, ``rankdata``). Intervals are
percentile bootstrap intervals: resample the examples with replacement ``n_resamples`` times, recompute the
statistic, and take the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A statistic with its bootstrap interval; ``nan`` where it is undefined (e.g. a constant input)."""

    value: float
    low: float
    high: float
    n: int
    confidence: float = DEFAULT_CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``nan`` becomes ``None`` (JSON has no NaN)."""
        return {
            "value": _finite_or_none(self.value),
            "ci_low": _finite_or_none(self.low),
            "ci_high": _finite_or_none(self.high),
            "n": self.n,
            "confidence": self.confidence,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Estimate:
        def f(x: Any) -> float:
            return float("nan") if x is None else float(x)

        return cls(
            f(d.get("value")),
            f(d.get("ci_low")),
            f(d.get("ci_high")),
            int(d.get("n", 0)),
            float(d.get("confidence", DEFAULT_CONFIDENCE)),
        )

    def format(self, digits: int = 4, scale: float = 1.0) -> str:
        """``0.7100 [0.6500, 0.7700]``; ``-`` when undefined."""
        if math.isnan(self.value):
            return "-"
        text = f"{self.value * scale:.{digits}f}"
        if not (math.isnan(self.low) or math.isnan(self.high)):
            text += f" [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"
        return text


def _finite_or_none(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _correlation_defined(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rows of ``(..., n)`` arrays where a correlation exists: two or more items, neither side constant."""
    if x.shape[-1] < 2:
        return np.zeros(x.shape[:-1], dtype=bool)
    return (np.ptp(x, axis=-1) > 0) & (np.ptp(y, axis=-1) > 0)


def pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair of two ``(R, n)`` arrays (``scipy.stats.pearsonr``): ``(R,)``.

    ``nan`` where a row is constant or ``n < 2`` (scipy would warn there, once per row).
    """
    from scipy.stats import pearsonr

    x, y = np.atleast_2d(np.asarray(x, dtype=np.float64)), np.atleast_2d(np.asarray(y, dtype=np.float64))
    out = np.full(x.shape[0], np.nan)
    ok = _correlation_defined(x, y)
    if ok.any():
        out[ok] = np.clip(pearsonr(x[ok], y[ok], axis=1).statistic, -1.0, 1.0)
    return out


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row pair: Pearson of the tie-averaged ranks (``scipy.stats.rankdata``)."""
    from scipy.stats import rankdata

    x, y = np.atleast_2d(np.asarray(x, dtype=np.float64)), np.atleast_2d(np.asarray(y, dtype=np.float64))
    return pearson_rows(rankdata(x, axis=1), rankdata(y, axis=1))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two ``(n,)`` arrays; ``nan`` when either is constant or ``n < 2``."""
    return float(pearson_rows(x, y)[0])


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (ties share their mean rank), as ``scipy.stats.spearmanr``."""
    return float(spearman_rows(x, y)[0])


def mean_rows(x: np.ndarray) -> np.ndarray:
    """The mean of each row of ``x`` ``(R, n)``, leaving out ``nan`` (a tie's accuracy credit); ``nan`` for a
    row with nothing left."""
    x = np.asarray(x, dtype=np.float64)
    counts = (~np.isnan(x)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.nansum(x, axis=1) / counts, np.nan)


def mean(values: np.ndarray) -> float:
    """The mean, leaving out ``nan`` (see :func:`mean_rows`)."""
    return float(mean_rows(np.asarray(values, dtype=np.float64)[None, :])[0])


def win_rate_rows(advantages: np.ndarray) -> np.ndarray:
    """Share of positive advantages in each row of ``(R, n)``, a tie (advantage exactly 0) counting half."""
    a = np.asarray(advantages, dtype=np.float64)
    if a.shape[1] == 0:
        return np.full(len(a), np.nan)
    return ((a > 0).sum(axis=1) + 0.5 * (a == 0).sum(axis=1)) / a.shape[1]


def win_rate(advantages: np.ndarray) -> float:
    """Share of positive advantages, a tie (advantage exactly 0) counting as half a win."""
    return float(win_rate_rows(np.asarray(advantages, dtype=np.float64)[None, :])[0])


def median_rows(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return np.median(v, axis=1) if v.shape[1] else np.full(len(v), np.nan)


def median(values: np.ndarray) -> float:
    return float(median_rows(np.asarray(values, dtype=np.float64)[None, :])[0])


# The metrics, each a vectorised function of a batch of resamples (``(R, n)`` arrays in, ``(R,)`` out) that
# eval's bootstrap and the testbed's seed-level figures share, keyed by its one-sample form.
ROWS: dict[Callable[..., float], Callable[..., np.ndarray]] = {
    pearson: pearson_rows,
    spearman: spearman_rows,
    mean: mean_rows,
    win_rate: win_rate_rows,
    median: median_rows,
}


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: np.ndarray,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*arrays)``.

    The arrays (each ``(n,)``) are resampled jointly: one set of row indices per resample, so paired data
    (predicted and true margins) stay paired. Resamples where the statistic is undefined (``nan``, e.g. a
    constant resample for a correlation) are left out. Same seed, same interval. Statistics in :data:`ROWS`
    are computed on all resamples in one call.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("bootstrap_ci: the arrays differ in length")
    if n == 0 or n_resamples < 1:
        return float("nan"), float("nan")
    draws = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    rows = ROWS.get(statistic)
    if rows is not None:
        values = rows(*(a[draws] for a in arrays))
    else:
        values = np.array([statistic(*(a[idx] for a in arrays)) for idx in draws], dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def estimate(
    statistic: Callable[..., float],
    *arrays: np.ndarray,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """``statistic(*arrays)`` with its bootstrap interval (see :func:`bootstrap_ci`)."""
    n = len(arrays[0]) if arrays else 0
    value = statistic(*arrays) if n else float("nan")
    low, high = bootstrap_ci(statistic, *arrays, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return Estimate(float(value), low, high, n, confidence)


# Inference across replications. Seeds (independent training runs) are the unit of replication: each seed
# contributes one value (say, its paired difference of test means), and the tests below are Student-t tests
# over those values, which stay valid for the handful of seeds a CPU testbed affords, where a percentile
# bootstrap over 3-5 values is far too narrow.


@dataclass(frozen=True)
class TTest:
    """A one-sample t test over replications: mean, its t interval, the two-sided p-value of ``mean == 0``."""

    mean: float
    low: float
    high: float
    p: float
    n: int
    confidence: float = DEFAULT_CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": _finite_or_none(self.mean),
            "ci_low": _finite_or_none(self.low),
            "ci_high": _finite_or_none(self.high),
            "p": _finite_or_none(self.p),
            "n": self.n,
            "confidence": self.confidence,
        }


def t_test(values: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> TTest:
    """``scipy.stats.ttest_1samp`` of ``values`` against 0, with its ``confidence`` interval for the mean.

    With fewer than two values nothing can be inferred: interval and p-value are ``nan``. Values that do
    not vary at all (a difference that is exactly the same in every replication, e.g. two runs that are
    the same run) get the test's limit as the spread goes to 0: the interval is the value itself and p is
    1 when it is 0, else 0 (scipy returns ``nan`` there).
    """
    from scipy.stats import ttest_1samp

    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    mean = float(v.mean()) if len(v) else float("nan")
    if len(v) < 2:
        return TTest(mean, float("nan"), float("nan"), float("nan"), len(v), confidence)
    if _constant(v):
        return TTest(mean, mean, mean, 1.0 if mean == 0 else 0.0, len(v), confidence)
    res = ttest_1samp(v, 0.0)
    ci = res.confidence_interval(confidence)
    return TTest(mean, float(ci.low), float(ci.high), float(res.pvalue), len(v), confidence)


def tost(values: np.ndarray, bound: float) -> float:
    """Two one-sided t tests (TOST) of equivalence: the p-value that the mean lies inside ``(-bound, bound)``.

    The larger of the one-sided p-values of ``mean > -bound`` and ``mean < bound`` (Schuirmann, 1987); a
    small value supports "no difference larger than ``bound``". ``nan`` with fewer than two values; for
    values that do not vary, the limit as in :func:`t_test`: 0 inside the bounds, 1 outside.
    """
    from scipy.stats import ttest_1samp

    if not bound > 0:
        raise ValueError(f"the equivalence bound must be positive, got {bound}")
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) < 2:
        return float("nan")
    if _constant(v):
        return 0.0 if abs(v.mean()) < bound else 1.0
    above = ttest_1samp(v, -bound, alternative="greater").pvalue
    below = ttest_1samp(v, bound, alternative="less").pvalue
    return float(max(above, below))


def _constant(v: np.ndarray) -> bool:
    # Equal up to float rounding (a difference computed twice the same way, e.g. 0.5 and 0.5000000001):
    # scipy's moments lose all precision there.
    return bool(np.ptp(v) <= 1e-12 * (1.0 + np.abs(v).max()))


def holm(pvalues: Any) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (Holm, 1979), in the input's order.

    Sorted ascending, the i-th smallest (0-based) is multiplied by ``m - i``, made non-decreasing along the
    order and capped at 1; it controls the family-wise error rate under any dependence. ``nan`` entries
    (tests that could not be run) stay ``nan`` and do not count towards ``m``.
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if len(ok) == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out
