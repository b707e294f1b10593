"""Which pair to show next: the paper's two PoP sampling strategies, for people instead of scores.

* **random** — uniformly random distinct unordered pairs that nobody has been given yet, until
  ``target`` pairs are labelled or in flight. With scored data and ``min_gap > 0`` only pairs whose
  score margins differ by at least ``min_gap`` are drawn (the paper does not compare near-ties).
* **iterative** — preferences take turns as the *anchor*, in a seeded random order. An anchor is
  shown against candidates, one pair at a time, until the annotator has called it stronger ``k``
  times (its ``k`` weaker preferences), ``max_candidates`` candidates were judged, or none is left.
  With scored data and ``min_gap > 0`` the candidates are the preferences whose margin is at least
  ``min_gap`` lower, in random order (the paper's simulation); without scores they are all the other
  preferences, in random order.

**Gold pairs** (quality control, ``gold_fraction > 0``, scored data only) pair a preference from the
top quarter of score margins with one from the bottom quarter: the scores make the answer plain, so
an annotator's answers on them estimate their accuracy (:func:`gold_pairs`).

Samplers hold no state about what was served: they ask a :class:`PairView` (the database, inside the
serving transaction), so several annotators, restarts and undo all see one truth.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import numpy as np

RANDOM_TRIES = 200  # rejection draws before falling back to listing the free pairs
ENUMERATE_LIMIT = 3000  # up to this many preferences the fallback lists all pairs (N^2 / 2)
GOLD_POOL = 200  # gold pairs drawn per project; each annotator gets them in this order


@dataclass(frozen=True)
class Proposal:
    """A new pair to serve, in display order; ``anchor`` is the anchor's id (iterative) or ``None``."""

    id_a: str
    id_b: str
    anchor: str | None = None


@dataclass(frozen=True)
class GoldPair:
    """A quality-control pair in display order and its known answer (``"a"`` or ``"b"``)."""

    id_a: str
    id_b: str
    stronger: str


@dataclass(frozen=True)
class AnchorStats:
    """Per anchor: ``pairs`` created with it, ``open`` of those still unjudged, ``wins`` (it was stronger)."""

    pairs: int = 0
    open: int = 0
    wins: int = 0


class PairView(Protocol):
    """What a sampler may ask about the pairs served so far (first slot of each pair)."""

    def pair_exists(self, x: str, y: str) -> bool: ...

    def used_pairs(self) -> set[tuple[str, str]]: ...

    def partners(self, pref_id: str) -> set[str]: ...

    def counted_and_open(self) -> tuple[int, int]: ...

    def anchor_stats(self) -> dict[str, AnchorStats]: ...

    def my_last_anchor(self) -> str | None: ...

    def anchors_held_by_others(self) -> set[str]: ...


def _unordered(x: str, y: str) -> tuple[str, str]:
    return (x, y) if x < y else (y, x)


class RandomSampler:
    """Uniformly random unordered pairs without repeats (``margins`` of shape ``(N,)`` or ``None``)."""

    def __init__(
        self, ids: list[str], margins: np.ndarray | None, min_gap: float, target: int, seed: int
    ) -> None:
        self.ids = list(ids)
        self.margins = margins if (margins is not None and min_gap > 0) else None
        self.min_gap = min_gap
        self.target = target
        self.rng = random.Random(seed)

    def _valid(self, i: int, j: int) -> bool:
        if i == j:
            return False
        if self.margins is None:
            return True
        return abs(self.margins[i] - self.margins[j]) >= self.min_gap - 1e-9

    def propose(self, view: PairView) -> Proposal | None:
        counted, open_ = view.counted_and_open()
        if counted + open_ >= self.target:
            return None
        n = len(self.ids)
        for _ in range(RANDOM_TRIES):
            i, j = self.rng.randrange(n), self.rng.randrange(n)
            if self._valid(i, j) and not view.pair_exists(self.ids[i], self.ids[j]):
                return Proposal(self.ids[i], self.ids[j])
        return self._exhaustive(view)

    def _exhaustive(self, view: PairView) -> Proposal | None:
        # Only reached when free pairs are rare: list them all and draw one uniformly.
        n = len(self.ids)
        if n > ENUMERATE_LIMIT:
            return None
        used = view.used_pairs()
        free = [
            (i, j)
            for i in range(n)
            for j in range(i + 1, n)
            if self._valid(i, j) and _unordered(self.ids[i], self.ids[j]) not in used
        ]
        if not free:
            return None
        i, j = free[self.rng.randrange(len(free))]
        if self.rng.random() < 0.5:
            i, j = j, i
        return Proposal(self.ids[i], self.ids[j])


class IterativeSampler:
    """Each anchor against candidates until ``k`` weaker are found (or ``max_candidates`` judged)."""

    CACHE = 64  # candidate orders kept for the anchors in progress

    def __init__(
        self,
        ids: list[str],
        margins: np.ndarray | None,
        min_gap: float,
        k: int,
        max_candidates: int,
        seed: int,
    ) -> None:
        self.ids = list(ids)
        self.position = {pid: i for i, pid in enumerate(self.ids)}
        self.margins = margins if (margins is not None and min_gap > 0) else None
        self.min_gap = min_gap
        self.k = int(k)
        self.max_candidates = int(max_candidates)
        self.seed = seed
        self.anchor_order = [self.ids[i] for i in np.random.default_rng(seed).permutation(len(self.ids))]
        self._orders: OrderedDict[str, np.ndarray] = OrderedDict()
        self._side = random.Random(seed + 1)

    def candidate_order(self, anchor: str) -> np.ndarray:
        """Row positions of the anchor's candidates, in the order they are tried (seeded per anchor)."""
        if anchor in self._orders:
            self._orders.move_to_end(anchor)
            return self._orders[anchor]
        a = self.position[anchor]
        if self.margins is None:
            pool = np.delete(np.arange(len(self.ids)), a)
        else:
            pool = np.flatnonzero(self.margins <= self.margins[a] - self.min_gap + 1e-9)
        order = np.random.default_rng([self.seed, a]).permutation(pool)
        self._orders[anchor] = order
        if len(self._orders) > self.CACHE:
            self._orders.popitem(last=False)
        return order

    def next_candidate(self, anchor: str, view: PairView) -> str | None:
        used = view.partners(anchor)
        for j in self.candidate_order(anchor):
            cand = self.ids[int(j)]
            if cand not in used:
                return cand
        return None

    def _extend(self, anchor: str, stats: AnchorStats, view: PairView) -> Proposal | None:
        # wins + open < k: even if every open pair turns out a win, the anchor ends at exactly k.
        if stats.wins + stats.open >= self.k or stats.pairs >= self.max_candidates:
            return None
        if len(self.candidate_order(anchor)) == 0:
            return None  # no preference is weak enough: skip without asking the database
        cand = self.next_candidate(anchor, view)
        if cand is None:
            return None
        # Which side the anchor is shown on is random, so position cannot hint at the anchor.
        if self._side.random() < 0.5:
            return Proposal(anchor, cand, anchor)
        return Proposal(cand, anchor, anchor)

    def propose(self, view: PairView) -> Proposal | None:
        stats = view.anchor_stats()
        mine = view.my_last_anchor()
        if mine is not None:
            found = self._extend(mine, stats.get(mine, AnchorStats()), view)
            if found is not None:
                return found
        held = view.anchors_held_by_others()
        # First an anchor nobody is working on; only then join one that another annotator holds.
        for only_free in (True, False):
            for anchor in self.anchor_order:
                if anchor == mine or (only_free and anchor in held):
                    continue
                found = self._extend(anchor, stats.get(anchor, AnchorStats()), view)
                if found is not None:
                    return found
        return None

    def finished(self, stats: AnchorStats) -> bool:
        """An anchor with ``k`` wins, or ``max_candidates`` judged, is done (an exhausted one too)."""
        return stats.wins >= self.k or (stats.pairs - stats.open) >= self.max_candidates


def make_sampler(project, ids: list[str], margins: np.ndarray | None) -> RandomSampler | IterativeSampler:
    """The sampler a :class:`popalign.label.project.Project` asks for."""
    if project.strategy == "random":
        return RandomSampler(ids, margins, project.min_gap, project.target, project.seed)
    return IterativeSampler(
        ids, margins, project.min_gap, project.k_int, project.max_candidates, project.seed
    )


def gold_pairs(ids: list[str], margins: np.ndarray, seed: int, size: int = GOLD_POOL) -> list[GoldPair]:
    """Up to ``size`` distinct pairs of a top-quarter and a bottom-quarter preference by score margin
    (``margins`` of shape ``(N,)``), the stronger side known; seeded, shown on random sides."""
    n = len(ids)
    order = np.argsort(np.asarray(margins, dtype=float), kind="stable")
    quarter = max(1, n // 4)
    low, high = order[:quarter], order[n - quarter :]
    rng = np.random.default_rng([seed, 7])
    out: list[GoldPair] = []
    seen: set[tuple[int, int]] = set()
    for _ in range(size * 4):
        if len(out) >= size:
            break
        i, j = int(rng.choice(high)), int(rng.choice(low))
        if margins[i] <= margins[j] or (i, j) in seen:
            continue
        seen.add((i, j))
        if rng.random() < 0.5:
            out.append(GoldPair(ids[i], ids[j], "a"))
        else:
            out.append(GoldPair(ids[j], ids[i], "b"))
    return out
