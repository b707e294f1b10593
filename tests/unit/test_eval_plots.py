"""Histogram bins of margins: a grid of discrete scores gets one bar per step, anything else 30 bins."""

from __future__ import annotations

import numpy as np

from popalign.eval.plots import _margin_bins


def test_discrete_scores_get_one_bar_per_step():
    edges = _margin_bins(np.array([0.0, 0.5, 1.5, 3.0, 0.5]))
    assert np.allclose(edges, np.arange(-0.25, 3.5, 0.5))


def test_few_continuous_margins_are_not_taken_for_a_grid():
    # 24 true margins with two nearly equal values: their gap is no step of a grid.
    margins = np.random.default_rng(0).normal(1.5, 1.5, 24)
    margins[1] = margins[0] + 1e-9
    edges = _margin_bins(margins)
    assert len(edges) == 31 and edges[0] == margins.min() and edges[-1] == margins.max()
