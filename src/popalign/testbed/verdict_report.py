"""The report's verdict tables: each verdict as a record, the claims' tables, the pre-registered contrasts.

Blocks are the report's ``("h2" | "p" | "table" | "img", ...)`` tuples (see :mod:`popalign.document`).
"""

from __future__ import annotations

import math
from typing import Any

from popalign.config import ConfigError
from popalign.testbed import claims as cl
from popalign.testbed import sections
from popalign.testbed.frontier import FINAL, FRONTIER_CLAIMS
from popalign.testbed.sections import fmt, interval


def verdict_record(v: cl.Verdict, id_suffix: str = "", group: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "id": v.claim.id + id_suffix,
        "claim": v.claim.text,
        "source": v.claim.source,
        "group": group or v.claim.group,
        "metric": v.claim.metric,
        "paper": v.claim.paper,
        "subject": v.claim.subject,
        "subject_value": v.subject_value,
        "against": v.against,
        "against_value": v.against_value,
        "difference": [v.difference, v.low, v.high],
        "per_seed": list(v.per_seed),
        "bound": v.bound,
        "p_difference": v.p_difference,
        "p_equivalence": v.p_equivalence,
        "p_difference_adjusted": v.p_difference_adjusted,
        "p_equivalence_adjusted": v.p_equivalence_adjusted,
        "family": v.family,
        "verdict": v.verdict,
        "note": v.note,
        "key": v.key + id_suffix,
        **extra,
    }


def verdict_table(verdicts: list[dict[str, Any]], group: str) -> tuple[list[str], list[list[str]]]:
    headers = [
        "Claim",
        "Source",
        "Paper",
        "Measured (mean over seeds)",
        "Difference [95% t CI over seeds]",
        "Holm-adjusted p",
        "Verdict",
    ]
    rows = []
    for v in verdicts:
        if v["group"] != group:
            continue
        measured = "-"
        if math.isfinite(v["subject_value"]):
            name = cl.METRIC_NAMES[v["metric"]]
            measured = f"{name}: {v['subject']} {fmt(v['subject_value'])} vs {v['against']} "
            measured += fmt(v["against_value"])
        rows.append(
            [
                v["claim"],
                v["source"],
                v["paper"] or "-",
                measured,
                interval(tuple(v["difference"])),
                sections.p_text(v) if v["verdict"] in TESTED else "-",
                v["verdict"],
            ]
        )
    return headers, rows


TESTED = (cl.REPRODUCED, cl.NOT_REPRODUCED, cl.INCONCLUSIVE, cl.EQUIVALENT)


RULE = (
    "Seeds are the unit of replication. Difference: the mean over seeds of each seed's difference (the "
    "claimed method minus the named rival, the threshold, or, for 'highest' / 'lowest' claims, the best "
    "other method of that same seed), with its 95% Student-t interval over seeds (conditional on the test "
    "set). Each claim gets the two-sided t test of no difference and an equivalence test (TOST) at its "
    "bound (the claim's tolerance, else the metric's fixed bound); p-values are Holm-adjusted within their "
    "family (the pre-registered contrasts, and the rest) at family-wise level 0.05. Verdict: reproduced "
    "when the difference test rejects in the claimed direction; not reproduced when it rejects the other "
    "way; equivalent when instead the equivalence test rejects (no difference beyond the bound, so the "
    "claim is not supported); inconclusive otherwise. An equivalence claim (~) is reproduced when the "
    "equivalence test rejects and not reproduced when the difference test does. Unresolved: the value "
    "leans on distant checkpoints and no test is run."
)


def preregistered_blocks(primary: list[str], verdicts: list[dict[str, Any]]) -> list[tuple]:
    """First in the report: the contrasts fixed in the preset before the run, with their verdicts."""
    if not primary:
        return []
    by_key = {v["key"]: v for v in verdicts}
    rows = []
    for key in primary:
        v = by_key.get(key)
        if v is None:
            rows.append([key, "-", "-", "-", cl.NOT_RUN])
            continue
        tested = v["verdict"] in TESTED
        rows.append(
            [
                f"{v['claim']}{' (' + v['budget'] + ')' if v.get('budget') else ''}",
                interval(tuple(v["difference"])) if tested else "-",
                sections.p_text(v) if tested else "-",
                v["note"] or "-",
                v["verdict"],
            ]
        )
    text = (
        "These contrasts and their budgets were listed in the preset (`preregistered`) before the run; they "
        "form one family, Holm-adjusted on its own (every other verdict of this report belongs to the "
        "exploratory family). Their settings were not chosen on test results."
    )
    headers = ["Pre-registered contrast", "Difference [95% t CI over seeds]", "Holm-adjusted p", "Note"]
    headers.append("Verdict")
    return [("h2", "Pre-registered contrasts"), ("p", text), ("table", (headers, rows))]


POSITIVE_TEXT = (
    "Before any claim about a margin's effect, the testbed must show it can see one. The oracle arm trains "
    "vanilla DPO with a margin computed from the ground-truth reward r* itself; if even that margin's effect "
    "is not detected on a kind of figure, no verdict about the PoP margin on that kind of figure is drawn "
    "(those claims read 'unresolved')."
)


def positive_control_blocks(verdicts: list[dict[str, Any]]) -> list[tuple]:
    """Second in the report: the oracle margin's effect, and what follows for the margin claims."""
    named = {c.control for c in (*cl.CLAIMS, *FRONTIER_CLAIMS) if c.control}
    controls = [v for v in verdicts if v["id"] in named]
    if not controls:
        return []
    rows = []
    for v in controls:
        tested = v["verdict"] in TESTED
        rows.append(
            [
                f"{v['claim']}{' (' + v['budget'] + ')' if v.get('budget') else ''}",
                interval(tuple(v["difference"])) if tested else "-",
                sections.p_text(v) if tested else "-",
                v["verdict"],
            ]
        )
    detected = [v for v in controls if v["verdict"] == cl.REPRODUCED]
    if not any(v["verdict"] != cl.NOT_RUN for v in controls):
        outcome = "Not run: this configuration has no oracle arm, so no margin claim gets a verdict."
    elif detected:
        names = ", ".join(f"{v['claim'].split(': ', 1)[-1]}" for v in detected)
        outcome = f"Detected: {names}. Margin claims on the same kind of figure get verdicts."
    else:
        outcome = (
            "Not detected: this testbed, at these settings and seeds, cannot show a margin effect even when "
            "the margin is the true one; it draws no verdict about the PoP margin."
        )
    headers = ["Positive control", "Difference [95% t CI over seeds]", "Holm-adjusted p", "Verdict"]
    return [
        ("h2", "Positive control"),
        ("p", POSITIVE_TEXT),
        ("table", (headers, rows)),
        ("p", outcome),
    ]


def check_preregistered(keys: list[str], fractions: list[float]) -> None:
    """Every pre-registered contrast names a claim; matched-KL ones a budget of this configuration.

    Raises:
        ConfigError: naming the first unknown entry and the valid ones.
    """
    budgets = [FINAL, *(f"range{round(f * 100)}" for f in fractions)]
    valid = [c.id for c in cl.CLAIMS] + [f"{c.id}@{b}" for c in FRONTIER_CLAIMS for b in budgets]
    for key in keys:
        if key not in valid:
            raise ConfigError(
                f"preregistered: {key!r} is not a claim of this report; valid: {', '.join(valid)}"
            )
