"""Statistics of a preference table: sizes, scores, ground-truth margins and text lengths.

The margin ``score_chosen - score_rejected`` drives everything margin-aware in the paper
(DPO-margin-gt, the SBT weights of Eq. 8, the simulated PoP labels of Eq. 7), so its distribution --
and how many preferences are ties (margin 0) -- is the first thing to look at in a new dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from popalign.data.schema import PreferenceTable, Prompt
from popalign.io import atomic_path

# Margins with at most this many distinct values (UltraFeedback's steps of 0.5) get one bar per value.
MAX_DISCRETE_VALUES = 25
HIST_WIDTH = 40


def prompt_chars(prompt: Prompt) -> int:
    """Characters of a prompt; for a message list, of all message contents together."""
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(m.get("content", "")) for m in prompt)


def _summary(x: np.ndarray, quartiles: bool = False) -> dict[str, float]:
    """Mean, population std (ddof=0), min, max (and quartiles) of a non-empty 1-D array."""
    out = {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min())}
    if quartiles:
        q1, median, q3 = np.quantile(x, [0.25, 0.5, 0.75])
        out.update(q1=float(q1), median=float(median), q3=float(q3))
    out["max"] = float(x.max())
    return out


def histogram(margins: np.ndarray, bins: int = 10) -> tuple[list[float], list[int], bool]:
    """``(edges_or_values, counts, discrete)``.

    When the margins take few distinct values, one bin per value (``discrete=True``, the first list
    holds the values); otherwise ``bins`` equal-width bins (the first list holds ``bins + 1`` edges).
    """
    values, counts = np.unique(margins, return_counts=True)
    if len(values) <= MAX_DISCRETE_VALUES:
        return values.tolist(), counts.tolist(), True
    counts, edges = np.histogram(margins, bins=bins)
    return edges.tolist(), counts.tolist(), False


def preference_stats(table: PreferenceTable) -> dict[str, Any]:
    """Everything ``popalign data inspect`` prints, as a JSON-ready dict.

    Keys: ``rows``, ``has_scores``, ``ties`` (margin == 0; ``None`` without scores),
    ``score_chosen``/``score_rejected`` (mean, std, min, max), ``margin`` (mean, std, min, q1, median,
    q3, max), ``margin_histogram``, ``lengths`` (characters of prompt/chosen/rejected: mean, std, min,
    median, max), ``multi_turn_prompts`` and ``empty_replies``. Standard deviations are population
    (``ddof=0``); score entries are ``None`` when the table has no scores.
    """
    n = len(table)
    stats: dict[str, Any] = {"rows": n, "source": table.source, "has_scores": table.has_scores}
    stats["multi_turn_prompts"] = sum(1 for p in table.prompts if not isinstance(p, str))
    stats["empty_replies"] = sum(
        1 for c, r in zip(table.chosen, table.rejected, strict=True) if not (c.strip() and r.strip())
    )
    stats.update(ties=None, score_chosen=None, score_rejected=None, margin=None, margin_histogram=None)
    if table.has_scores and n:
        margins = table.margins
        stats["ties"] = int(np.count_nonzero(margins == 0))
        stats["score_chosen"] = _summary(table.score_chosen)
        stats["score_rejected"] = _summary(table.score_rejected)
        stats["margin"] = _summary(margins, quartiles=True)
        first, counts, discrete = histogram(margins)
        stats["margin_histogram"] = {("values" if discrete else "edges"): first, "counts": counts}
    lengths = {}
    if n:
        for name, texts in (
            ("prompt", table.prompts),
            ("chosen", table.chosen),
            ("rejected", table.rejected),
        ):
            chars = np.fromiter((prompt_chars(t) for t in texts), dtype=np.float64, count=n)
            s = _summary(chars, quartiles=True)
            lengths[name] = {k: s[k] for k in ("mean", "std", "min", "median", "max")}
    stats["lengths"] = lengths
    return stats


def text_histogram(hist: dict[str, list], width: int = HIST_WIDTH) -> list[str]:
    """Lines like ``  1.5 | ######       87`` for a ``margin_histogram`` entry of :func:`preference_stats`."""
    counts = hist["counts"]
    if "values" in hist:
        labels = [f"{v:g}" for v in hist["values"]]
    else:
        edges = hist["edges"]
        labels = [f"[{lo:.3g}, {hi:.3g})" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        labels[-1] = labels[-1][:-1] + "]"  # numpy's last bin includes its right edge
    top = max(counts) if counts else 0
    pad = max((len(label) for label in labels), default=0)
    lines = []
    for label, count in zip(labels, counts, strict=True):
        bar = "#" * (round(width * count / top) if top else 0)
        if count and not bar:
            bar = "."  # a non-empty bin never looks empty
        lines.append(f"  {label:>{pad}} | {bar:<{width}} {count}")
    return lines


def _num(x: float) -> str:
    # Four significant digits, but never scientific notation for character counts.
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


def _fmt(d: dict[str, float], keys: tuple[str, ...]) -> str:
    return "  ".join(f"{k} {_num(d[k])}" for k in keys)


def format_stats(stats: dict[str, Any]) -> str:
    """The human-readable report ``popalign data inspect`` prints."""
    lines = [f"rows: {stats['rows']}"]
    if stats["has_scores"] and stats["margin"] is not None:
        pct = 100.0 * stats["ties"] / stats["rows"]
        lines.append(f"ties (margin 0): {stats['ties']} ({pct:.1f}%)")
        for name in ("score_chosen", "score_rejected"):
            lines.append(f"{name}: " + _fmt(stats[name], ("mean", "std", "min", "max")))
        lines.append("margin: " + _fmt(stats["margin"], ("mean", "std", "min", "q1", "median", "q3", "max")))
        lines.append("margin histogram:")
        lines.extend(text_histogram(stats["margin_histogram"]))
    else:
        lines.append("scores: none (no margins; PoP labels or constant margins can still be used)")
    if stats["multi_turn_prompts"]:
        lines.append(f"multi-turn prompts: {stats['multi_turn_prompts']}")
    if stats["empty_replies"]:
        lines.append(f"rows with an empty reply: {stats['empty_replies']}")
    if stats["lengths"]:
        lines.append("length in characters:")
        for name, d in stats["lengths"].items():
            lines.append(f"  {name:<8} " + _fmt(d, ("mean", "std", "min", "median", "max")))
    return "\n".join(lines)


def plot_margin_histogram(margins: np.ndarray, path: str | Path, title: str = "Ground-truth margins") -> None:
    """Write a bar chart of the margin distribution to ``path`` (PNG or any format matplotlib infers).

    Uses matplotlib's Agg canvas directly, so no global backend is switched and no display is needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    margins = np.asarray(margins, dtype=np.float64)
    first, counts, discrete = histogram(margins)
    fig = Figure(figsize=(6, 3.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if discrete:
        step = float(np.min(np.diff(first))) if len(first) > 1 else 1.0
        ax.bar(first, counts, width=0.8 * step, color="tab:blue")
    else:
        ax.stairs(counts, first, fill=True, color="tab:blue")
    ax.set_xlabel("margin = score_chosen - score_rejected")
    ax.set_ylabel("preferences")
    ax.set_title(f"{title} (n={len(margins)}, ties={int(np.count_nonzero(margins == 0))})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
