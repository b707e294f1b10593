"""How far two sources of PoP labels agree: a judge against scores, against people, and with itself.

* **Against scores** (where the preference data has them): the score-derived label of a pair is the
  preference with the larger margin. Pairs are grouped by their margin gap (one bucket per distinct gap
  on a score grid, :func:`popalign.pop.stats.margin_buckets`); per bucket, the share of decided pairs
  whose stronger side is the scores' one, with a Clopper-Pearson interval. A bucket is called *agrees*
  (interval above 0.5), *disagrees* (below) or *unresolved*; the buckets' intervals are Bonferroni-
  adjusted for their number, the overall one (a single contrast fixed in advance) is not.
* **Against another label file** (people's export of ``popalign label``, or a second judge) on the
  same pairs, in either order: Cohen's kappa over the answers "first id stronger", "second id
  stronger", "about the same".
* **Single answers against scores** (a judge's records file): the same curve over every answer on its
  own, each order apart: what one order alone would give, and a weak judge's signal where its two
  orders never agree.
* **Position consistency** (a judge's records file, with the answer in each presentation order): the
  share of pairs whose two orders agree, and the share of answers that picked whichever was shown first.

A label file here is any file ``popalign.pop.labels`` reads (``id_a``, ``id_b``, ``stronger``), where
``stronger`` may also be ``same`` or empty (no verdict), as in a judge's records file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from popalign.data.schema import PreferenceTable
from popalign.pop.labels import SAME, iter_labels
from popalign.pop.stats import margin_buckets

SAME_ROW = -1  # the stored "stronger" of a pair judged about the same
PICKS = ("a", "b", SAME)
LEVEL = 0.95


@dataclass
class Judgements:
    """Verdicts by unordered pair ``(low row, high row)``: the stronger row, or :data:`SAME_ROW`."""

    source: str
    verdicts: dict[tuple[int, int], int] = field(default_factory=dict)
    no_verdict: int = 0
    orders: list[tuple[str, str]] = field(default_factory=list)  # (first, second) picks where recorded
    # Each single answer of a records file: (shown first, shown second, the row it called stronger).
    answers: list[tuple[int, int, int]] = field(default_factory=list)


def load_judgements(path: str | Path, table: PreferenceTable) -> Judgements:
    """Read a label or records file against ``table``; errors name the file, row and field."""
    out = Judgements(str(path))
    for _, rec, a, b, winner in iter_labels(path, table, open_verdicts=True):
        if rec.get("first") in PICKS and rec.get("second") in PICKS:
            out.orders.append((rec["first"], rec["second"]))
        for shown, other, pick in ((a, b, rec.get("first")), (b, a, rec.get("second"))):
            if pick in PICKS:  # both picks are in the first order's letters: "a" is row a
                out.answers.append((shown, other, SAME_ROW if pick == SAME else (a if pick == "a" else b)))
        if winner is None:
            out.no_verdict += 1
        else:
            out.verdicts[(min(a, b), max(a, b))] = SAME_ROW if winner == SAME else winner
    return out


def _interval(agree: int, n: int, level: float) -> tuple[float | None, float | None]:
    if n == 0:
        return None, None
    from scipy.stats import binomtest

    ci = binomtest(agree, n).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def _call(low: float | None, high: float | None) -> str:
    if low is None:
        return "unresolved"
    if low > 0.5:
        return "agrees"
    if high < 0.5:
        return "disagrees"
    return "unresolved"


def _cell(agree: int, decided: int, ties: int, level: float) -> dict[str, Any]:
    low, high = _interval(agree, decided, level)
    return {
        "decided": decided,
        "ties": ties,
        "agree": agree,
        "share": agree / decided if decided else None,
        "ci": [low, high],
        "call": _call(low, high),
    }


def score_agreement(j: Judgements, margins: np.ndarray) -> dict[str, Any]:
    """Agreement of the verdicts with the score-derived labels, overall and per margin-gap bucket."""
    keys = list(j.verdicts)
    return _curve([k[0] for k in keys], [k[1] for k in keys], [j.verdicts[k] for k in keys], margins)


def answer_agreement(j: Judgements, margins: np.ndarray) -> dict[str, Any]:
    """The same for every single answer of a records file (each order apart): what a judge asked in one
    order only would give. Shows a weak judge's signal where its two orders never agree."""
    x, y, said = zip(*j.answers, strict=True) if j.answers else ((), (), ())
    return _curve(list(x), list(y), list(said), margins)


def _curve(x: list[int], y: list[int], said: list[int], margins: np.ndarray) -> dict[str, Any]:
    """Pairs ``(x[i], y[i])`` judged ``said[i]`` (the stronger row or :data:`SAME_ROW`) against scores."""
    if not said:
        return {"pairs": 0, "equal_margins": 0, "overall": _cell(0, 0, 0, LEVEL), "by_gap": []}
    x, y, said = np.asarray(x), np.asarray(y), np.asarray(said)
    gap = np.abs(margins[x] - margins[y])
    score_side = np.where(margins[x] > margins[y], x, y)
    usable = gap > 1e-9  # equal margins: the scores name no stronger side
    tie = said == SAME_ROW
    agree = (said == score_side) & usable
    bucket, b_lo, b_hi = margin_buckets(gap[usable]) if usable.any() else (np.zeros(0, int), [], [])
    level = 1 - (1 - LEVEL) / max(len(b_lo), 1)
    rows = []
    for b in range(len(b_lo)):
        sel = np.flatnonzero(usable)[bucket == b]
        if sel.size == 0:
            continue
        decided = int((~tie[sel]).sum())
        rows.append(
            {
                "gap": [float(b_lo[b]), float(b_hi[b])],
                **_cell(int(agree[sel].sum()), decided, int(tie[sel].sum()), level),
            }
        )
    decided = int((usable & ~tie).sum())
    return {
        "pairs": len(said),
        "equal_margins": int((~usable).sum()),
        "overall": _cell(int(agree.sum()), decided, int((usable & tie).sum()), LEVEL),
        "bucket_level": level,
        "by_gap": rows,
    }


def cohen_kappa(pairs: list[tuple[str, str]]) -> float | None:
    """Cohen's kappa (Cohen, 1960) of two raters' answers ``[(first, second), ...]``:
    ``(p_o - p_e) / (1 - p_e)``, ``p_e`` the sum over answers of the product of each rater's shares.
    ``None`` when nothing is defined (no items, or chance agreement is certain)."""
    n = len(pairs)
    if n == 0:
        return None
    first, second = Counter(x for x, _ in pairs), Counter(y for _, y in pairs)
    p_o = sum(x == y for x, y in pairs) / n
    p_e = sum(first[c] * second[c] for c in first) / (n * n)
    return None if p_e >= 1.0 else (p_o - p_e) / (1.0 - p_e)


def _answer(key: tuple[int, int], stronger: int) -> str:
    return SAME if stronger == SAME_ROW else ("low" if stronger == key[0] else "high")


def label_agreement(a: Judgements, b: Judgements) -> dict[str, Any]:
    """Cohen's kappa and raw agreement of two label files on the pairs both judged (either order)."""
    shared = [k for k in a.verdicts if k in b.verdicts]
    answers = [(_answer(k, a.verdicts[k]), _answer(k, b.verdicts[k])) for k in shared]
    return {
        "shared_pairs": len(shared),
        "only_first": len(a.verdicts) - len(shared),
        "only_second": len(b.verdicts) - len(shared),
        "agree": sum(x == y for x, y in answers) / len(answers) if answers else None,
        "kappa": cohen_kappa(answers),
    }


def position_consistency(orders: list[tuple[str, str]]) -> dict[str, Any] | None:
    """From ``(first, second)`` picks (``a``, ``b`` or ``same``, both in the first order's letters): the
    pairs, the share whose two orders agree, and the share of a/b answers that picked the preference
    shown first (0.5 without position bias) with its interval; ``None`` without any pair."""
    if not orders:
        return None
    # `second` is in the first order's letters; in its own order the first shown was "b".
    firsts = [x == "a" for x, _ in orders if x in ("a", "b")] + [
        y == "b" for _, y in orders if y in ("a", "b")
    ]
    return {
        "pairs": len(orders),
        "consistent": sum(x == y for x, y in orders) / len(orders),
        "answers_a_or_b": len(firsts),
        "picked_first_shown": sum(firsts) / len(firsts) if firsts else None,
        "picked_first_ci": list(_interval(sum(firsts), len(firsts), LEVEL)),
    }
