"""Which pairs of preferences a judge is asked about: the two strategies of ``pop build``, for a judge.

* **random** — the pairs :func:`popalign.pop.build.build_pop` draws (uniform valid pairs, none twice),
  with the score labels thrown away: the judge decides. Without scores every pair of distinct
  preferences is valid (their row ranks stand in for margins, one apart at least).
* **iterative** — preferences take turns as the *anchor* (seeded order) and meet candidates, in a
  seeded random order per anchor, until the judge has called the anchor stronger ``k`` times or
  ``max_candidates`` were asked (the paper's procedure for people, Section 4.1). Candidates are the
  preferences whose margin is at least ``min_gap`` lower (:func:`popalign.pop.build.weaker_candidates`),
  or every other preference without scores. The judge is asked in rounds: each unfinished anchor gets
  as many new candidates as it still needs wins, so the outcome does not depend on answer timing.

Every pair is shown on a seeded random side first; the judge is asked in both orders anyway.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from popalign.pop.build import PoPSpec, build_pop, weaker_candidates


@dataclass(frozen=True)
class Question:
    """A pair to judge: row positions, ``first`` shown as A in the first order; ``anchor`` or ``None``."""

    first: int
    second: int
    anchor: int | None = None


def random_questions(margins: np.ndarray | None, n: int, spec: PoPSpec) -> tuple[list[Question], dict]:
    """The random strategy's pairs and the sampler's counts (``target``, ``valid_pairs``, shortfall)."""
    if margins is None:
        margins, spec = np.arange(n, dtype=np.float64), dataclasses.replace(spec, min_gap=1.0)
    pairs = build_pop(margins, dataclasses.replace(spec, noise=0.0, fill_shortfall=False))
    swap = np.random.default_rng([spec.seed, 1]).random(len(pairs)) < 0.5
    questions = [
        Question(int(w), int(s)) if flip else Question(int(s), int(w))
        for s, w, flip in zip(pairs.strong_idx, pairs.weak_idx, swap, strict=True)
    ]
    counts = pairs.meta["counts"]
    return questions, {
        "target": counts["target"],
        "valid_pairs": counts["valid_pairs"],
        "pairs_missing": pairs.meta["shortfall"]["pairs_missing"],
    }


class IterativeQuestions:
    """The iterative strategy as rounds: :meth:`next_round`, then :meth:`record` each verdict."""

    def __init__(
        self, margins: np.ndarray | None, n: int, min_gap: float, k: int, max_candidates: int, seed: int
    ) -> None:
        self.n, self.k, self.max_candidates, self.seed = n, int(k), int(max_candidates), seed
        if margins is None:
            self._order, self._count = None, None
        else:
            self._order, self._count = weaker_candidates(np.asarray(margins, dtype=np.float64), min_gap)
        self.anchors = [int(i) for i in np.random.default_rng(seed).permutation(n)]
        self.wins = dict.fromkeys(self.anchors, 0)
        self.asked = dict.fromkeys(self.anchors, 0)
        self._next = dict.fromkeys(self.anchors, 0)
        self._open: set[int] = set(self.anchors)
        self._seen: set[tuple[int, int]] = set()
        self._side = np.random.default_rng([seed, 1])

    def _candidates(self, anchor: int) -> np.ndarray:
        if self._order is None:
            pool = np.delete(np.arange(self.n), anchor)
        else:
            pool = self._order[: self._count[anchor]]
        return np.random.default_rng([self.seed, anchor]).permutation(pool)

    def next_round(self) -> list[Question]:
        """New pairs for every unfinished anchor; empty when all are finished."""
        out = []
        for anchor in self.anchors:
            if anchor not in self._open:
                continue
            need = min(self.k - self.wins[anchor], self.max_candidates - self.asked[anchor])
            cands, pos, taken = self._candidates(anchor), self._next[anchor], 0
            while taken < need and pos < cands.size:
                other = int(cands[pos])
                pos += 1
                key = (min(anchor, other), max(anchor, other))
                if key in self._seen:  # already asked as another anchor's candidate
                    continue
                self._seen.add(key)
                first = self._side.random() < 0.5
                out.append(Question(anchor, other, anchor) if first else Question(other, anchor, anchor))
                taken += 1
            self._next[anchor] = pos
            self.asked[anchor] += taken
            if taken == 0:
                self._open.discard(anchor)
        return out

    def record(self, question: Question, winner: int | None) -> None:
        """The verdict on a pair of :meth:`next_round`: the stronger row, or ``None`` (tie, no answer)."""
        anchor = question.anchor
        if winner == anchor:
            self.wins[anchor] += 1
        if self.wins[anchor] >= self.k or self.asked[anchor] >= self.max_candidates:
            self._open.discard(anchor)

    def shortfall(self) -> dict[str, int]:
        """Anchors that ended with fewer than ``k`` wins, and the wins missing."""
        missing = [self.k - w for w in self.wins.values() if w < self.k]
        return {"preferences_short": len(missing), "pairs_missing": int(sum(missing))}
