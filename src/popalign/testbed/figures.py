"""The report's figures and the margin-distribution comparison with UltraFeedback.

Plots reuse :mod:`popalign.eval.plots` where the paper's figure already exists there (Figure 2, advantages);
the margin histogram overlay and the sweep curves (Appendix E, Figures 3-4) are drawn here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from popalign.io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    return Path(path)


def margin_summary(margins: np.ndarray) -> dict[str, float]:
    """Count, mean, standard deviation, tie share, quartiles and share of margins >= 3 of ``(N,)`` margins."""
    m = np.asarray(margins, dtype=np.float64)
    q25, q50, q75 = np.percentile(m, [25, 50, 75])
    return {
        "n": int(len(m)),
        "mean": float(m.mean()),
        "sd": float(m.std()),
        "ties": float((m == 0).mean()),
        "q25": float(q25),
        "median": float(q50),
        "q75": float(q75),
        "ge3": float((m >= 3).mean()),
    }


def load_margins(path: str | Path, limit: int | None = None) -> np.ndarray | None:
    """Training margins of a scored preference dataset (its first ``limit`` rows), or None when it is not
    there."""
    if not path or not Path(path).exists():
        return None
    from popalign.data.load import load_preferences

    table, _ = load_preferences(str(path), split="train", tie_policy="keep", limit=limit)
    return table.margins if table.has_scores else None


def plot_margin_histograms(named: list[tuple[str, np.ndarray]], path: Path) -> Path:
    """Density histograms of several margin distributions on one 0.5 grid, overlaid."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    top = max(float(np.max(m)) for _, m in named)
    edges = np.arange(-0.25, top + 0.75, 0.5)
    for label, margins in named:
        ax.hist(margins, bins=edges, density=True, alpha=0.5, label=f"{label} (n={len(margins)})")
    ax.set_xlabel("margin = score_chosen - score_rejected")
    ax.set_ylabel("density")
    ax.set_title("Preference margins: testbed vs UltraFeedback")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_sweep(
    rows: list[dict[str, Any]], x_key: str, metrics: list[tuple[str, str]], path: Path, title: str
) -> Path:
    """One panel per metric, one line per method: mean over seeds with its interval as error bars.

    ``rows``: ``{"method", x_key, "<metric>": (value, low, high)}`` records.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.8), squeeze=False)
    methods = sorted({r["method"] for r in rows})
    for ax, (key, label) in zip(axes[0], metrics, strict=True):
        for method in methods:
            pts = sorted((r[x_key], r[key]) for r in rows if r["method"] == method)
            x = np.array([p[0] for p in pts])
            v = np.array([p[1][0] for p in pts])
            err = np.array([[p[1][0] - p[1][1] for p in pts], [p[1][2] - p[1][0] for p in pts]])
            ax.errorbar(x, v, yerr=np.nan_to_num(err), marker="o", capsize=3, label=method)
        ax.set_xlabel(x_key)
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, y=1.04)
    return _save(fig, path)


def plot_frontier(curves: list[dict[str, Any]], budgets: list[tuple[str, float]], path: Path) -> Path:
    """r* against KL(pi || pi_ref), one line per run and seed through its checkpoints.

    ``curves``: ``{"name", "seed", "kl": (P,), "reward": [(value, low, high)] * P}``; a run's seeds share
    one colour and one legend entry; vertical bars are the r* intervals; dotted vertical lines mark the KL
    ``budgets`` of the matched-KL table.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours: dict[str, Any] = {}
    for c in curves:
        v = np.array([p[0] for p in c["reward"]])
        err = np.array([[p[0] - p[1] for p in c["reward"]], [p[2] - p[0] for p in c["reward"]]])
        first = c["name"] not in colours
        colours.setdefault(c["name"], f"C{len(colours) % 10}")
        ax.errorbar(
            c["kl"], v, yerr=np.nan_to_num(err), marker="o", ms=2.5, capsize=1.5, lw=0.9, alpha=0.75,
            color=colours[c["name"]], label=c["name"] if first else None,
        )  # fmt: skip
    for (label, value), shade in zip(budgets, np.linspace(0.15, 0.6, max(len(budgets), 1)), strict=False):
        ax.axvline(value, color=str(shade), ls=":", lw=1.2, label=f"budget: {label}")
    # Linear near the reference, where the budgets lie, logarithmic beyond: long runs travel tens of nats.
    ax.set_xscale("symlog", linthresh=2.0, linscale=1.5)
    top = max([max(c["kl"]) for c in curves if len(c["kl"])] + [1.0])
    ticks = [t for t in (0, 0.5, 1, 1.5, 2, 5, 10, 20, 50, 100, 200, 500) if t <= top * 1.2]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlim(left=min([0.0] + [min(c["kl"]) for c in curves if len(c["kl"])]), right=top * 1.1)
    ax.set_xlabel("KL(pi || pi_SFT) of sampled replies (nats per reply; linear to 2, log beyond)")
    ax.set_ylabel("mean r* of replies to the test prompts")
    ax.set_title("Reward-KL frontier: each point a checkpoint, step 0 = the SFT model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)
