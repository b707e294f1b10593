"""Build a preference-over-preference (PoP) dataset from scored preferences (paper Section 4.1).

The margin of a preference is ``score_chosen - score_rejected``. A PoP pair ``(s, w)`` says preference
``s`` is stronger than preference ``w``; it is valid when ``margin[s] - margin[w] >= min_gap`` (the paper
uses 1: nearly indistinguishable pairs would not be labelled by an annotator). Two strategies:

* **iterative** — each preference is compared against ``k`` preferences weaker than it, drawn uniformly
  without replacement among its valid weaker candidates, so every preference is equally represented on
  the strong side. A preference with fewer than ``k`` candidates gets all of them; the shortfall is
  reported, or with ``fill_shortfall`` topped up with uniformly random valid pairs.
* **random** — uniformly random pairs of distinct preferences, labelled by their margins; a pair whose
  gap is below ``min_gap`` is rejected and redrawn, and no unordered pair is drawn twice. Stronger
  preferences have more valid partners, so they appear as strong more often.

Label noise (Appendix F) flips each label with probability ``noise`` and records it in ``flipped``.

Everything is vectorised numpy, linear in memory: the margins are sorted once and, for each preference
``i``, ``count[i]`` = number of valid weaker candidates = a ``searchsorted`` prefix of the sorted order.
The ``F = sum(count)`` valid unordered pairs are then numbered ``0..F-1`` (strong side ``i`` owns the block
``[cum[i] - count[i], cum[i])``, the offset in the block picks the weak side in sorted order), so random
sampling is drawing distinct integers below ``F`` — exactly the distribution of "draw a uniform pair,
redraw while invalid", without the rejection loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from popalign.config import ConfigError, help_field
from popalign.data.schema import PreferenceTable
from popalign.errors import DataError
from popalign.pop.pairs import PoPPairs
from popalign.pop.stats import pair_statistics

# Scores are on a 0.5 grid in UltraFeedback; a gap of exactly min_gap must count as valid despite
# float rounding in score_chosen - score_rejected.
GAP_EPS = 1e-9
META_FORMAT = "popalign.pop_pairs/1"


@dataclass
class PoPSpec:
    """How to build a PoP dataset; embeddable in run configs (``pop.k=4``)."""

    strategy: Literal["iterative", "random"] = help_field(
        "iterative",
        help="iterative: each preference against k weaker ones (equal representation); "
        "random: uniformly random valid pairs (stronger preferences appear more often). Section 4.1.",
    )
    k: float = help_field(
        2.0,
        help="data multiplier: target k * |D_pref| pairs (Appendix E uses 1, 2, 4, 8, 16). "
        "random accepts a fraction (target rounded); iterative needs a whole number (k per preference).",
    )
    min_gap: float = help_field(
        1.0, help="smallest margin difference between the strong and the weak preference of a pair (> 0)"
    )
    noise: float = help_field(
        0.0, help="label noise epsilon: flip each PoP label with this probability (Appendix F)"
    )
    seed: int = help_field(0, help="random seed; the same seed and data give the same pairs")
    fill_shortfall: bool = help_field(
        False,
        help="iterative only: when some preferences have fewer than k weaker candidates, top up with "
        "uniformly random valid pairs so that |D_PoP| = k |D_pref| (as Section 4.1 states for both "
        "strategies) where enough valid pairs exist; the top-up is counted in the sidecar",
    )

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that cannot build a dataset."""
        if self.strategy not in ("iterative", "random"):
            raise ConfigError(f"pop.strategy: {self.strategy!r} is not one of iterative, random")
        if not (math.isfinite(self.k) and self.k > 0):
            raise ConfigError(f"pop.k: must be a positive number, got {self.k!r}")
        if self.strategy == "iterative" and float(self.k) != int(self.k):
            raise ConfigError(
                "pop.k: iterative sampling takes k weaker preferences each, so k must be whole, "
                f"got {self.k!r} (random sampling accepts fractions)"
            )
        if not (math.isfinite(self.min_gap) and self.min_gap > 0):
            raise ConfigError(
                "pop.min_gap: must be > 0 so that each pair has a strictly stronger side, "
                f"got {self.min_gap!r}"
            )
        if not (0.0 <= self.noise <= 1.0):
            raise ConfigError(f"pop.noise: a probability in [0, 1], got {self.noise!r}")


def _check_margins(margins: np.ndarray, source: str | None = None) -> np.ndarray:
    m = np.asarray(margins, dtype=np.float64)
    if m.ndim != 1:
        raise ValueError(f"build_pop: margins must have shape (N,), got {m.shape}")
    bad = np.flatnonzero(~np.isfinite(m))
    if bad.size:
        raise DataError(
            f"margin is {m[bad[0]]} ({bad.size} rows without a finite margin)",
            file=source,
            row=int(bad[0]) + 1,
            field="margin",
        )
    return m


def weaker_candidates(margins: np.ndarray, min_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Sort once and count each preference's valid weaker partners.

    Returns ``(order, count)``, both int64 ``(N,)``: ``order`` sorts the margins ascending (stable, so
    the result does not depend on the machine's sort kernel) and ``order[:count[i]]`` are exactly the
    ``j`` with ``margin[j] <= margin[i] - min_gap``. ``min_gap > 0`` keeps ``i`` out of its own prefix.
    """
    order = np.argsort(margins, kind="stable").astype(np.int64)
    ordered = margins[order]
    count = np.empty(margins.size, dtype=np.int64)
    # Searching with the sorted margins as needles is several times faster than in table order.
    count[order] = np.searchsorted(ordered, ordered - min_gap + GAP_EPS, side="right")
    return order, count


def _sample_prefix_without_replacement(count: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """For each row ``r``, ``k`` distinct positions uniform in ``[0, count[r])``; rows need ``count >= k``.

    Floyd's algorithm, vectorised over rows (the loop runs over the ``k`` draws, not the rows): at step
    ``s`` draw ``t`` in ``[0, j]`` with ``j = count - k + s``; take ``t`` unless already taken, else ``j``.
    Every ``k``-subset is equally likely. Returns int64 ``(R, k)``.
    """
    picks = np.empty((count.size, k), dtype=np.int64)
    for s in range(k):
        j = count - k + s
        t = rng.integers(0, j + 1)
        taken = (picks[:, :s] == t[:, None]).any(axis=1)
        picks[:, s] = np.where(taken, j, t)
    return picks


def _iterative(order: np.ndarray, count: np.ndarray, k: int, rng: np.random.Generator):
    """Each preference ``i`` strong against ``min(k, count[i])`` of its weaker candidates.

    Returns ``(strong, weak, shortfall)`` with the pairs in random order.
    """
    n = count.size
    quota = np.minimum(count, k)
    pos = np.broadcast_to(np.arange(k, dtype=np.int64), (n, k)).copy()  # short rows: take all they have
    full = np.flatnonzero(count >= k)
    if full.size and k > 0:
        pos[full] = _sample_prefix_without_replacement(count[full], k, rng)
    keep = np.arange(k)[None, :] < quota[:, None]
    strong = np.repeat(np.arange(n, dtype=np.int64), quota)
    weak = order[pos[keep]]
    shuffle = rng.permutation(strong.size)  # random order, like random sampling's
    strong, weak = strong[shuffle], weak[shuffle]
    shortfall = {
        "preferences_short": int(np.count_nonzero(count < k)),
        "pairs_missing": int((k - quota).sum()),
    }
    return strong, weak, shortfall


def _sorted_distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values; ``np.unique`` hashes first in numpy 2.x, several times slower here."""
    values = np.sort(values)
    if values.size:
        values = values[np.concatenate(([True], values[1:] != values[:-1]))]
    return values


def _distinct_below(total: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` distinct integers, a uniformly random subset of ``[0, total)``, sorted (``size <= total``).

    Draw with replacement, keep the distinct values, top up until there are enough, then drop a
    uniformly random excess. The law of the distinct set is unchanged by any relabelling of
    ``[0, total)``, so given its size it is a uniform subset, and so is what remains after the drop: the
    same law as drawing pairs one by one and redrawing duplicates. Dense cases (``size > total / 2``)
    shuffle the whole range instead, which is at most ``2 * size`` long.
    """
    if size == 0:
        return np.empty(0, dtype=np.int64)
    if 2 * size > total:
        return np.sort(rng.permutation(total)[:size]).astype(np.int64)
    # Draws that give `size` distinct values in expectation: -total * log(1 - size / total).
    draw = int(-total * math.log1p(-size / total) * 1.01) + 16
    keys = _sorted_distinct(rng.integers(0, total, size=draw, dtype=np.int64))
    while keys.size < size:
        missing = size - keys.size
        draw = int(missing * total / (total - keys.size) * 1.1) + 16
        keys = _sorted_distinct(np.concatenate([keys, rng.integers(0, total, size=draw, dtype=np.int64)]))
    if keys.size > size:
        keys = np.delete(keys, rng.choice(keys.size, keys.size - size, replace=False))
    return keys


def _random(order: np.ndarray, count: np.ndarray, target: int, rng: np.random.Generator):
    """``min(target, F)`` distinct valid pairs, a uniform random subset of the ``F``, in random order.

    Returns ``(strong, weak, shortfall)``; ``preferences_short`` is ``None`` (a per-preference quota
    only exists for iterative sampling).
    """
    cum = np.cumsum(count)
    total = int(cum[-1]) if cum.size else 0
    keys = _distinct_below(total, min(target, total), rng)
    strong = np.searchsorted(cum, keys, side="right").astype(np.int64)  # sorted keys: cache-friendly
    weak = order[keys - (cum[strong] - count[strong])]
    shuffle = rng.permutation(keys.size)  # random order, so any prefix of the file is a random sample
    shortfall = {"preferences_short": None, "pairs_missing": int(max(target - total, 0))}
    return strong[shuffle], weak[shuffle], shortfall


def _fill(
    order: np.ndarray, count: np.ndarray, strong: np.ndarray, weak: np.ndarray, missing: int, rng
) -> tuple[np.ndarray, np.ndarray, int]:
    """Top up ``(strong, weak)`` with ``missing`` valid pairs not yet present, uniform among the rest.

    Pairs are numbered as in :func:`_random`. A uniform subset of ``E + missing`` numbers minus the ``E``
    present ones is, by symmetry, a uniform subset of the absent ones; a random ``missing`` of them are kept.
    """
    cum = np.cumsum(count)
    total = int(cum[-1]) if cum.size else 0
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    present = cum[strong] - count[strong] + rank[weak]
    keys = _distinct_below(total, min(total, present.size + missing), rng)
    keys = keys[~np.isin(keys, present)]
    keys = keys[rng.permutation(keys.size)[:missing]]
    extra_strong = np.searchsorted(cum, keys, side="right").astype(np.int64)
    extra_weak = order[keys - (cum[extra_strong] - count[extra_strong])]
    strong, weak = np.concatenate([strong, extra_strong]), np.concatenate([weak, extra_weak])
    shuffle = rng.permutation(strong.size)
    return strong[shuffle], weak[shuffle], int(keys.size)


def build_pop(margins: np.ndarray, spec: PoPSpec) -> PoPPairs:
    """Build PoP pairs from ground-truth margins, shape ``(N,)``; pure (no I/O).

    Every pair satisfies ``margins[true strong] - margins[true weak] >= spec.min_gap``; no self-pairs;
    no unordered pair twice. ``meta`` holds the settings, target ``round(k * N)``, the shortfall and
    appearance statistics. The pair choice and the noise use separate streams of ``spec.seed``, so
    changing ``noise`` keeps the same pairs, and the flips at a lower noise are a subset of those at a
    higher one (same uniforms, lower threshold).
    """
    spec.validate()
    m = _check_margins(margins)
    n = m.size
    pair_seed, noise_seed = np.random.SeedSequence(spec.seed).spawn(2)
    order, count = weaker_candidates(m, spec.min_gap)
    if spec.strategy == "iterative":
        k = int(spec.k)
        target = k * n
        rng = np.random.default_rng(pair_seed)
        strong, weak, shortfall = _iterative(order, count, k, rng)
        if spec.fill_shortfall and shortfall["pairs_missing"]:
            strong, weak, filled = _fill(order, count, strong, weak, shortfall["pairs_missing"], rng)
            shortfall["filled"] = filled
            shortfall["pairs_missing"] -= filled
    else:
        target = int(round(spec.k * n))
        strong, weak, shortfall = _random(order, count, target, np.random.default_rng(pair_seed))
    flipped = np.random.default_rng(noise_seed).random(strong.size) < spec.noise
    strong, weak = np.where(flipped, weak, strong), np.where(flipped, strong, weak)
    meta: dict[str, Any] = {
        "format": META_FORMAT,
        "settings": {
            "strategy": spec.strategy,
            "k": spec.k,
            "min_gap": spec.min_gap,
            "noise": spec.noise,
            "seed": spec.seed,
            "fill_shortfall": spec.fill_shortfall,
        },
        "source": {"preferences": n},
        "counts": {
            "pairs": int(strong.size),
            "target": int(target),
            "valid_pairs": int(count.sum()),
            "flipped": int(np.count_nonzero(flipped)),
        },
        "shortfall": shortfall,
        "appearances": pair_statistics(strong, weak, flipped, n, m),
    }
    return PoPPairs(strong, weak, flipped, meta)


def build_pop_for_table(table: PreferenceTable, spec: PoPSpec) -> PoPPairs:
    """:func:`build_pop` on a table's margins; ``meta["source"]`` names the dataset and its fingerprint.

    Raises :class:`DataError` when the table has no scores (PoP labels from people are read with
    :func:`popalign.pop.labels.load_pop_labels` instead).
    """
    if not table.has_scores:
        raise DataError(
            "has no scores (score_chosen/score_rejected), so PoP pairs cannot be built from margins; "
            "map the score columns with --columns score_chosen=NAME,score_rejected=NAME, or use PoP labels "
            "from people (`popalign label`, then pop_labels=FILE in train)",
            file=table.source,
        )
    margins = _check_margins(table.margins, table.source)  # so a bad row is reported with its file
    pairs = build_pop(margins, spec)
    pairs.meta["source"] = {
        "path": table.source,
        "fingerprint": table.fingerprint(),
        "preferences": len(table),
    }
    return pairs


# How each command spells the PoP options its advice names: flags (pop build) or run-config keys (train).
_SPELLING = {
    "flag": {"min_gap": "--min-gap", "fill_shortfall": "--fill-shortfall", "k": "-k"},
    "key": {"min_gap": "pop.min_gap", "fill_shortfall": "pop.fill_shortfall=true", "k": "pop.k"},
}
SHORTFALL_WARN = 0.10


def shortfall_warning(meta: dict[str, Any], style: str = "flag") -> str | None:
    """A warning when the pairs fall more than 10% short of the target ``k * N``, else ``None``."""
    counts, names = meta["counts"], _SPELLING[style]
    target, pairs = counts.get("target"), counts["pairs"]
    if not target or pairs >= (1 - SHORTFALL_WARN) * target:
        return None  # people's labels have no target
    short = meta["shortfall"].get("preferences_short")
    who = f"{short:,} preferences have fewer than k weaker ones, " if short else ""
    fill = (
        f", or {names['fill_shortfall']} to top up with random valid pairs"
        if meta["settings"]["strategy"] == "iterative" and not meta["settings"].get("fill_shortfall")
        else ""
    )
    return (
        f"warning: {pairs:,} PoP pairs, {100 * (1 - pairs / target):.0f}% short of the target "
        f"k x N = {target:,} ({who}{counts['valid_pairs']:,} valid pairs in all at min_gap "
        f"{meta['settings']['min_gap']:g}); lower {names['min_gap']} or {names['k']}{fill}"
    )


def check_pairs(pairs: PoPPairs, source: str, style: str = "flag") -> None:
    """Zero PoP pairs is an error: nothing could be trained or saved usefully."""
    if len(pairs):
        return
    gap = pairs.meta["settings"].get("min_gap")
    if gap is None:
        raise DataError("no PoP pairs: the label file gives none for these preferences", file=source)
    raise DataError(
        f"no PoP pairs: no two preferences differ in margin by at least min_gap {gap:g}; lower "
        f"{_SPELLING[style]['min_gap']} (see the margin histogram of `popalign data inspect`)",
        file=source,
    )
