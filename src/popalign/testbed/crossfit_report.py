"""The cross-fitted study's section of the report: paired intervals over rows and the smallest effect it
could detect, with the share of truncated pairs and the mean PoP margin of each run.

The verdicts stay seed-level (:mod:`popalign.testbed.claims`); with 2 seeds their t test has one degree of
freedom, so the report adds, for each contrast of :func:`row_contrasts`, the paired accuracy difference
over the pooled out-of-fold rows: per row, the two runs' correctness difference averaged over seeds, and a
normal interval over rows. It describes the uncertainty from the finite set of preferences given these
trained models, not the seed-to-seed variation the verdicts test.

**Smallest detectable effect** (:func:`smallest_detectable`). For a paired accuracy difference d over n
non-tied rows, the per-row difference is non-zero on the share q of rows the two runs order differently,
and its variance is q - d^2 <= q. A two-sided test at level alpha has power ``power`` against d when
d = (z_{1 - alpha/2} + z_power) * sqrt(q / n); with q measured on the run, that d is the smallest effect
the design detects at 80% power and 5% two-sided (the q - d^2 refinement would shrink it slightly, so
this is the conservative figure). It is per seed: each seed scores every row once.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from popalign.testbed.claims import ALPHA, CONFIDENCE
from popalign.testbed.results import RunResult
from popalign.testbed.sections import fmt
from popalign.testbed.settings import BASELINE, NOMARGIN_CONTROLS, STEPS_MATCHED_CONTROLS, ReproduceConfig

POWER = 0.8
# The effect the paper reports for the accuracy claim: DPO-PoP-iter 0.79 against 0.71 (Table 1).
PAPER_EFFECT = 0.08


def smallest_detectable(q: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """``(z_{1-alpha/2} + z_power) * sqrt(q / n)``: the paired accuracy difference detected with ``power``."""
    from scipy.stats import norm

    if n < 1:
        return float("nan")
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * math.sqrt(q / n))


def row_contrasts(names: list[str]) -> list[tuple[str, str]]:
    """Every run against vanilla DPO, then each PoP method against its controls (where both ran)."""
    out = [(n, BASELINE) for n in names if n != BASELINE and BASELINE in names]
    for pop, control in [*STEPS_MATCHED_CONTROLS.items(), *NOMARGIN_CONTROLS.items()]:
        if pop in names and control in names:
            out.append((pop, control))
    return out


def paired_rows(a: list[RunResult], b: list[RunResult], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Accuracy of ``a`` minus ``b`` over rows (seeds both finished), its interval, q and the MDE.

    Raises:
        ValueError: when two runs of a seed were not scored on the same rows in the same order.
    """
    from scipy.stats import norm

    by_seed = {r.seed: r for r in b}
    pairs = [(r, by_seed[r.seed]) for r in a if r.seed in by_seed]
    diffs, shares = [], []
    for x, y in pairs:
        if x.ids != y.ids:
            raise ValueError(f"{x.spec.name} and {y.spec.name} seed {x.seed} scored different rows")
        d = x.credit - y.credit  # nan on tied preferences, which accuracy leaves out
        diffs.append(d)
        shares.append(float(np.mean(d[~np.isnan(d)] != 0)))
    out: dict[str, Any] = {"seeds": [x.seed for x, _ in pairs]}
    if not pairs:
        return {**out, "n": 0, "difference": float("nan"), "low": float("nan"), "high": float("nan"),
                "disagreement": float("nan"), "mde": float("nan")}  # fmt: skip
    rows = np.mean(diffs, axis=0)
    rows = rows[~np.isnan(rows)]
    n, mean = len(rows), float(rows.mean())
    half = float(norm.ppf(0.5 + confidence / 2) * rows.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    q = float(np.mean(shares))
    return {**out, "n": n, "difference": mean, "low": mean - half, "high": mean + half,
            "disagreement": q, "mde": smallest_detectable(q, n)}  # fmt: skip


def _truncation(results: dict[str, list[RunResult]]) -> dict[str, Any] | None:
    """Training pairs cut to fit, over the K training sets of vanilla DPO's first seed (as tokenised)."""
    runs = results.get(BASELINE)
    if not runs or not runs[0].done.get("tokenize"):
        return None
    stats = runs[0].done["tokenize"]
    rows, cut = sum(s["rows"] for s in stats), sum(s["truncated_rows"] for s in stats)
    return {"rows": rows, "truncated_rows": cut, "share": cut / rows if rows else float("nan")}


def _pop_margin(results: dict[str, list[RunResult]]) -> dict[str, float]:
    """Per run that used a margin: the mean logged margin over its seeds and folds."""
    out = {}
    for name, runs in results.items():
        values = [m for r in runs for m in r.done.get("pop_margin") or [] if m is not None]
        if values and any(v != 0 for v in values):
            out[name] = float(np.mean(values))
    return out


def summarise(cfg: ReproduceConfig, results: dict[str, list[RunResult]]) -> dict[str, Any]:
    """The section's numbers (``results.json``'s ``crossfit``)."""
    contrasts = [
        {"subject": a, "other": b, **paired_rows(results[a], results[b])}
        for a, b in row_contrasts(list(results))
    ]
    first = next(iter(results.values()), [])
    return {
        "folds": cfg.folds,
        "fold_seed": cfg.fold_seed,
        "rows": len(first[0].ids) if first else 0,
        "truncated": _truncation(results),
        "pop_margin": _pop_margin(results),
        "power": POWER,
        "alpha": ALPHA,
        "paper_effect": PAPER_EFFECT,
        "contrasts": contrasts,
    }


def blocks(summary: dict[str, Any]) -> list[tuple]:
    """Report blocks (see :mod:`popalign.testbed.report`)."""
    s = summary
    out: list[tuple] = [
        ("h2", "Cross-fitting: paired differences over rows and the smallest detectable effect"),
        ("p", f"{s['folds']}-fold cross-fitting by prompt (fold seed {s['fold_seed']}): each of the "
              f"{s['rows']} pooled rows is scored once per seed by models trained on the other folds. Paired "
              "accuracy difference over the non-tied rows (per row averaged over seeds; normal "
              f"{round(CONFIDENCE * 100)}% interval over rows); q: the share of rows the two runs order "
              f"differently; MDE: the smallest difference detectable at {round(POWER * 100)}% power, "
              f"{round(ALPHA * 100)}% two-sided, (z_0.975 + z_0.8) * sqrt(q / n), next to the paper's "
              f"{PAPER_EFFECT:g} (Table 1)."),
    ]  # fmt: skip
    headers = [
        "Subject",
        "Other",
        "Seeds",
        "n",
        "Accuracy difference",
        "q",
        "MDE",
        f"Detects {PAPER_EFFECT:g}",
    ]
    rows = [
        [c["subject"], c["other"], str(len(c["seeds"])), str(c["n"]),
         f"{fmt(c['difference'], 3)} [{fmt(c['low'], 3)}, {fmt(c['high'], 3)}]", fmt(c["disagreement"], 3),
         fmt(c["mde"], 3), "yes" if c["mde"] <= PAPER_EFFECT else "no"]
        for c in s["contrasts"]
    ]  # fmt: skip
    out.append(("table", (headers, rows)))
    t = s["truncated"]
    if t is not None:
        out.append(
            ("p", f"Truncation: {t['truncated_rows']} of {t['rows']} training pairs "
                  f"({100 * t['share']:.0f}%, over the {s['folds']} training sets) were cut to fit "
                  "max_length; the implicit rewards compare the kept beginnings of the replies.")
        )  # fmt: skip
    if s["pop_margin"]:
        out.append(
            ("table", (["Run", "Mean logged margin"], [[n, f"{v:.3g}"] for n, v in s["pop_margin"].items()]))
        )
    return out
