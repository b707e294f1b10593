"""Accuracy, correlations, ties and cumulative accuracy curves, on hand-made cases and the real test split."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from popalign.eval.discriminative import (
    accuracy,
    correctness,
    cumulative_accuracy,
    discriminative_metrics,
    tie_summary,
)


def test_correctness_by_hand():
    truth = np.array([1.0, 2.0, 0.0, 0.5, -1.0])
    predicted = np.array([0.3, -0.1, 5.0, 0.0, -2.0])
    # right, wrong, tie (no answer), predicted 0 (half), right (both negative)
    credit = correctness(predicted, truth)
    assert credit[[0, 1, 3, 4]].tolist() == [1.0, 0.0, 0.5, 1.0]
    assert math.isnan(credit[2])
    assert accuracy(predicted, truth) == pytest.approx(2.5 / 4)


def test_perfect_model_scores_one_and_reversed_model_zero():
    truth = np.array([0.5, 1.0, 1.0, 2.5, 4.0, 7.0, 0.0])
    perfect = discriminative_metrics(truth**2 + 0.1 * truth, truth, n_resamples=200)
    assert perfect["accuracy"]["value"] == 1.0
    assert perfect["accuracy"]["ci_low"] == 1.0 and perfect["accuracy"]["ci_high"] == 1.0
    assert perfect["spearman"]["value"] == pytest.approx(1.0)
    reversed_ = discriminative_metrics(-truth, truth, n_resamples=200)
    assert reversed_["accuracy"]["value"] == 0.0
    assert reversed_["spearman"]["value"] == pytest.approx(-1.0)
    assert reversed_["pearson"]["value"] == pytest.approx(-1.0)


def test_ties_are_reported_separately_and_left_out_of_accuracy():
    truth = np.array([0.0, 0.0, 1.0, 2.0, 3.0])
    predicted = np.array([0.4, -0.2, 1.0, -1.0, 1.0])
    m = discriminative_metrics(predicted, truth, n_resamples=100)
    assert m["n"] == 5 and m["n_scored"] == 3
    assert m["accuracy"]["value"] == pytest.approx(2 / 3)
    assert m["ties"] == tie_summary(predicted, truth)
    assert m["ties"]["n"] == 2
    assert m["ties"]["mean_predicted_margin"] == pytest.approx(0.1)
    assert m["ties"]["mean_abs_predicted_margin"] == pytest.approx(0.3)
    # Correlations use every preference, ties included.
    assert m["pearson"]["value"] == pytest.approx(sps.pearsonr(predicted, truth).statistic)
    assert m["spearman"]["value"] == pytest.approx(sps.spearmanr(predicted, truth).statistic)


def test_without_scores_only_accuracy():
    m = discriminative_metrics(np.array([1.0, -1.0, 2.0, 3.0]), None, n_resamples=50)
    assert m["accuracy"]["value"] == 0.75
    assert m["pearson"] is None and m["spearman"] is None and m["ties"]["n"] == 0


def test_cumulative_accuracy_by_hand():
    truth = np.array([0.5, 1.0, 1.0, 2.0, 3.0, 0.0])
    predicted = np.array([1.0, -1.0, 1.0, 1.0, -1.0, 9.0])  # credit 1, 0, 1, 1, 0; the tie is ignored
    c = cumulative_accuracy(predicted, truth)
    assert c["margin"].tolist() == [0.5, 1.0, 2.0, 3.0]
    # lower: margin <= m -> {1}, {1,0,1}, {1,0,1,1}, all five
    np.testing.assert_allclose(c["lower"], [1.0, 2 / 3, 3 / 4, 3 / 5])
    assert c["lower_n"].tolist() == [1, 3, 4, 5]
    # upper: margin >= m -> all five, {0,1,1,0}, {1,0}, {0}
    np.testing.assert_allclose(c["upper"], [3 / 5, 2 / 4, 1 / 2, 0.0])
    assert c["upper_n"].tolist() == [5, 4, 2, 1]


def test_cumulative_accuracy_on_a_custom_grid_marks_empty_sides():
    truth = np.array([1.0, 2.0])
    c = cumulative_accuracy(np.array([1.0, -1.0]), truth, grid=np.array([0.5, 1.5, 2.5]))
    assert math.isnan(c["lower"][0]) and c["lower"][1] == 1.0 and c["lower"][2] == 0.5
    assert c["upper"][0] == 0.5 and c["upper"][1] == 0.0 and math.isnan(c["upper"][2])


def test_cumulative_ends_equal_overall_accuracy():
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 17, size=300) / 2.0
    predicted = truth + rng.normal(scale=2.0, size=300)
    c = cumulative_accuracy(predicted, truth)
    overall = accuracy(predicted, truth)
    assert c["lower"][-1] == pytest.approx(overall)
    assert c["upper"][0] == pytest.approx(overall)
    # An independent count at every grid point.
    credit = correctness(predicted, truth)
    for m, low, up in zip(c["margin"], c["lower"], c["upper"], strict=True):
        keep = truth != 0
        assert low == pytest.approx(np.mean(credit[keep & (truth <= m)]))
        assert up == pytest.approx(np.mean(credit[keep & (truth >= m)]))


def test_on_the_real_test_split(ultrafeedback_dir):
    from popalign.data.load import load_preferences

    table, _ = load_preferences(ultrafeedback_dir, split="test", tie_policy="keep")
    truth = table.margins
    oracle = discriminative_metrics(table.score_chosen - table.score_rejected, truth, n_resamples=100)
    assert oracle["accuracy"]["value"] == 1.0
    assert oracle["spearman"]["value"] == pytest.approx(1.0)
    assert oracle["ties"]["n"] == int((truth == 0).sum()) > 0
    assert oracle["n_scored"] == len(table) - oracle["ties"]["n"]
    swapped = discriminative_metrics(table.score_rejected - table.score_chosen, truth, n_resamples=100)
    assert swapped["accuracy"]["value"] == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        discriminative_metrics(np.zeros(3), np.zeros(4))
