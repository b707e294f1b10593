"""PNG figures of the evaluation: cumulative accuracy versus margin (Figure 2), margins, advantages.

matplotlib is imported inside each function with the non-interactive Agg backend, so importing this module
is free and plotting works on machines without a display. Files are written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from popalign.eval.discriminative import cumulative_accuracy
from popalign.io import atomic_path

# Run = (label, predicted margins (N,), ground-truth margins (N,))
Run = tuple[str, np.ndarray, np.ndarray]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    return path


def plot_cumulative_accuracy(runs: list[Run], path: str | Path, title: str | None = None) -> Path:
    """Lower (a) and upper (b) cumulative accuracy versus margin, one line per run (paper Figure 2).

    Lower at ``m``: accuracy on test preferences with ground-truth margin ``<= m``; upper: margin ``>= m``
    (ties left out, see :func:`~popalign.eval.discriminative.cumulative_accuracy`). A grey histogram on a
    second axis shows the density of the first run's test margins (ties included).
    """
    if not runs:
        raise ValueError("plot_cumulative_accuracy needs at least one run")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    # Room between the panels for the left panel's density axis and the right panel's accuracy axis.
    fig.subplots_adjust(wspace=0.4)
    truth0 = np.asarray(runs[0][2], dtype=np.float64)
    edges = _margin_bins(truth0)
    for ax, side, name in zip(axes, ("lower", "upper"), ("(a) Lower", "(b) Upper"), strict=True):
        density = ax.twinx()
        density.hist(truth0, bins=edges, density=True, color="0.35", alpha=0.35, zorder=0)
        density.set_ylabel("density of test margins", color="0.35")
        # The curves go on top of the histogram.
        ax.set_zorder(density.get_zorder() + 1)
        ax.patch.set_visible(False)
        for label, predicted, truth in runs:
            curve = cumulative_accuracy(predicted, truth)
            ax.plot(curve["margin"], curve[side], marker="o", markersize=3, linewidth=1.5, label=label)
        ax.set_xlabel("ground-truth margin")
        ax.set_ylabel(f"{side} cumulative accuracy")
        ax.set_title(f"{name} Cumulative Accuracy vs Margin")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _margin_bins(margins: np.ndarray) -> np.ndarray:
    values = np.unique(margins)
    if 1 < len(values) <= 40:
        # Discrete scores (UltraFeedback's steps of 0.5): one bar per step of the grid. Few distinct
        # continuous margins (a small test split) are no grid: their smallest gap can be a rounding error.
        step = float(np.min(np.diff(values)))
        on_grid = np.allclose((values - values[0]) / step, np.round((values - values[0]) / step), atol=1e-6)
        if on_grid and (values[-1] - values[0]) / step <= 200:
            return np.arange(values[0] - step / 2, values[-1] + step, step)
    return np.histogram_bin_edges(margins, bins=30 if len(values) > 1 else 1)


def plot_margin_scatter(predicted: np.ndarray, truth: np.ndarray, path: str | Path, label: str = "") -> Path:
    """Predicted against ground-truth margins: what the Pearson and Spearman correlations summarise."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(truth, predicted, s=10, alpha=0.5)
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set_xlabel("ground-truth margin")
    ax.set_ylabel("predicted margin")
    ax.set_title(f"Predicted vs ground-truth margins{f' ({label})' if label else ''}")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_advantages(runs: list[tuple[str, np.ndarray]], path: str | Path, baseline: str = "baseline") -> Path:
    """Histograms of per-prompt advantages over the baseline, one per run, with each run's median."""
    if not runs:
        raise ValueError("plot_advantages needs at least one run")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    every = np.concatenate([np.asarray(a, dtype=np.float64) for _, a in runs])
    edges = np.histogram_bin_edges(every, bins=30) if np.ptp(every) > 0 else np.array([-0.5, 0.5]) + every[0]
    for label, adv in runs:
        line = ax.hist(adv, bins=edges, alpha=0.45, label=label)[2][0]
        ax.axvline(float(np.median(adv)), color=line.get_facecolor(), linestyle="--", linewidth=1.2)
    ax.axvline(0.0, color="k", linewidth=0.8)
    ax.set_xlabel(f"advantage over {baseline} (judge score difference)")
    ax.set_ylabel("prompts")
    ax.set_title("Per-prompt advantage (dashed: median)")
    ax.legend(fontsize=8)
    return _save(fig, path)
