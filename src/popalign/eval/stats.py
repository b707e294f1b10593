"""Statistics every evaluation shares: correlations, win rates and seeded bootstrap intervals.

Pure numpy (arrays in, numbers out) so each figure can be checked by hand and against scipy. Intervals are
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


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` (shape ``(n,)``), tied values sharing the mean of their ranks."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Start of each run of equal values, in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two ``(n,)`` arrays; ``nan`` when either is constant or ``n < 2``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if denom == 0.0:
        return float("nan")
    return float(np.clip((dx @ dy) / denom, -1.0, 1.0))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation: Pearson correlation of the (tie-averaged) ranks."""
    return pearson(rankdata(x), rankdata(y))


def win_rate(advantages: np.ndarray) -> float:
    """Share of positive advantages, a tie (advantage exactly 0) counting as half a win."""
    a = np.asarray(advantages, dtype=np.float64)
    if len(a) == 0:
        return float("nan")
    return float(((a > 0).sum() + 0.5 * (a == 0).sum()) / len(a))


def median(values: np.ndarray) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(np.median(v)) if len(v) else float("nan")


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
    constant resample for a correlation) are left out. Same seed, same interval.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("bootstrap_ci: the arrays differ in length")
    if n == 0 or n_resamples < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples, dtype=np.float64)
    for b in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        values[b] = statistic(*(a[idx] for a in arrays))
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
