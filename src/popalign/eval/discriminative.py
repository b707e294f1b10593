"""Discriminative metrics: how well predicted margins separate and rank test preferences (paper Section 4.3).

For each preference ``(x, y+, y-)`` the model's predicted margin is ``r(x, y+) - r(x, y-)``: for a DPO policy
the implicit reward difference ``beta * ((log pi(y+|x) - log ref(y+|x)) - (log pi(y-|x) - log ref(y-|x)))``
(Eq. 3), for a reward model the score difference (Eq. 2). The ground-truth margin is
``score_chosen - score_rejected``. Everything here is pure numpy: arrays of margins in, numbers out.

Conventions:
- a preference is classified correctly when the predicted margin has the sign of the ground-truth margin
  (positive when the data has no scores); a predicted margin of exactly 0 is a coin flip and counts half;
- ties (ground-truth margin 0) have no correct answer: they are left out of accuracy and of the cumulative
  curves, and reported separately; they do enter the correlations, where a margin of 0 is a real value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from popalign.eval.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    estimate,
    mean,
    pearson,
    spearman,
)


def _arrays(predicted: np.ndarray, truth: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    predicted = np.asarray(predicted, dtype=np.float64)
    truth = np.ones_like(predicted) if truth is None else np.asarray(truth, dtype=np.float64)
    if predicted.shape != truth.shape or predicted.ndim != 1:
        raise ValueError(f"predicted {predicted.shape} and ground-truth {truth.shape} margins must be (N,)")
    return predicted, truth


def correctness(predicted: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """Per-preference credit, shape ``(N,)``: 1 right sign, 0 wrong sign, 0.5 predicted margin exactly 0.

    Ties in the ground truth get ``nan`` (nothing to get right). ``truth=None`` means every chosen response
    is preferred (a dataset without scores).
    """
    predicted, truth = _arrays(predicted, truth)
    agree = predicted * np.sign(truth)
    credit = np.where(agree > 0, 1.0, np.where(predicted == 0, 0.5, 0.0))
    return np.where(truth == 0, np.nan, credit)


def accuracy(predicted: np.ndarray, truth: np.ndarray | None = None) -> float:
    """Mean credit over non-tied preferences (see :func:`correctness`); ``nan`` when all are ties."""
    credit = correctness(predicted, truth)
    scored = credit[~np.isnan(credit)]
    return float(scored.mean()) if len(scored) else float("nan")


def cumulative_accuracy(
    predicted: np.ndarray, truth: np.ndarray, grid: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Lower and upper cumulative accuracy versus margin (paper Figure 2).

    ``lower[k]`` is the accuracy on non-tied preferences with ground-truth margin ``<= grid[k]``, ``upper[k]``
    the accuracy on those with margin ``>= grid[k]``; ``lower_n``/``upper_n`` count them, and an empty side
    is ``nan``. The grid defaults to the sorted distinct non-zero ground-truth margins.

    Returns ``{"margin": grid, "lower": ..., "upper": ..., "lower_n": ..., "upper_n": ...}``, each ``(G,)``.
    """
    credit = correctness(predicted, truth)
    truth = np.asarray(truth, dtype=np.float64)
    keep = ~np.isnan(credit)
    credit, margins = credit[keep], truth[keep]
    grid = np.unique(margins) if grid is None else np.asarray(grid, dtype=np.float64)
    # Sorting once turns each cumulative mean into a prefix/suffix sum lookup.
    order = np.argsort(margins, kind="mergesort")
    sorted_m, sorted_c = margins[order], credit[order]
    prefix = np.r_[0.0, np.cumsum(sorted_c)]
    n_le = np.searchsorted(sorted_m, grid, side="right")
    n_lt = np.searchsorted(sorted_m, grid, side="left")
    lower_n = n_le
    upper_n = len(sorted_m) - n_lt
    with np.errstate(invalid="ignore", divide="ignore"):
        lower = np.where(lower_n > 0, prefix[n_le] / lower_n, np.nan)
        upper = np.where(upper_n > 0, (prefix[-1] - prefix[n_lt]) / upper_n, np.nan)
    return {"margin": grid, "lower": lower, "upper": upper, "lower_n": lower_n, "upper_n": upper_n}


def tie_summary(predicted: np.ndarray, truth: np.ndarray | None) -> dict[str, Any]:
    """What the model predicts on ties: their count and mean (absolute) predicted margin."""
    predicted, truth = _arrays(predicted, truth)
    ties = predicted[truth == 0]
    return {
        "n": int(len(ties)),
        "mean_predicted_margin": float(ties.mean()) if len(ties) else None,
        "mean_abs_predicted_margin": float(np.abs(ties).mean()) if len(ties) else None,
    }


def discriminative_metrics(
    predicted: np.ndarray,
    truth: np.ndarray | None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy, Pearson and Spearman correlation (Tables 1, 7, 11-13), each with a bootstrap interval.

    Args:
        predicted: (N,) predicted margins.
        truth: (N,) ground-truth margins, or None for data without scores (then accuracy only).

    Returns a JSON-ready dict: ``n``, ``ties`` (see :func:`tie_summary`), ``accuracy`` (over the ``n_scored``
    non-tied preferences), ``pearson``, ``spearman`` (over all N; ``None`` without scores), each an
    :meth:`Estimate.to_dict`, plus ``mean_predicted_margin``.
    """
    predicted, truth_arr = _arrays(predicted, truth)
    credit = correctness(predicted, truth_arr)
    scored = credit[~np.isnan(credit)]
    boot = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    acc = estimate(mean, scored, **boot)
    out: dict[str, Any] = {
        "n": int(len(predicted)),
        "n_scored": int(len(scored)),
        "ties": tie_summary(predicted, truth_arr),
        "accuracy": acc.to_dict(),
        "pearson": None,
        "spearman": None,
        "mean_predicted_margin": float(predicted.mean()) if len(predicted) else None,
        "bootstrap": boot,
    }
    if truth is not None:
        out["pearson"] = estimate(pearson, predicted, truth_arr, **boot).to_dict()
        out["spearman"] = estimate(spearman, predicted, truth_arr, **boot).to_dict()
    return out
