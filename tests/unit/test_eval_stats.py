"""Correlations, win rate and bootstrap intervals, checked against scipy and hand-worked values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from popalign.eval.stats import (
    Estimate,
    bootstrap_ci,
    estimate,
    holm,
    median,
    pearson,
    pearson_rows,
    spearman,
    spearman_rows,
    t_test,
    tost,
    win_rate,
)


def _hand_pearson(x, y):
    dx, dy = x - x.mean(), y - y.mean()
    return float((dx @ dy) / math.sqrt(float(dx @ dx) * float(dy @ dy)))


def _hand_ranks(x):
    # Mean 1-based rank of each value among equal ones, by counting: below + (equal + 1) / 2.
    return np.array([(x < v).sum() + ((x == v).sum() + 1) / 2 for v in x])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correlations_equal_the_textbook_formulas_to_1e12(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 17, size=200) / 2.0  # many ties
    predicted = 0.3 * truth + rng.normal(size=200)
    assert pearson(predicted, truth) == pytest.approx(_hand_pearson(predicted, truth), abs=1e-12)
    ranks = _hand_pearson(_hand_ranks(predicted), _hand_ranks(truth))
    assert spearman(predicted, truth) == pytest.approx(ranks, abs=1e-12)
    # By hand: the 1s take ranks 1,2 -> 1.5; the 2s take 3,4,5 -> 4; then 3 -> 6, 5 -> 7.
    assert _hand_ranks(np.array([3.0, 1.0, 2.0, 2.0, 5.0, 1.0, 2.0])).tolist() == [6, 1.5, 4, 4, 7, 1.5, 4]


def test_row_correlations_equal_one_at_a_time_and_mark_constant_rows():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(6, 40)), rng.integers(0, 5, size=(6, 40)).astype(float)
    x[2] = 1.0
    by_row = pearson_rows(x, y)
    assert math.isnan(by_row[2])
    for r in (0, 1, 3, 4, 5):
        assert by_row[r] == pytest.approx(_hand_pearson(x[r], y[r]), abs=1e-12)
        assert spearman_rows(x, y)[r] == pytest.approx(sps.spearmanr(x[r], y[r]).statistic, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correlations_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 17, size=200) / 2.0  # UltraFeedback-like margins: steps of 0.5, many ties
    predicted = 0.3 * truth + rng.normal(size=200)
    assert pearson(predicted, truth) == pytest.approx(sps.pearsonr(predicted, truth).statistic, abs=1e-12)
    assert spearman(predicted, truth) == pytest.approx(sps.spearmanr(predicted, truth).statistic, abs=1e-12)


def test_correlations_of_monotone_and_reversed_predictions():
    truth = np.array([0.5, 1.0, 2.0, 3.5, 7.0])
    assert spearman(np.exp(truth), truth) == pytest.approx(1.0)
    assert pearson(2.0 * truth + 1.0, truth) == pytest.approx(1.0)
    assert spearman(-truth, truth) == pytest.approx(-1.0)
    assert pearson(-truth, truth) == pytest.approx(-1.0)


def test_correlation_of_a_constant_is_undefined():
    assert math.isnan(pearson(np.zeros(5), np.arange(5.0)))
    assert math.isnan(spearman(np.arange(5.0), np.ones(5)))
    assert math.isnan(pearson(np.array([1.0]), np.array([2.0])))


def test_win_rate_counts_ties_as_half():
    # 2 wins, 1 tie, 1 loss: (2 + 0.5) / 4.
    assert win_rate(np.array([1.0, 2.0, 0.0, -3.0])) == pytest.approx(0.625)
    assert win_rate(np.zeros(7)) == 0.5
    assert win_rate(np.array([-1.0, -0.1])) == 0.0
    assert math.isnan(win_rate(np.array([])))
    assert median(np.array([3.0, -1.0, 2.0, 10.0])) == 2.5


def test_bootstrap_is_seeded():
    x = np.random.default_rng(3).normal(size=50)
    a = bootstrap_ci(np.mean, x, n_resamples=200, seed=7)
    assert a == bootstrap_ci(np.mean, x, n_resamples=200, seed=7)
    assert a != bootstrap_ci(np.mean, x, n_resamples=200, seed=8)


def test_bootstrap_interval_of_a_mean_matches_theory_and_scipy():
    x = np.random.default_rng(11).normal(loc=1.0, scale=2.0, size=400)
    low, high = bootstrap_ci(np.mean, x, n_resamples=4000, seed=0)
    half_width = 1.959964 * x.std(ddof=1) / math.sqrt(len(x))
    assert low == pytest.approx(x.mean() - half_width, abs=0.03)
    assert high == pytest.approx(x.mean() + half_width, abs=0.03)
    ref = sps.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=0)
    assert low == pytest.approx(ref.confidence_interval.low, abs=0.03)
    assert high == pytest.approx(ref.confidence_interval.high, abs=0.03)


def test_bootstrap_keeps_pairs_together_and_skips_undefined_resamples():
    truth = np.arange(30, dtype=float)
    # A perfectly ordered pair stays perfect in every resample (constant resamples are nan and skipped).
    low, high = bootstrap_ci(spearman, 5 * truth, truth, n_resamples=300, seed=0)
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)
    assert all(math.isnan(v) for v in bootstrap_ci(lambda a: float("nan"), truth, n_resamples=10))
    with pytest.raises(ValueError):
        bootstrap_ci(pearson, truth, truth[:-1])


def test_estimate_serialises_nan_as_none_and_round_trips():
    e = estimate(np.mean, np.array([1.0, 2.0, 3.0]), n_resamples=100, seed=0)
    assert e.value == 2.0 and e.low <= 2.0 <= e.high and e.n == 3
    back = Estimate.from_dict(e.to_dict())
    assert back == e
    undefined = estimate(pearson, np.zeros(4), np.arange(4.0), n_resamples=20)
    assert undefined.to_dict()["value"] is None
    assert undefined.format() == "-"
    assert Estimate(0.5, 0.25, 0.75, 10).format(digits=1, scale=100) == "50.0 [25.0, 75.0]"


# Inference over replications (seeds): hand-worked values. For Student's t with 2 degrees of freedom the
# survival function has a closed form, sf(t) = (1 - t / sqrt(t^2 + 2)) / 2.


def test_t_test_hand_values_over_three_seeds():
    res = t_test(np.array([0.1, 0.2, 0.3]))
    # mean 0.2, sd 0.1, se 0.1 / sqrt(3): t = 2 sqrt(3), t^2 = 12; two-sided p = 1 - sqrt(12 / 14).
    assert res.mean == pytest.approx(0.2)
    assert res.p == pytest.approx(1 - math.sqrt(6 / 7))
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t_{0.975, 2} * se
    assert (res.low, res.high) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))
    assert res.n == 3


def test_t_test_cannot_infer_from_one_value():
    for values in ([0.3], []):
        res = t_test(np.array(values))
        assert math.isnan(res.p) and math.isnan(res.low) and math.isnan(res.high)


def test_constant_values_take_the_limit_of_zero_spread():
    # The same difference in every replication: certain, as the t statistic goes to infinity.
    assert (t_test(np.array([0.1, 0.1, 0.1])).p, t_test(np.array([0.1, 0.1])).low) == (0.0, 0.1)
    assert t_test(np.zeros(3)).p == 1.0
    assert tost(np.zeros(3), 0.05) == 0.0 and tost(np.full(3, 0.2), 0.05) == 1.0


def test_tost_hand_values():
    # mean 0.2, se 0.1 / sqrt(3); against +0.5: t = -3 sqrt(3) (t^2 = 27); against -0.5: t = 7 sqrt(3).
    # The larger one-sided p is the one against the nearer bound: sf(3 sqrt 3) = (1 - sqrt(27 / 29)) / 2.
    assert tost(np.array([0.1, 0.2, 0.3]), 0.5) == pytest.approx((1 - math.sqrt(27 / 29)) / 2)
    # A bound inside the observed spread cannot support equivalence.
    assert tost(np.array([0.1, 0.2, 0.3]), 0.05) > 0.5
    with pytest.raises(ValueError, match="positive"):
        tost(np.array([0.1, 0.2]), 0.0)


def test_holm_hand_example_keeps_the_input_order():
    # Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> monotone: 0.06.
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_skips_missing_tests():
    adjusted = holm([0.6, float("nan"), 0.2])
    # m = 2: 0.2 * 2 = 0.4, then max(0.4, 0.6 * 1) = 0.6.
    np.testing.assert_allclose(adjusted[[0, 2]], [0.6, 0.4])
    assert math.isnan(adjusted[1])
    assert holm([0.9, 0.8])[1] == 1.0


def test_metrics_are_vectorised_and_the_bootstrap_matches_the_one_at_a_time_loop():
    from popalign.eval.stats import ROWS, bootstrap_ci, mean, mean_rows, median, win_rate

    # hand-worked: a tie (nan credit) is left out of the mean; a zero advantage is half a win
    assert mean_rows(np.array([[1.0, np.nan, 0.0], [np.nan, np.nan, np.nan]]))[0] == 0.5
    assert np.isnan(mean_rows(np.array([[np.nan]]))[0]) and mean(np.array([1.0, 0.0, 0.0, 1.0])) == 0.5
    assert win_rate(np.array([1.0, 0.0, -2.0, 3.0])) == 0.625 and median(np.array([3.0, -1.0, 2.0])) == 2.0
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=57), rng.normal(size=57)
    adv = np.round(rng.normal(size=57))  # many exact zeros: ties
    for stat, arrays in (
        (mean, (x,)),
        (win_rate, (adv,)),
        (median, (x,)),
        *((s, (x, y)) for s in ROWS if s not in (mean, win_rate, median)),
    ):
        assert stat in ROWS
        vectorised = bootstrap_ci(stat, *arrays, n_resamples=200, seed=1)
        looped = bootstrap_ci(lambda *a, s=stat: s(*a), *arrays, n_resamples=200, seed=1)  # not in ROWS
        assert vectorised == pytest.approx(looped, rel=1e-12, abs=1e-12)
