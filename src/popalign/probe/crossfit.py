"""K-fold cross-fitting of every arm's reward heads, so that every row is scored by heads that never saw it.

For each seed the rows are split into ``K`` folds by prompt (one prompt's rows stay together); for each
fold, every arm trains one head per seed on the other folds and scores the held-out fold. A PoP arm's
pairs are built inside the training folds only (:func:`popalign.pop.build.build_pop` on those rows'
margins), and features are standardised with the training folds' mean and spread. A seed fixes the
folds, the heads' initial weights, the batch order and the PoP pairs, and every arm shares them, so arms
are compared paired by seed and by row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from popalign.data.split import assign_folds
from popalign.errors import PopalignError
from popalign.methods import REWARD_MODEL_METHODS, Method, resolve_method
from popalign.pop.build import PoPSpec, build_pop
from popalign.probe.heads import (
    Examples,
    HeadSpec,
    LossSettings,
    TrainData,
    score,
    steps_for,
    train_heads,
)

if TYPE_CHECKING:
    from popalign.data.schema import PreferenceTable

BASELINE = "bt"


@dataclass(frozen=True)
class Arm:
    """One reward-model objective as trained by the probe.

    ``preset`` is a name of :data:`~popalign.methods.REWARD_MODEL_METHODS`; ``margin_source`` replaces its
    source (``live``: the PoP margin from the head being trained, Eq. 5); ``strategy`` samples PoP pairs
    where the preset leaves it open; ``steps_of`` trains for as many steps as that arm (a control).
    """

    name: str
    preset: str
    description: str
    margin_source: str = ""
    strategy: str | None = None
    steps_of: str | None = None

    @property
    def method(self) -> Method:
        return resolve_method(self.preset, "reward-model", margin_source=self.margin_source)

    @property
    def pop_strategy(self) -> str | None:
        return self.method.pop_strategy or self.strategy if self.method.uses_pop_pairs else None


ARMS: list[Arm] = [
    Arm("bt", "bt", "Bradley-Terry (Eq. 2)"),
    Arm("margin", "margin", "constant margin loss.margin, the paper's margin-1 (Eq. 4)"),
    Arm("margin-gt", "margin-gt", "margin from the scores (Eq. 4)"),
    Arm("sbt", "sbt", "scaled Bradley-Terry: the score margin as weight (Eq. 8)"),
    Arm("pop-iter", "pop-iter", "PoP, iterative pairs, live head's weak-pair margin (Eq. 5)", "live"),
    Arm("pop-random", "pop-random", "PoP, random pairs, live head's weak-pair margin (Eq. 5)", "live"),
    Arm("pop-nomargin", "pop-nomargin", "control: iterative PoP pairs, no margin", strategy="iterative"),
    Arm("pop-nomargin-random", "pop-nomargin", "control: random PoP pairs, no margin", strategy="random"),
    Arm("bt-steps", "bt", "control: Bradley-Terry with as many steps as pop-iter", steps_of="pop-iter"),
    Arm("margin-column", "margin", "margin from the data's oracle margin column (Eq. 4)", "column"),
]
"""Every arm, in report order; an arm whose data is missing (no scores, no margin column) is not run."""

assert all(a.preset in REWARD_MODEL_METHODS for a in ARMS)
ARM_NAMES = {a.name: a for a in ARMS}


def arm_runnable(arm: Arm, table: PreferenceTable) -> str | None:
    """Why ``arm`` cannot run on ``table`` (None: it can)."""
    method = arm.method
    if (method.needs_gt_margin or method.uses_pop_pairs) and not table.has_scores:
        return "the data has no scores"
    if method.source.needs_column and table.margin_column is None:
        return "the data has no margin column"
    return None


def fold_assignment(table: PreferenceTable, folds: int, seed: int) -> np.ndarray:
    """``(N,)`` fold of each row: prompts shuffled by ``seed`` and dealt round-robin, rows follow prompts."""
    return assign_folds(table.prompts, folds, seed, source=str(table.source))


def fold_examples(
    arm: Arm, train_rows: np.ndarray, margins: np.ndarray | None, pop: PoPSpec, seed: int
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """One seed's examples of ``arm`` on the training rows: ``(strong rows, weak rows or None, PoP meta)``.

    PoP pairs are built on the training rows' margins only, so no held-out row enters a pair.
    """
    strategy = arm.pop_strategy
    if strategy is None:
        return train_rows, None, {}
    spec = replace(pop, strategy=strategy, seed=int(seed))
    pairs = build_pop(margins[train_rows], spec)
    if not len(pairs):
        raise PopalignError(
            f"no PoP pairs in a training fold at pop.min_gap={pop.min_gap:g}; lower pop.min_gap"
        )
    return train_rows[pairs.strong_idx], train_rows[pairs.weak_idx], pairs.meta["counts"]


def _standardised(
    chosen: np.ndarray, rejected: np.ndarray, train: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The training rows' mean and spread of the features (chosen and rejected together), ``(D,)`` each."""
    rows = np.concatenate([chosen[train], rejected[train]])
    return rows.mean(0), rows.std(0) + 1e-6


@dataclass
class CrossFit:
    """Out-of-fold predicted margins ``(S, N)`` per arm, the folds ``(S, N)``, and what each arm did."""

    predicted: dict[str, np.ndarray]
    folds: np.ndarray
    seeds: list[int]
    info: dict[str, dict[str, Any]]
    not_run: dict[str, str]


def cross_fit(
    table: PreferenceTable,
    chosen: np.ndarray,
    rejected: np.ndarray,
    *,
    arms: list[Arm],
    folds: int,
    seeds: list[int],
    head: HeadSpec,
    pop: PoPSpec,
    loss: LossSettings,
) -> CrossFit:
    """Train and score every runnable arm with ``folds``-fold cross-fitting for each seed."""
    import torch

    fold_of = np.stack([fold_assignment(table, folds, s) for s in seeds])
    margins = table.margins if table.has_scores else None
    not_run = {a.name: why for a in arms if (why := arm_runnable(a, table))}
    runnable = [a for a in arms if a.name not in not_run]
    # An arm that copies another's steps trains after it.
    runnable.sort(key=lambda a: a.steps_of is not None)
    predicted = {a.name: np.full((len(seeds), len(table)), np.nan) for a in runnable}
    info: dict[str, dict[str, Any]] = {a.name: {"steps": [], "pop_pairs": []} for a in runnable}
    gt = None if margins is None else torch.as_tensor(margins, dtype=torch.float32)
    column = (
        None if table.margin_column is None else torch.as_tensor(table.margin_column, dtype=torch.float32)
    )
    chosen_t = torch.as_tensor(chosen, dtype=torch.float32)
    rejected_t = torch.as_tensor(rejected, dtype=torch.float32)
    for fold in range(folds):
        stats = [_standardised(chosen, rejected, fold_of[s] != fold) for s in range(len(seeds))]
        data = TrainData(
            chosen_t,
            rejected_t,
            torch.as_tensor(np.stack([m for m, _ in stats]), dtype=torch.float32),
            torch.as_tensor(np.stack([sd for _, sd in stats]), dtype=torch.float32),
            gt,
            column,
        )
        steps_taken: dict[str, int] = {}
        for arm in runnable:
            strong, weak, counts = [], [], []
            for s, seed in enumerate(seeds):
                rows = np.flatnonzero(fold_of[s] != fold)
                st, wk, meta = fold_examples(arm, rows, margins, pop, seed * 1000 + fold)
                strong.append(st)
                weak.append(wk)
                counts.append(meta.get("pairs"))
            examples = Examples(strong, None if weak[0] is None else weak)
            steps = steps_taken[arm.steps_of] if arm.steps_of else steps_for(examples, head)
            steps_taken[arm.name] = steps
            heads, run_info = train_heads(arm.method, data, examples, head, loss, seeds, steps)
            margins_out = score(heads, data)
            for s in range(len(seeds)):
                held = fold_of[s] == fold
                predicted[arm.name][s, held] = margins_out[s, held]
            info[arm.name]["steps"].append(steps)
            if counts[0] is not None:
                info[arm.name]["pop_pairs"].append(float(np.mean(counts)))
            if "mean_pop_margin" in run_info:
                info[arm.name].setdefault("mean_pop_margin", []).append(run_info["mean_pop_margin"])
    return CrossFit(predicted, fold_of, list(seeds), info, not_run)
