"""Statistics of a PoP dataset: how often each preference is the strong or the weak side, by margin.

These numbers go into the sidecar of every pair file and into the summary ``popalign pop build``
prints, so that the difference between the two sampling strategies of the paper (Section 4.1) can be
audited: iterative sampling shows each preference as strong about ``k`` times, random sampling shows
stronger preferences as strong more often.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Up to this many distinct margins get a bucket each (UltraFeedback has 17); beyond, equal-width bins.
MAX_EXACT_BUCKETS = 30
N_BINS = 20


def appearance_counts(strong_idx: np.ndarray, weak_idx: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-preference counts of strong-side and weak-side appearances, each int64 of shape ``(n,)``."""
    strong = np.bincount(np.asarray(strong_idx, dtype=np.int64), minlength=n).astype(np.int64)
    weak = np.bincount(np.asarray(weak_idx, dtype=np.int64), minlength=n).astype(np.int64)
    return strong, weak


def summarize(counts: np.ndarray) -> dict[str, float]:
    """``{"min", "mean", "max"}`` of a count array (zeros for an empty one)."""
    if counts.size == 0:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": int(counts.min()), "mean": float(counts.mean()), "max": int(counts.max())}


def margin_buckets(margins: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Assign each preference to a margin bucket.

    Returns ``(bucket, lo, hi)``: ``bucket`` int64 ``(N,)``; ``lo``/``hi`` float ``(B,)`` the bucket bounds.
    Scores on a grid (UltraFeedback's 0.5 steps) give one bucket per distinct margin (``lo == hi``);
    continuous margins give ``N_BINS`` equal-width bins.
    """
    m = np.round(np.asarray(margins, dtype=np.float64), 9)
    values = np.sort(m)  # sort-based distinct values: np.unique hashes first, slow on many values
    if values.size:
        values = values[np.concatenate(([True], values[1:] != values[:-1]))]
    else:
        return np.zeros(0, dtype=np.int64), values, values
    if values.size <= MAX_EXACT_BUCKETS:
        return np.searchsorted(values, m).astype(np.int64), values, values
    edges = np.linspace(values[0], values[-1], N_BINS + 1)
    bucket = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, N_BINS - 1).astype(np.int64)
    return bucket, edges[:-1], edges[1:]


def by_margin(margins: np.ndarray, strong: np.ndarray, weak: np.ndarray) -> list[dict[str, Any]]:
    """Histogram of appearances by margin bucket: preferences, strong/weak totals and per-preference means."""
    bucket, lo, hi = margin_buckets(margins)
    nb = lo.size
    prefs = np.bincount(bucket, minlength=nb)
    strong_tot = np.bincount(bucket, weights=strong, minlength=nb)
    weak_tot = np.bincount(bucket, weights=weak, minlength=nb)
    rows = []
    for b in range(nb):
        if prefs[b] == 0:
            continue
        rows.append(
            {
                "margin_lo": float(lo[b]),
                "margin_hi": float(hi[b]),
                "preferences": int(prefs[b]),
                "strong": int(strong_tot[b]),
                "weak": int(weak_tot[b]),
                "strong_per_preference": float(strong_tot[b] / prefs[b]),
                "weak_per_preference": float(weak_tot[b] / prefs[b]),
            }
        )
    return rows


def pair_statistics(
    strong_idx: np.ndarray,
    weak_idx: np.ndarray,
    flipped: np.ndarray,
    n: int,
    margins: np.ndarray | None = None,
) -> dict[str, Any]:
    """Statistics of pairs over ``n`` preferences, as stored (after any label noise).

    ``margins`` (shape ``(n,)``), when known, adds the histogram by margin bucket and how many stored
    labels agree with the margins (a stored label disagrees when it was flipped, or, for people's
    labels, when the annotator ordered the pair against the scores).
    """
    strong, weak = appearance_counts(strong_idx, weak_idx, n)
    stats: dict[str, Any] = {
        "pairs": int(len(strong_idx)),
        "flipped": int(np.count_nonzero(flipped)),
        "preferences_used": int(np.count_nonzero(strong + weak)),
        "preferences_unused": int(n - np.count_nonzero(strong + weak)),
        "strong": summarize(strong),
        "weak": summarize(weak),
    }
    if margins is not None:
        margins = np.asarray(margins, dtype=np.float64)
        gap = margins[strong_idx] - margins[weak_idx]
        stats["labels_agreeing_with_margins"] = int(np.count_nonzero(gap > 0))
        stats["labels_against_margins"] = int(np.count_nonzero(gap < 0))
        stats["labels_on_equal_margins"] = int(np.count_nonzero(gap == 0))
        stats["by_margin"] = by_margin(margins, strong, weak)
    return stats


def format_summary(meta: dict[str, Any]) -> str:
    """A few human-readable lines from a PoP sidecar (``PoPPairs.meta``), for the command line."""
    settings = meta.get("settings", {})
    counts = meta.get("counts", {})
    app = meta.get("appearances", {})
    lines = []
    target = counts.get("target")
    head = f"PoP pairs: {counts.get('pairs', app.get('pairs', 0)):,}"
    if target is not None:
        head += f" (target {target:,})"
    if settings:
        head += "; " + ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items()
        )
    lines.append(head)
    short = meta.get("shortfall")
    if short and short.get("pairs_missing"):
        line = f"shortfall: {short['pairs_missing']:,} pairs missing"
        if short.get("preferences_short") is not None:
            line += f"; {short['preferences_short']:,} preferences have fewer than k weaker candidates"
        elif counts.get("valid_pairs") is not None:
            line += f"; the dataset has only {counts['valid_pairs']:,} valid pairs"
        lines.append(line)
    if short and short.get("filled"):
        lines.append(f"fill_shortfall: {short['filled']:,} random valid pairs added to reach the target")
    for side in ("strong", "weak"):
        s = app.get(side)
        if s:
            lines.append(
                f"appearances as {side}: min {s['min']}, mean {s['mean']:.2f}, max {s['max']} per preference"
            )
    if "preferences_unused" in app:
        lines.append(f"preferences in no pair: {app['preferences_unused']:,}")
    pairs = max(int(app.get("pairs", 0)), 1)
    lines.append(f"flipped labels: {app.get('flipped', 0):,} ({100.0 * app.get('flipped', 0) / pairs:.1f}%)")
    if "labels_against_margins" in app and settings.get("strategy") == "labels":
        lines.append(f"labels against the score margins: {app['labels_against_margins']:,}")
    rows = app.get("by_margin")
    if rows:
        lines.append("by margin:   prefs  strong/pref  weak/pref")
        for r in rows:
            label = (
                f"{r['margin_lo']:g}"
                if r["margin_lo"] == r["margin_hi"]
                else f"{r['margin_lo']:.3g}-{r['margin_hi']:.3g}"
            )
            lines.append(
                f"  {label:>9} {r['preferences']:>7} {r['strong_per_preference']:>12.2f}"
                f" {r['weak_per_preference']:>10.2f}"
            )
    return "\n".join(lines)
