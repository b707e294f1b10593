"""``popalign probe``: heads through the loss registries, cross-fitting without leaks, resumable features,
and a planted effect the verdicts must find."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from popalign.data.schema import PreferenceTable
from popalign.methods import resolve_method
from popalign.pop.build import PoPSpec
from popalign.probe.analysis import NOT_REPRODUCED, REPRODUCED, Contrast, judge
from popalign.probe.crossfit import ARM_NAMES, cross_fit, fold_assignment, fold_examples
from popalign.probe.heads import (
    Examples,
    Heads,
    HeadSpec,
    LossSettings,
    TrainData,
    batch_loss,
    score,
    train_heads,
)


def _nll(u: float) -> float:
    """-log sigmoid(u), by hand."""
    return math.log1p(math.exp(-u))


def _table(score_chosen, score_rejected, prompts=None) -> PreferenceTable:
    n = len(score_chosen)
    return PreferenceTable(
        ids=[str(i) for i in range(n)],
        prompts=prompts or [f"prompt {i}" for i in range(n)],
        chosen=["c"] * n,
        rejected=["r"] * n,
        score_chosen=np.asarray(score_chosen, dtype=float),
        score_rejected=np.asarray(score_rejected, dtype=float),
    )


def _linear_head(w: list[float]) -> Heads:
    heads = Heads(HeadSpec(), len(w), seeds=[0])
    with torch.no_grad():
        heads.params["w"][0] = torch.tensor(w)
    return heads


# x_chosen . w = 2, x_rejected . w = 1: z = 1. The weak pair of the PoP example: 3 - 1 = 2.
W = [2.0, 1.0]
STRONG = (torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 1.0]]]))
WEAK = (torch.tensor([[[0.0, 3.0]]]), torch.tensor([[[0.0, 1.0]]]))


@pytest.mark.parametrize(
    ("preset", "source", "gt", "weak", "max_margin", "expected"),
    [
        ("bt", "", None, None, 10.0, _nll(1.0)),  # Eq. 2
        ("margin", "", None, None, 10.0, _nll(1.0 - 1.0)),  # Eq. 4, margin 1
        ("margin-gt", "", 0.5, None, 10.0, _nll(1.0 - 0.5)),  # Eq. 4, margin from the scores
        ("sbt", "", 2.0, None, 10.0, 2.0 * _nll(1.0)),  # Eq. 8
        ("pop-iter", "live", None, WEAK, 10.0, _nll(1.0 - 2.0)),  # Eq. 5: margin = weak diff 2
        ("pop-iter", "live", None, WEAK, 1.5, _nll(1.0 - 1.5)),  # clipped to M_max
        ("pop-nomargin", "", None, WEAK, 10.0, _nll(1.0)),
    ],
)
def test_head_losses_are_the_registries_hand_values(preset, source, gt, weak, max_margin, expected):
    method = resolve_method(preset, "reward-model", margin_source=source)
    heads = _linear_head(W)
    gt_t = None if gt is None else torch.tensor([[gt]])
    weak_x = weak if method.needs_weak_pair else None
    loss, out = batch_loss(heads, method, *STRONG, gt_t, weak_x, LossSettings(1.0, max_margin))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics["rewards/margins"].item() == pytest.approx(1.0)


def test_pop_margin_carries_no_gradient_into_the_head():
    """Eq. 5's stop-gradient: the gradient equals that of the same loss with the margin as a constant."""
    method = resolve_method("pop-iter", "reward-model", margin_source="live")
    heads = _linear_head(W)
    loss, _ = batch_loss(heads, method, *STRONG, None, WEAK, LossSettings(1.0, 10.0))
    loss.backward()
    # d/dw -log sigmoid(w.(xc - xr) - 2) = -(1 - sigmoid(z - 2)) (xc - xr), z = 1
    coeff = -(1.0 - 1.0 / (1.0 + math.exp(1.0)))
    expected = torch.tensor([coeff * 1.0, coeff * -1.0])
    torch.testing.assert_close(heads.params["w"].grad[0], expected)


def test_training_learns_a_planted_direction_and_scores_every_row():
    rng = np.random.default_rng(0)
    n, d = 80, 4
    chosen = rng.normal(size=(n, d)) + np.array([3.0, 0, 0, 0])
    rejected = rng.normal(size=(n, d))
    data = TrainData(
        torch.tensor(chosen, dtype=torch.float32),
        torch.tensor(rejected, dtype=torch.float32),
        torch.zeros(2, d),
        torch.ones(2, d),
        None,
        None,
    )
    rows = [np.arange(n), np.arange(n)]
    heads, info = train_heads(
        resolve_method("bt", "reward-model"),
        data,
        Examples(rows),
        HeadSpec(epochs=20),
        LossSettings(),
        [0, 1],
        30,
    )
    margins = score(heads, data)
    assert margins.shape == (2, n) and info["steps"] == 30
    assert (margins > 0).mean() > 0.9  # chance is 0.5, the best possible about 0.98


def test_cross_fitting_never_scores_a_row_with_a_head_that_saw_it():
    """Poisoned rows: each row's only signal is a feature of its own, so a head that saw a row gets it
    right and a head that did not guesses. Out-of-fold accuracy must stay at chance."""
    n = 60
    eye = np.eye(n, dtype=np.float32)
    table = _table(np.full(n, 2.0), np.ones(n))
    head = HeadSpec(epochs=40, learning_rate=0.05, weight_decay=0.0)
    arms = [ARM_NAMES["bt"]]
    fit = cross_fit(
        table, eye, -eye, arms=arms, folds=3, seeds=[0, 1, 2], head=head, pop=PoPSpec(), loss=LossSettings()
    )
    predicted = fit.predicted["bt"]
    assert not np.isnan(predicted).any()  # every row scored once per seed
    assert (predicted > 0).mean() < 0.7
    # The poison works: a head scoring the rows it trained on gets them all right.
    data = TrainData(torch.tensor(eye), torch.tensor(-eye), torch.zeros(1, n), torch.ones(1, n), None, None)
    method = ARM_NAMES["bt"].method
    heads, _ = train_heads(method, data, Examples([np.arange(n)]), head, LossSettings(), [0], 40)
    assert (score(heads, data) > 0).mean() > 0.95


def test_folds_keep_prompts_together_and_pop_pairs_stay_in_the_training_folds():
    prompts = [f"p{i // 2}" for i in range(40)]  # each prompt twice
    table = _table(np.arange(40) / 4 + 1, np.zeros(40), prompts)
    folds = fold_assignment(table, 4, seed=3)
    assert all(folds[i] == folds[i + 1] for i in range(0, 40, 2))
    assert sorted(set(folds)) == [0, 1, 2, 3]
    train = np.flatnonzero(folds != 0)
    for arm in ("pop-iter", "pop-random", "pop-nomargin-random", "bt"):
        strong, weak, _ = fold_examples(ARM_NAMES[arm], train, table.margins, PoPSpec(), seed=5)
        assert set(strong) <= set(train)
        if weak is not None:
            assert set(weak) <= set(train)
            assert (table.margins[strong] - table.margins[weak] >= 1.0 - 1e-9).all()


def test_a_planted_margin_effect_is_detected():
    """High-margin rows say feature 0 is good, more numerous low-margin rows say it is bad: BT follows the
    majority, while the margin-aware objectives (SBT's weight, PoP-iter's strong pairs) follow the
    high-margin rows. The probe must find both effects on high-margin accuracy, and BT's overall lead."""
    rng = np.random.default_rng(0)
    n_high, n_low, d = 90, 210, 3
    high = np.r_[np.full(n_high, 4.0), np.full(n_low, 0.5)]
    direction = np.where(np.arange(n_high + n_low) < n_high, 1.0, -1.0)
    rejected = rng.normal(size=(len(high), d)).astype(np.float32)
    chosen = rejected.copy()
    chosen[:, 0] += direction
    table = _table(high + 1.0, np.ones(len(high)))
    arms = [ARM_NAMES[a] for a in ("bt", "sbt", "pop-iter")]
    fit = cross_fit(
        table, chosen, rejected, arms=arms, folds=3, seeds=[0, 1, 2],
        head=HeadSpec(epochs=5, learning_rate=0.05), pop=PoPSpec(), loss=LossSettings(),
    )  # fmt: skip
    contrasts = [
        Contrast("sbt-high", "", "sbt", "bt", metric="accuracy_high"),
        Contrast("iter-high", "", "pop-iter", "bt", metric="accuracy_high"),
        Contrast("iter-all", "", "pop-iter", "bt"),
    ]
    verdicts = {r["id"]: r for r in judge(contrasts, fit.predicted, table.margins)}
    assert verdicts["sbt-high"]["verdict"] == REPRODUCED
    assert verdicts["iter-high"]["verdict"] == REPRODUCED
    assert verdicts["iter-all"]["verdict"] == NOT_REPRODUCED
    assert verdicts["iter-high"]["difference"] > 0.5


def test_a_contrast_whose_arm_did_not_run_is_not_run():
    predicted = {"bt": np.ones((2, 4))}
    res = judge([Contrast("x", "", "margin-column", "bt")], predicted, np.ones(4))
    assert res[0]["verdict"] == "not run"
