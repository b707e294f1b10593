"""The reward-KL frontier: methods compared at the same distance from the reference, not the same epoch.

A method that moves the policy further from the SFT model for the same data (more optimiser steps, larger
pushes on strong preferences) can score worse at the end of its epoch for that reason alone when every step
past some point degrades generations. The field's answer (Gao et al. 2022, "Scaling laws for reward model
overoptimization"; Rafailov et al. 2024a for direct alignment) is to compare r* at a matched
``KL(pi || pi_ref)``. Each run's curve (:mod:`popalign.testbed.curves`) gives mean KL and mean r* at each
checkpoint; the r* a method reaches at a KL budget ``B`` is read off its curve by linear interpolation
between the two checkpoints where the curve **first** reaches ``B`` in training order (the r* the method has
when it has first spent that budget). A curve that never reaches ``B`` is *outside its range* there: nothing
is extrapolated.

**Budgets** are fixed by a rule on the KL values alone, never on any r*: vanilla DPO's final KL (each seed
is compared at the final KL of vanilla DPO of the same seed), and the fractions ``curve.budget_fractions``
of the common range (the smallest largest-KL over every run and seed), so those lie inside every curve.

**Resolution.** A value interpolated at budget ``B`` is *resolved* when it stands on checkpoints near the
budget and the curve is nearly straight between them (:func:`resolved`; a checkpoint exactly at ``B``
needs no interpolation): the checkpoint it reaches ``B`` at lies at most at ``2 B`` and the one before it
at least at ``B / 2``, and the straight line does not differ from the parabola through these two
checkpoints and their nearest neighbour by more than :data:`MAX_BEND` at ``B`` beyond two standard errors
of that difference (an estimate of the interpolation error, which is systematic: a straight line under a
concave curve sits below it in every seed; the standard errors keep noise between checkpoints from
passing for a bend). The start (KL 0) as
the lower checkpoint breaks the rule like any other distant one: the straight line from the SFT model is
not the curve. A matched-KL claim for which any seed of either run is unresolved gets the verdict
*unresolved*, never a direction; curves are sampled densely enough for this not to happen where KL grows
steadily (:mod:`popalign.testbed.curves`).

**Verdicts** are the claims' (:mod:`popalign.testbed.claims`): per seed, the subject's r* at the budget
minus the other's at the same budget (vanilla DPO's final KL of that seed for the first budget), then the t
test over seeds, Holm within the family. The tables' intervals are the descriptive bootstrap
(:func:`popalign.testbed.claims.bootstrap_stat`): each resample redraws seeds and test prompts, recomputes
every checkpoint's mean KL and mean r* on the drawn prompts, and interpolates again; when more than
:data:`MAX_UNDEFINED` of the resamples miss the budget, that interval is undefined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from popalign.testbed import claims as cl
from popalign.testbed.results import RunResult
from popalign.testbed.settings import BASELINE, NOMARGIN, NOMARGIN_CONTROLS, ORACLE

# Methods compared with vanilla DPO at matched KL, and the control question the margin answers.
FRONTIER_CLAIMS: list[cl.Claim] = [
    cl.Claim("kl-random", "At matched KL, DPO-PoP-random's replies score higher than vanilla DPO's",
             "frontier", "better", "reward_at_kl", "dpo-pop-random", BASELINE, group="frontier"),
    cl.Claim("kl-iter", "At matched KL, DPO-PoP-iter's replies score higher than vanilla DPO's",
             "frontier", "better", "reward_at_kl", "dpo-pop-iter", BASELINE, group="frontier"),
    cl.Claim("kl-gt", "At matched KL, DPO-margin-gt's replies score higher than vanilla DPO's",
             "frontier", "better", "reward_at_kl", "dpo-margin-gt", BASELINE, group="frontier"),
    cl.Claim("kl-sbt", "At matched KL, DPO-margin-gt-scaled's (SBT) replies score higher than vanilla DPO's",
             "frontier", "better", "reward_at_kl", "dpo-sbt", BASELINE, group="frontier"),
    cl.Claim("kl-nomargin", "At matched KL, PoP sampling without margin scores higher than vanilla DPO",
             "frontier", "better", "reward_at_kl", NOMARGIN, BASELINE, group="frontier"),
    cl.Claim("kl-margin", "The PoP margin matters at matched KL: DPO-PoP-random beats PoP sampling without "
             "margin", "frontier", "better", "reward_at_kl", "dpo-pop-random", NOMARGIN, group="frontier",
             control="kl-oracle"),
    cl.Claim("kl-margin-iter", "The PoP margin matters at matched KL: DPO-PoP-iter beats its PoP sampling "
             "without margin", "frontier", "better", "reward_at_kl", "dpo-pop-iter",
             NOMARGIN_CONTROLS["dpo-pop-iter"], group="frontier", control="kl-oracle"),
    cl.Claim("kl-oracle", "Positive control: at matched KL, the oracle margin (from r*) scores higher than "
             "vanilla DPO", "positive control", "better", "reward_at_kl", ORACLE, BASELINE,
             group="frontier"),
]  # fmt: skip
OUTSIDE = "outside range"
# The largest interpolation error (in r*) a resolved value may carry: a quarter of the equivalence bound of
# matched-KL claims, so that two readings of the same curve cannot differ by a meaningful amount.
MAX_BEND = cl.EQUIVALENCE_BOUNDS["reward_at_kl"] / 4
FINAL = "final"  # the budget key of vanilla DPO's final KL
MAX_UNDEFINED = 0.1


def reaches(kl, budget):
    """``kl >= budget``, up to rounding: a run's own final KL as its budget must count as reached."""
    return kl >= budget - 1e-9 * (1.0 + np.abs(budget))


def value_at_budget(kl: np.ndarray, value: np.ndarray, budget: float | np.ndarray) -> np.ndarray:
    """``value`` where the curve first reaches KL ``budget`` (a number or ``(R,)``), per column of ``(P, R)``.

    Rows are checkpoints in training order (row 0 the start). Between the last checkpoint below the budget
    and the first at or above it, ``value`` is interpolated linearly in KL; ``nan`` where no checkpoint
    reaches the budget (never extrapolated).
    """
    kl, value = np.atleast_2d(kl), np.atleast_2d(value)
    reached = reaches(kl, budget)
    first = reached.argmax(axis=0)
    prev = np.maximum(first - 1, 0)
    cols = np.arange(kl.shape[1])
    k0, k1 = kl[prev, cols], kl[first, cols]
    v0, v1 = value[prev, cols], value[first, cols]
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.clip(np.where((first == 0) | (k1 == k0), 1.0, (budget - k0) / (k1 - k0)), 0.0, 1.0)
    out = v0 + w * (v1 - v0)
    return np.where(reached.any(axis=0), out, np.nan)


@dataclass(eq=False)
class Budget:
    """A KL budget: a fixed ``value``, or per seed the final KL of vanilla DPO's run (``finals``).

    ``key``: its name in a preset's ``preregistered`` list (``final``, ``range25``, ...).
    """

    label: str
    value: float
    finals: dict[int, RunResult] | None = None
    key: str = ""

    def on(self, run: RunResult, idx: np.ndarray) -> np.ndarray:
        """The budget for ``run`` on each row of prompt draws ``idx`` ``(R, n)``: ``(R,)``."""
        if self.finals is None:
            return np.full(len(idx), self.value)
        return self.finals[run.seed].curve.kl[-1][idx].mean(axis=-1)


def curve_means(run: RunResult) -> tuple[np.ndarray, np.ndarray]:
    """Mean KL and mean r* of each checkpoint of ``run`` over all test prompts: ``(P,)`` each."""
    return run.curve.kl.mean(axis=1), run.curve.reward.mean(axis=1)


def reward_at_budget(run: RunResult, idx: np.ndarray, budget: Budget) -> np.ndarray:
    """Mean r* of ``run`` at ``budget`` on each row of prompt draws ``idx`` ``(R, n)``: ``(R,)``."""
    c = run.curve
    return value_at_budget(c.kl[:, idx].mean(axis=-1), c.reward[:, idx].mean(axis=-1), budget.on(run, idx))


def budgets(results: dict[str, list[RunResult]], fractions: list[float]) -> list[Budget]:
    """The KL budgets of the comparison (see the module doc); none when no run has a curve."""
    curves = [r for runs in results.values() for r in runs if r.curve is not None]
    if not curves:
        return []
    out = []
    base = results.get(BASELINE, [])
    if base and all(r.curve is not None for r in base):
        final = float(np.mean([curve_means(r)[0][-1] for r in base]))
        out.append(Budget("vanilla DPO's final KL", final, {r.seed: r for r in base}, key=FINAL))
    common = min(float(curve_means(r)[0].max()) for r in curves)
    out += [
        Budget(f"{f:.0%} of the common range", f * common, key=f"range{round(f * 100)}")
        for f in fractions
        if common > 0
    ]
    return out


def _on_all(run: RunResult, budget: Budget) -> float:
    """The budget for ``run`` on all its test prompts."""
    return float(budget.on(run, np.arange(len(run.truth))[None, :])[0])


def seed_bracket(run: RunResult, budget: Budget) -> tuple[float, float]:
    """Mean KL of the two checkpoints of one seed's curve that the budget is interpolated between."""
    kl = curve_means(run)[0]
    first = int(np.argmax(reaches(kl, _on_all(run, budget))))
    return float(kl[max(first - 1, 0)]), float(kl[first])


def bend(
    kl: np.ndarray, value: np.ndarray, budget: float, value_se: np.ndarray | None = None
) -> tuple[float, float]:
    """How far the straight line at ``budget`` lies from the parabola through three checkpoints, and the
    standard error of that difference.

    The two checkpoints the budget is interpolated between and the nearest other one (the one before, else
    the one after): ``|parabola(budget) - line(budget)|``, an estimate of the interpolation error. Both are
    weighted sums of the three values, so with their standard errors ``value_se`` (checkpoints sampled
    independently) the estimate's own error follows. ``(0, 0)`` on a checkpoint; ``inf`` when there is no
    third checkpoint.
    """
    first = int(np.argmax(reaches(kl, budget)))
    if first == 0 or abs(kl[first] - budget) <= 1e-9 * (1.0 + abs(budget)):
        return 0.0, 0.0
    prev = first - 1
    third = prev - 1 if prev >= 1 else first + 1
    if third >= len(kl):
        return float("inf"), 0.0
    idx = [third, prev, first]
    xs = kl[idx]
    if len(set(xs.tolist())) < 3:
        return float("inf"), 0.0
    # Lagrange weights of the parabola at the budget, minus the line's weights on its two checkpoints.
    weights = np.array(
        [np.prod([(budget - xs[j]) / (xs[i] - xs[j]) for j in range(3) if j != i]) for i in range(3)]
    )
    t = (budget - kl[prev]) / (kl[first] - kl[prev])
    weights[1] -= 1.0 - t
    weights[2] -= t
    se = 0.0 if value_se is None else float(np.sqrt(np.sum((weights * value_se[idx]) ** 2)))
    return float(abs(weights @ value[idx])), se


def bracket(runs: list[RunResult], budget: Budget) -> tuple[float, float]:
    """:func:`seed_bracket` averaged over seeds: how far apart the checkpoints are, for the tables."""
    pairs = [seed_bracket(r, budget) for r in runs]
    return float(np.mean([a for a, _ in pairs])), float(np.mean([b for _, b in pairs]))


def resolved(between: tuple[float, float], budget: float) -> bool:
    """Whether a value at ``budget`` stands on near checkpoints: within ``[budget / 2, 2 budget]``.

    A checkpoint exactly at the budget (up to rounding) needs no interpolation. The start (KL 0) as the
    lower checkpoint is as far as any checkpoint can be: it breaks the rule.
    """
    low, high = between
    if abs(high - budget) <= 1e-9 * (1.0 + abs(budget)):
        return True
    return high <= 2 * budget and low >= budget / 2


def unresolved_seeds(runs: list[RunResult], budget: Budget) -> list[str]:
    """The seeds whose value at ``budget`` is not resolved (module doc), as ``"name seed s (why)"``."""
    out = []
    for r in runs:
        low, high = seed_bracket(r, budget)
        target = _on_all(r, budget)
        if not resolved((low, high), target):
            out.append(f"{r.spec.name} seed {r.seed} (KL {low:.3g}-{high:.3g})")
        else:
            reward = r.curve.reward
            se = reward.std(axis=1, ddof=1) / np.sqrt(reward.shape[1])
            error, error_se = bend(*curve_means(r), target, se)
            # Only a bend larger than the tolerance beyond its own noise (2 standard errors) counts: the
            # parabola through three noisy checkpoints bends by chance too.
            if error - 2 * error_se > MAX_BEND:
                out.append(
                    f"{r.spec.name} seed {r.seed} (bend {error:.3g} +- {error_se:.2g} between KL "
                    f"{low:.3g}-{high:.3g})"
                )
    return out


def in_range(runs: list[RunResult], budget: Budget) -> bool:
    """Whether every seed's curve reaches ``budget`` (on all test prompts)."""
    every = np.arange(len(runs[0].truth))[None, :] if runs else None
    return all(r.curve is not None and reaches(curve_means(r)[0].max(), budget.on(r, every)[0]) for r in runs)


def at_budget(runs: list[RunResult], other: list[RunResult] | None, budget: Budget, boot: dict):
    """``(value, low, high)`` of ``runs`` (minus ``other``) at ``budget``; nan when outside a range."""
    if not in_range(runs, budget) or (other is not None and not in_range(other, budget)):
        return float("nan"), float("nan"), float("nan")
    return cl.bootstrap_stat(
        runs, other, lambda r, idx: reward_at_budget(r, idx, budget), min_defined=1 - MAX_UNDEFINED, **boot
    )


def judge_matched(claim: cl.Claim, results: dict[str, list[RunResult]], budget: Budget) -> cl.Verdict:
    """A matched-KL claim at ``budget``, measured per seed (verdict pending :func:`~claims.decide`).

    *outside range* when a curve does not reach the budget; *unresolved* when a value would lean on
    distant checkpoints (:func:`resolved`).
    """
    if claim.subject not in results or claim.other not in results:
        return cl.Verdict(claim, cl.NOT_RUN)
    subject, other = results[claim.subject], results[claim.other]
    if any(r.curve is None for r in subject + other):
        return cl.Verdict(claim, cl.NOT_RUN)
    if not (in_range(subject, budget) and in_range(other, budget)):
        return cl.Verdict(claim, OUTSIDE, against=claim.other, where=budget.key)
    broken = unresolved_seeds(subject, budget) + unresolved_seeds(other, budget)
    if broken:
        note = "interpolated between distant checkpoints: " + "; ".join(broken)
        return cl.Verdict(claim, cl.UNRESOLVED, against=claim.other, note=note, where=budget.key)
    every = {r.seed: np.arange(len(r.truth))[None, :] for r in subject + other}
    mine = {r.seed: float(reward_at_budget(r, every[r.seed], budget)[0]) for r in subject}
    theirs = {r.seed: float(reward_at_budget(r, every[r.seed], budget)[0]) for r in other}
    seeds = sorted(set(mine) & set(theirs))
    verdict = cl.measured(
        claim,
        [mine[s] - theirs[s] for s in seeds],
        float(np.mean([mine[s] for s in seeds])),
        claim.other,
        float(np.mean([theirs[s] for s in seeds])),
    )
    verdict.where = budget.key
    return verdict


def _point_stat(field: str, p: int):
    """The figure ``field`` of checkpoint ``p`` on prompt draws: mean KL / mean r* / win rate (ties half)."""

    def per_run(run: RunResult, idx: np.ndarray) -> np.ndarray:
        values = getattr(run.curve, field)[p]
        if field == "advantage":
            adv = values[idx]
            return ((adv > 0).sum(axis=1) + 0.5 * (adv == 0).sum(axis=1)) / adv.shape[1]
        return values[idx].mean(axis=-1)

    return per_run


def summarise_frontier(
    results: dict[str, list[RunResult]], fractions: list[float], boot: dict
) -> dict | None:
    """Curves (per run and seed, per checkpoint: step, KL, r* and win rate with intervals), budgets,
    the matched-KL table and verdicts."""
    with_curves = {n: runs for n, runs in results.items() if all(r.curve is not None for r in runs)}
    if BASELINE not in with_curves:
        return None
    # Each seed keeps its own KL-spaced checkpoints (steps differ between seeds), so curves are per seed;
    # a point's intervals are the item bootstrap of that seed.
    curves = {
        name: {
            str(r.seed): [
                {
                    "step": float(r.curve.steps[p]),
                    "kl": cl.bootstrap_stat([r], None, _point_stat("kl", p), **boot),
                    "reward": cl.bootstrap_stat([r], None, _point_stat("reward", p), **boot),
                    "win_rate": cl.bootstrap_stat([r], None, _point_stat("advantage", p), **boot),
                }
                for p in range(len(r.curve.steps))
            ]
            for r in runs
        }
        for name, runs in with_curves.items()
    }
    chosen = budgets(with_curves, fractions)
    table = {}
    for name, runs in with_curves.items():
        row = {}
        for b in chosen:
            value = at_budget(runs, None, b, boot)
            diff = at_budget(runs, with_curves[BASELINE], b, boot) if name != BASELINE else None
            inside = in_range(runs, b)
            between = bracket(runs, b) if inside else None
            row[b.label] = {
                "in_range": inside,
                "reward": value,
                "difference": diff,
                "between_kl": between,
                "unresolved": unresolved_seeds(runs, b) if inside else [],
            }
        row["max_kl"] = min(float(curve_means(r)[0].max()) for r in runs)
        table[name] = row
    verdicts = [(b, judge_matched(c, with_curves, b)) for b in chosen for c in FRONTIER_CLAIMS]
    return {
        "budgets": [{"label": b.label, "value": b.value, "key": b.key} for b in chosen],
        "curves": curves,
        "table": table,
        "verdicts": verdicts,
    }
