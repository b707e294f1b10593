"""The finished runs of a reproduction, read back from their evaluation files as per-example arrays.

Every figure of the report is recomputed from these per-example files (``discriminative_predictions.jsonl``,
``judgements.jsonl``, ``model_outputs.json``), so a table, a verdict and a run's own ``discriminative.json``
can be checked against each other.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from popalign.eval.discriminative import correctness
from popalign.eval.kinds import KINDS
from popalign.eval.report import JUDGEMENTS, PREDICTIONS
from popalign.eval.stats import mean_rows, median_rows, pearson_rows, spearman_rows, win_rate_rows
from popalign.testbed.curves import Curve, load_curve, point_dir
from popalign.testbed.plan import Layout, RunSpec

DISCRIMINATIVE = ("accuracy", "pearson", "spearman", "accuracy_low", "accuracy_high")
# Training-log means read at each curve checkpoint (the trainer logs means over every example since its
# previous log, and the testbed logs at each snapshot): the margin the loss used, the policy's own reward
# margins on the same strong pairs, and the shares of PoP margins clipped to 0 and to M_max.
MARGIN_LOGS = {
    "margin": "margin/used",
    "reward_margin": "rewards/margins",
    "clipped_low": "pop/clipped_low",
    "clipped_high": "pop/clipped_high",
}
GENERATIVE = ("win_rate", "median_advantage", "mean_reward")


@dataclass
class RunResult:
    """One (run, seed): its test predictions and judged replies, aligned on the test preference ids.

    ``predicted``/``truth``: predicted and ground-truth margins ``(N,)``; ``advantages``: r* advantage over
    vanilla DPO's reply per test prompt ``(N,)`` (None for vanilla DPO itself); ``rewards``: r* of each reply
    (None when replies were not judged: the real-model track);
    ``curve``: the training curve (:mod:`popalign.testbed.curves`) when the run recorded one;
    ``margins``: ``step`` and screened ``kl`` of every screened snapshot, and the :data:`MARGIN_LOGS` there
    (``nan`` where not logged).
    """

    spec: RunSpec
    seed: int
    done: dict[str, Any]
    ids: list[str]
    predicted: np.ndarray
    truth: np.ndarray
    rewards: np.ndarray | None
    advantages: np.ndarray | None
    discriminative: dict[str, Any]
    judge: dict[str, Any] | None
    curve: Curve | None = None
    margins: dict[str, np.ndarray] | None = None
    credit: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.credit = correctness(self.predicted, self.truth)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_run(layout: Layout, spec: RunSpec, seed: int) -> RunResult | None:
    """The results of a finished run, or None when its ``done.json`` is missing."""
    from popalign.testbed.task import reward

    folder = layout.run(spec.name, seed)
    if not (folder / "done.json").is_file():
        return None
    ev = folder / "eval"
    rows = _jsonl(ev / PREDICTIONS)
    ids = [str(r["id"]) for r in rows]
    truth = prediction_truth(layout, "test", rows)
    generated = ev / "model_outputs.json"
    outputs = (
        {str(r["id"]): r for r in json.loads(generated.read_text(encoding="utf-8"))}
        if generated.is_file()
        else {}
    )
    judge, advantages = None, None
    if (ev / KINDS["judge"].file).is_file():
        judge = json.loads((ev / KINDS["judge"].file).read_text(encoding="utf-8"))
        by_id = {str(r["id"]): r["advantage"] for r in _jsonl(ev / JUDGEMENTS)}
        advantages = np.array([by_id[i] for i in ids], dtype=np.float64)
    done = json.loads((folder / "done.json").read_text(encoding="utf-8"))
    curve, margins = None, None
    screened = folder / "curve" / "screen.json"
    if screened.is_file():
        # The margins at every screened step, each with its screened KL ("kl"): a grid every seed shares.
        kl = {int(k): float(v) for k, v in json.loads(screened.read_text(encoding="utf-8")).items()}
        margins = {
            "step": np.array(sorted(kl), dtype=np.float64),
            "kl": np.array([kl[k] for k in sorted(kl)]),
        }
        margins.update(margin_trace(folder / "trainer_state.json", sorted(kl)))
    if done.get("curve_steps"):
        points = [(0, layout.origin(seed) / "eval")]
        points += [
            (s, ev if s == done["steps"] else point_dir(folder, s) / "eval") for s in done["curve_steps"]
        ]
        curve = load_curve(points, ids, reward)
    return RunResult(
        spec=spec,
        seed=seed,
        done=done,
        ids=ids,
        predicted=np.array([r["predicted_margin"] for r in rows], dtype=np.float64),
        truth=truth,
        rewards=np.array([reward(outputs[i]["instruction"], outputs[i]["output"]) for i in ids])
        if outputs
        else None,
        advantages=advantages,
        discriminative=json.loads((ev / KINDS["discriminative"].file).read_text(encoding="utf-8")),
        judge=judge,
        curve=curve,
        margins=margins,
    )


def prediction_truth(layout: Layout, split: str, rows: list[dict[str, Any]]) -> np.ndarray:
    """What the predictions ``rows`` of ``split`` are judged against: r*'s margins on the testbed
    (:func:`true_margins_of`), the data's score margins (``gt_margin``) on real data."""
    if layout.source is None:
        return true_margins_of(layout.data, split, [str(r["id"]) for r in rows])
    return np.array([r["gt_margin"] for r in rows], dtype=np.float64)


def true_margins_of(data_dir: Path, split: str, ids: list[str]) -> np.ndarray:
    """The testbed's true margins ``r*(chosen) - r*(rejected)`` of ``ids`` in ``split``, ``(N,)``.

    Discriminative figures on the testbed are judged against r*, as its replies are: the annotators' score
    margins (what evaluation files call ``gt_margin``) carry their noise and miscalibration, which would
    blur every difference and count a model that learnt the true ordering as wrong. Real data has no r*
    and keeps the score margins, as in the paper.
    """
    from popalign.testbed.annotators import true_margins
    from popalign.testbed.make_data import read_split

    rows = read_split(data_dir, split)
    by_id = dict(zip((str(r["id"]) for r in rows), true_margins(rows).tolist(), strict=True))
    return np.array([by_id[i] for i in ids], dtype=np.float64)


def margin_trace(state_file: Path, steps: list[int]) -> dict[str, np.ndarray]:
    """:data:`MARGIN_LOGS` at each of ``steps`` from a run's ``trainer_state.json``: the log at that step,
    else the last one before it; ``nan`` where there is none (e.g. a run that logs no PoP margin)."""
    history = (
        json.loads(state_file.read_text(encoding="utf-8"))["log_history"] if state_file.is_file() else []
    )
    logs = sorted((h for h in history if "loss" in h), key=lambda h: h["step"])
    out = {}
    for name, key in MARGIN_LOGS.items():
        values = []
        for step in steps:
            before = [h for h in logs if h["step"] <= step and key in h]
            values.append(float(before[-1][key]) if before else float("nan"))
        out[name] = np.array(values, dtype=np.float64)
    return out


def summarise_margins(
    results: dict[str, list[RunResult]], rows: int = 12
) -> dict[str, list[dict[str, float]]]:
    """Per run with a margin: the margin logs at up to ``rows`` steps screened in every seed, seed means.

    Each seed keeps its own checkpoints, but every seed screens the same steps (every
    ``curve.screen_every``-th and the last), so the table is read there, with the screened KL.
    ``ratio`` is the mean margin over the mean reward margin of the policy on the same strong pairs: how
    large the margin is against what the policy already separates. Runs whose margin is 0 throughout
    (vanilla DPO, the no-margin controls) are left out.
    """
    out = {}
    for name, runs in results.items():
        if any(r.margins is None for r in runs):
            continue
        common = sorted(set.intersection(*(set(r.margins["step"].tolist()) for r in runs)))
        if not common:
            continue
        picked = [common[i] for i in sorted({round(x) for x in np.linspace(0, len(common) - 1, rows)})]
        index = [{s: i for i, s in enumerate(r.margins["step"].tolist())} for r in runs]
        stack = {
            k: np.array([[r.margins[k][ix[s]] for s in picked] for r, ix in zip(runs, index, strict=True)])
            for k in ("kl", *MARGIN_LOGS)
        }
        if not np.nan_to_num(np.abs(stack["margin"])).any():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a log no seed has stays nan, silently
            means = {k: np.nanmean(v, axis=0) for k, v in stack.items()}
        table = []
        for i, step in enumerate(picked):
            row = {"step": float(step), **{k: float(means[k][i]) for k in ("kl", *MARGIN_LOGS)}}
            rm = row["reward_margin"]
            row["ratio"] = row["margin"] / rm if np.isfinite(rm) and rm != 0 else float("nan")
            table.append(row)
        out[name] = table
    return out


def margin_split(truth: np.ndarray) -> float:
    """The median non-tied test margin: ``accuracy_low`` takes margins up to it, ``accuracy_high`` above."""
    nonzero = truth[truth != 0]
    return float(np.median(nonzero)) if len(nonzero) else 0.0


def metric(run: RunResult, name: str, idx: np.ndarray | None = None, split: float | None = None) -> float:
    """One figure of ``run`` on the test items ``idx`` (all when None); ``nan`` where undefined.

    accuracy (ties left out, a zero prediction half right), pearson, spearman, accuracy_low / accuracy_high
    (non-tied items with margin <= / > ``split``, Figure 2), win_rate and median_advantage (over vanilla
    DPO's replies, ties half), mean_reward (mean r* of the replies).
    """
    rows = np.arange(len(run.truth))[None, :] if idx is None else np.asarray(idx)[None, :]
    return float(metric_batch(run, name, rows, split)[0])


def metric_batch(run: RunResult, name: str, idx: np.ndarray, split: float | None = None) -> np.ndarray:
    """:func:`metric` on each row of ``idx`` ``(R, n)`` (bootstrap draws of test items) at once: ``(R,)``."""
    if name == "accuracy":
        return mean_rows(run.credit[idx])
    if name in ("accuracy_low", "accuracy_high"):
        split = margin_split(run.truth) if split is None else split
        keep = run.truth <= split if name == "accuracy_low" else run.truth > split
        return mean_rows(np.where(keep, run.credit, np.nan)[idx])
    if name in ("pearson", "spearman"):
        rows = spearman_rows if name == "spearman" else pearson_rows
        return rows(run.predicted[idx], run.truth[idx])
    if name in GENERATIVE and run.rewards is None:
        return np.full(len(idx), np.nan)
    if name == "mean_reward":
        return run.rewards[idx].mean(axis=1)
    if name in ("win_rate", "median_advantage"):
        if run.advantages is None:  # the baseline against itself
            return np.full(len(idx), 0.5 if name == "win_rate" else 0.0)
        rows = median_rows if name == "median_advantage" else win_rate_rows
        return rows(run.advantages[idx])
    raise KeyError(f"unknown metric {name!r}")


def load_all(layout: Layout, runs: list[RunSpec], seeds: list[int]) -> dict[str, list[RunResult]]:
    """Finished results by run name, one entry per finished seed (in seed order)."""
    out: dict[str, list[RunResult]] = {}
    for spec in runs:
        found = [r for seed in seeds if (r := load_run(layout, spec, seed)) is not None]
        if found:
            out[spec.name] = found
    return out
