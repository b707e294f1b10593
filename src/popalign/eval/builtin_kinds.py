"""The built-in evaluation kinds: their tables (the paper's Tables 1-3 and the generations') and notes."""

from __future__ import annotations

from typing import Any

from popalign.eval.kind import EvalKind, RunResults, Table
from popalign.eval.rewardbench import PRIOR_SECTION, SECTIONS
from popalign.eval.stats import Estimate


def _est(d: dict[str, Any] | None, digits: int = 4, scale: float = 1.0) -> str:
    return Estimate.from_dict(d).format(digits, scale) if d else "-"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def discriminative_table(runs: list[RunResults]) -> Table | None:
    """Paper Table 1: Pearson, Spearman and accuracy with 95% intervals, plus counts."""
    rows = []
    for run in runs:
        res = run.results.get("discriminative")
        if not res:
            continue
        m = res["metrics"]
        rows.append(
            [
                run.name,
                run.method or "-",
                _est(m.get("pearson")),
                _est(m.get("spearman")),
                _est(m.get("accuracy")),
                str(m["n_scored"]),
                str(m["ties"]["n"]),
            ]
        )
    headers = ["Run", "Method", "Pearson", "Spearman", "Accuracy", "Scored", "Ties"]
    return (headers, rows) if rows else None


def rewardbench_table(runs: list[RunResults]) -> Table | None:
    """Paper Table 2: section scores and Overall, x100 as RewardBench prints them."""
    found = [(r, r.results["rewardbench"]["scores"]) for r in runs if "rewardbench" in r.results]
    if not found:
        return None
    prior = any(s["sections"].get(PRIOR_SECTION) is not None for _, s in found)
    headers = ["Run", *SECTIONS, *([PRIOR_SECTION] if prior else []), "Overall", "All rows", "N"]
    rows = []
    for run, s in found:
        cells = [_pct(s["sections"].get(sec)) for sec in SECTIONS]
        if prior:
            cells.append(_pct(s["sections"].get(PRIOR_SECTION)))
        rows.append([run.name, *cells, _pct(s.get("overall")), _pct(s.get("accuracy")), str(s["n"])])
    return headers, rows


def rewardbench_subset_table(run: RunResults) -> tuple[str, Table] | None:
    """Per-subset accuracy, shown for a single run."""
    res = run.results.get("rewardbench")
    if not res:
        return None
    rows = [
        [name, _pct(rec["accuracy"]), f"{rec['correct']}/{rec['n']}"]
        for name, rec in res["scores"]["subsets"].items()
    ]
    return "RewardBench subsets", (["Subset", "Accuracy", "Correct"], rows)


def judge_table(runs: list[RunResults]) -> Table | None:
    """Paper Table 3: median advantage and win rate (%) against the baseline, with 95% intervals."""
    rows = []
    for run in runs:
        res = run.results.get("judge")
        if not res:
            continue
        m = res["metrics"]
        rows.append(
            [
                run.name,
                res.get("baseline", "-"),
                res.get("judge", {}).get("name", "-"),
                _est(m.get("median_advantage")),
                _est(m.get("win_rate"), digits=1, scale=100.0),
                f"{m['wins']}/{m['ties']}/{m['losses']}",
                str(m["n"]),
            ]
        )
    headers = ["Run", "Baseline", "Judge", "Median Advantage", "Win Rate %", "W/T/L", "N"]
    return (headers, rows) if rows else None


def generate_table(runs: list[RunResults]) -> Table | None:
    """Sampled replies: how many, their length, and the KL estimate to the reference (nats, 95% interval)."""
    rows = []
    for run in runs:
        res = run.results.get("generate")
        if not res:
            continue
        kl = res.get("kl") or {}
        shown = _est(kl) if kl.get("value") is not None else f"- ({kl.get('reason', 'not computed')})"
        settings = res.get("settings", {})
        rows.append(
            [
                run.name,
                str(res["data"]["prompts"]),
                f"{settings.get('temperature', '-')}",
                f"{res.get('mean_output_chars', 0):.0f}",
                shown,
                str(kl.get("reference", "-")),
            ]
        )
    headers = ["Run", "Prompts", "Temperature", "Mean reply chars", "KL(pi || pi_ref)", "Reference"]
    return (headers, rows) if rows else None


DISCRIMINATIVE = EvalKind(
    name="discriminative",
    file="discriminative.json",
    title="Discriminative (test preferences)",
    note="Predicted margin: implicit reward difference (DPO, Eq. 3) or reward-model score difference. "
    "Accuracy leaves out ties (ground-truth margin 0); a predicted margin of exactly 0 counts half. "
    "Brackets: bootstrap 95% intervals.",
    table=discriminative_table,
    records_method=True,
)
REWARDBENCH = EvalKind(
    name="rewardbench",
    file="rewardbench.json",
    title="RewardBench",
    note="Section scores weight subset accuracies by RewardBench's example counts; Overall is the mean of "
    "the four sections; All rows is the plain accuracy over every row (see docs/evaluation.md).",
    table=rewardbench_table,
    detail=rewardbench_subset_table,
    records_method=True,
)
GENERATE = EvalKind(
    name="generate",
    file="generate.json",
    title="Generations",
    note="KL: mean over prompts of the summed log-ratio log pi_T - log pi_ref,T of each sampled reply's "
    "tokens at the sampling temperature T (unbiased for KL(pi_T || pi_ref,T); docs/evaluation.md).",
    table=generate_table,
    on_card=False,
)
JUDGE = EvalKind(
    name="judge",
    file="judge.json",
    title="Judged generations",
    note="Advantage = judge score of the run's reply minus the baseline's, per prompt; ties count half a "
    "win. Brackets: bootstrap 95% intervals.",
    table=judge_table,
    records_method=True,
)
# The order reports show them in.
BUILTIN = (DISCRIMINATIVE, REWARDBENCH, GENERATE, JUDGE)
