"""Fair tuning: every method gets the same grid, and each picks its setting on validation prompts.

The paper tunes its settings for vanilla DPO and reuses them for every method (Appendix B). Here every
method and control is also trained at ``tuning.learning_rate_factors`` times the preference learning rate,
every run is evaluated on the validation preferences (``validation.jsonl``: prompts drawn like the
training ones, disjoint from train and test), and each method's setting is the one with the best mean over
seeds of the **validation** figure of the claim's kind: mean r* of sampled replies for generative claims,
accuracy for discriminative ones (ties go to the paper's setting, factor 1). :func:`select_settings` reads
only the ``eval-validation`` folders: no test figure enters a choice. The claims are then judged again on
the test split at each method's chosen setting, generative ones against the chosen vanilla DPO.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from popalign.eval.report import PREDICTIONS
from popalign.testbed import claims as cl
from popalign.testbed.plan import Layout, RunSpec
from popalign.testbed.results import GENERATIVE, RunResult, prediction_truth
from popalign.testbed.settings import BASELINE, ReproduceConfig

VALIDATION_DIR = "eval-validation"
KINDS = ("generative", "discriminative")


def enabled(cfg: ReproduceConfig) -> bool:
    return bool(cfg.tuning.learning_rate_factors)


def validation_figures(folder: Path, layout: Layout) -> dict[str, float] | None:
    """``{"generative": mean r* of validation replies, "discriminative": validation accuracy}``.

    Accuracy is judged as on the test split (:func:`~popalign.testbed.results.prediction_truth`): against
    the true margins where the data has them, the score margins otherwise.
    """
    from popalign.eval.discriminative import accuracy
    from popalign.testbed.task import reward

    ev = folder / VALIDATION_DIR
    if not (ev / PREDICTIONS).is_file() or not (ev / "model_outputs.json").is_file():
        return None
    with open(ev / PREDICTIONS, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    predicted = np.array([r["predicted_margin"] for r in rows], dtype=np.float64)
    truth = prediction_truth(layout, "validation", rows)
    acc = float(accuracy(predicted, truth))
    outputs = json.loads((ev / "model_outputs.json").read_text(encoding="utf-8"))
    mean_reward = float(np.mean([reward(r["instruction"], r["output"]) for r in outputs]))
    return {"generative": mean_reward, "discriminative": acc}


def select_settings(cfg: ReproduceConfig, layout: Layout, runs: list[RunSpec]) -> dict[str, Any]:
    """Per method: every grid point's validation figures (mean over seeds) and the chosen run per kind."""
    out: dict[str, Any] = {}
    for family in dict.fromkeys(r.family for r in runs if r.group in ("paper", "control", "tune")):
        grid = {}
        for spec in (r for r in runs if r.family == family):
            folders = [layout.run(spec.name, seed) for seed in cfg.seeds]
            found = [f for folder in folders if (f := validation_figures(folder, layout))]
            if len(found) == len(cfg.seeds):
                grid[spec.name] = {
                    "lr_factor": spec.lr_factor,
                    **{k: float(np.nanmean([f[k] for f in found])) for k in KINDS},
                }
        if not grid:
            continue
        out[family] = {"grid": grid, **{kind: _best(grid, kind) for kind in KINDS}}
    return out


def _best(grid: dict[str, dict[str, float]], kind: str) -> str:
    """The best validation figure; ties (and undefined figures) go to the setting nearest the paper's."""

    def key(name: str) -> tuple[float, float]:
        value = grid[name][kind]
        return (value if math.isfinite(value) else -math.inf, -abs(math.log(grid[name]["lr_factor"])))

    return max(grid, key=key)


def tuned_results(
    results: dict[str, list[RunResult]], selection: dict[str, Any], kind: str
) -> dict[str, list[RunResult]]:
    """Each method's runs at its chosen setting for ``kind``, under the method's own name.

    For generative claims the advantages are recomputed against the chosen vanilla DPO's replies of the same
    seed (r* is the judge, so this is exact); the paper's vanilla DPO keeps no special place.
    """
    picked = {f: results[s[kind]] for f, s in selection.items() if s[kind] in results}
    if kind != "generative" or BASELINE not in picked:
        return picked
    base = {r.seed: r for r in picked[BASELINE]}
    out = {}
    for family, found in picked.items():
        keep = [r for r in found if r.seed in base]
        out[family] = [
            replace(r, advantages=None if family == BASELINE else r.rewards - base[r.seed].rewards)
            for r in keep
        ]
    return out


def judge_tuned(results: dict[str, list[RunResult]], selection: dict[str, Any]) -> list[cl.Verdict]:
    """Every claim of the paper and the controls again, at each method's chosen setting (pending decide)."""
    verdicts = []
    for claim in cl.CLAIMS:
        kind = "generative" if claim.metric in GENERATIVE else "discriminative"
        verdicts.append(cl.judge_claim(claim, tuned_results(results, selection, kind)))
    return verdicts
