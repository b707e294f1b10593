"""Judged comparisons of generations against a baseline model's (paper Section 4.4, Tables 3, 9, 14-16).

A judge (a reward model, or a scoring function such as a testbed's ground-truth reward) scores each model's
reply and the baseline's reply to the same prompt. The per-prompt **advantage** is
``score(model reply) - score(baseline reply)``; the **win rate** is the share of positive advantages with ties
counting half, and the **median advantage** is the median over prompts. Both come with bootstrap intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from popalign.errors import PopalignError
from popalign.eval.stats import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, estimate, median, win_rate


def comparison_metrics(
    scores: np.ndarray,
    baseline_scores: np.ndarray,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Win rate and median advantage of ``scores`` over ``baseline_scores`` (both ``(N,)``, paired by prompt).

    Returns a JSON-ready dict: ``n``, ``wins``/``ties``/``losses``, ``win_rate`` and ``median_advantage``
    (each an :meth:`~popalign.eval.stats.Estimate.to_dict`), ``mean_advantage``, ``mean_score`` and
    ``baseline_mean_score``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    baseline_scores = np.asarray(baseline_scores, dtype=np.float64)
    if scores.shape != baseline_scores.shape:
        raise ValueError(f"{scores.shape} scores against {baseline_scores.shape} baseline scores")
    adv = scores - baseline_scores
    boot = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    return {
        "n": int(len(adv)),
        "wins": int((adv > 0).sum()),
        "ties": int((adv == 0).sum()),
        "losses": int((adv < 0).sum()),
        "win_rate": estimate(win_rate, adv, **boot).to_dict(),
        "median_advantage": estimate(median, adv, **boot).to_dict(),
        "mean_advantage": float(adv.mean()) if len(adv) else None,
        "mean_score": float(scores.mean()) if len(adv) else None,
        "baseline_mean_score": float(baseline_scores.mean()) if len(adv) else None,
        "bootstrap": boot,
    }


@dataclass
class PairedOutputs:
    """Replies of a model and of the baseline to the same prompts, in one order."""

    keys: list[str]
    instructions: list[str]
    outputs: list[str]
    baseline_outputs: list[str]
    unmatched: int


def _key(rec: dict[str, Any], by_id: bool) -> str:
    return str(rec["id"]) if by_id else rec["instruction"]


def pair_outputs(records: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> PairedOutputs:
    """Pair replies by ``id`` when both files have ids on every record, else by instruction text.

    Prompts only one side answered are counted in ``unmatched`` and left out; no common prompt is an error.
    """
    by_id = all("id" in r for r in records) and all("id" in r for r in baseline)
    base = {}
    for rec in baseline:
        base.setdefault(_key(rec, by_id), rec)
    keys, instructions, outputs, base_outputs = [], [], [], []
    seen = set()
    for rec in records:
        key = _key(rec, by_id)
        if key in seen or key not in base:
            continue
        seen.add(key)
        keys.append(key)
        instructions.append(rec["instruction"])
        outputs.append(rec["output"])
        base_outputs.append(base[key]["output"])
    if not keys:
        how = "ids" if by_id else "instructions"
        raise PopalignError(f"the model's and the baseline's outputs share no prompt (matched by {how})")
    unmatched = len({_key(r, by_id) for r in records} ^ set(base))
    return PairedOutputs(keys, instructions, outputs, base_outputs, unmatched)


def judgement_rows(
    paired: PairedOutputs, scores: np.ndarray, baseline_scores: np.ndarray, generator: str, baseline: str
) -> list[dict[str, Any]]:
    """Per-prompt records for ``judgements.jsonl``: both replies, both scores and the advantage."""
    return [
        {
            "id": key,
            "instruction": ins,
            "generator": generator,
            "baseline": baseline,
            "score": float(s),
            "baseline_score": float(b),
            "advantage": float(s - b),
            "output": out,
            "baseline_output": base,
        }
        for key, ins, out, base, s, b in zip(
            paired.keys,
            paired.instructions,
            paired.outputs,
            paired.baseline_outputs,
            scores,
            baseline_scores,
            strict=True,
        )
    ]
