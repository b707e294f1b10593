"""The named presets: their knobs, lookup errors, and method_loss (margin sources, stop-gradient, metrics)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from popalign.errors import PopalignError
from popalign.losses import implicit_rewards
from popalign.losses.compose import method_loss
from popalign.losses.params import LossParams
from popalign.method_tables import format_methods_table
from popalign.methods import (
    METHODS,
    REWARD_MODEL_METHODS,
    get_method,
)

LOG2 = math.log(2.0)


def t(*values: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


# name: (sampler, margin, weighting, pop_strategy), the table of the design.
EXPECTED_POLICY = {
    "dpo": ("preferences", "none", "one", None),
    "dpo-margin": ("preferences", "constant", "one", None),
    "dpo-margin-gt": ("preferences", "ground_truth", "one", None),
    "dpo-sbt": ("preferences", "none", "ground_truth", None),
    "dpo-pop": ("pop", "target", "one", None),
    "dpo-pop-iter": ("pop", "target", "one", "iterative"),
    "dpo-pop-random": ("pop", "target", "one", "random"),
    "dpo-pop-nomargin": ("pop", "none", "one", None),
}
RM_TWIN = {
    "bt": "dpo",
    "margin": "dpo-margin",
    "margin-gt": "dpo-margin-gt",
    "sbt": "dpo-sbt",
    "pop": "dpo-pop",
    "pop-iter": "dpo-pop-iter",
    "pop-random": "dpo-pop-random",
    "pop-nomargin": "dpo-pop-nomargin",
}


def knobs(method):
    return (method.sampler, method.margin, method.weighting, method.pop_strategy)


def test_policy_presets_match_the_table():
    assert set(METHODS) == set(EXPECTED_POLICY)
    for name, expected in EXPECTED_POLICY.items():
        method = METHODS[name]
        assert method.name == name and method.objective == "policy"
        assert knobs(method) == expected, name
        assert method.needs_weak_pair == (method.margin == "target")
        assert method.needs_gt_margin == (name in {"dpo-margin-gt", "dpo-sbt"})
        assert method.equation.startswith("Eq.") and method.description
    assert METHODS["dpo-pop"].equation == "Eq. 7" and METHODS["dpo-sbt"].equation == "Eq. 8"


def test_reward_model_presets_share_the_policy_knobs():
    assert set(REWARD_MODEL_METHODS) == set(RM_TWIN)
    assert not set(REWARD_MODEL_METHODS) & set(METHODS)
    for name, twin in RM_TWIN.items():
        method = REWARD_MODEL_METHODS[name]
        assert method.name == name and method.objective == "reward-model"
        assert knobs(method) == knobs(METHODS[twin]), name
    assert REWARD_MODEL_METHODS["bt"].equation == "Eq. 2"
    assert REWARD_MODEL_METHODS["pop"].equation == "Eq. 5"


def test_presets_are_frozen():
    with pytest.raises(AttributeError):
        METHODS["dpo"].margin = "constant"


def test_get_method_resolves_both_objectives():
    assert get_method("dpo-pop-iter") is METHODS["dpo-pop-iter"]
    assert get_method("pop") is REWARD_MODEL_METHODS["pop"]
    assert get_method("bt", objective="reward-model") is REWARD_MODEL_METHODS["bt"]


def test_get_method_unknown_name_lists_the_valid_ones():
    with pytest.raises(PopalignError) as excinfo:
        get_method("dpo-pops")
    message = str(excinfo.value)
    assert "dpo-pops" in message
    for name in [*METHODS, *REWARD_MODEL_METHODS]:
        assert name in message
    # a reward-model name is not a policy method
    with pytest.raises(PopalignError, match="dpo-pop-nomargin"):
        get_method("bt", objective="policy")
    with pytest.raises(PopalignError, match="objective"):
        get_method("dpo", objective="critic")


def test_methods_table_names_every_preset():
    assert all(name in format_methods_table("policy") for name in METHODS)
    assert all(name in format_methods_table("reward-model") for name in REWARD_MODEL_METHODS)


def test_importing_methods_does_not_load_torch():
    code = "import sys, popalign.methods; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def zero_inputs(batch: int = 3):
    """policy = reference = target: every reward, strong or weak, is 0."""
    logps = t(*[-5.0 - i for i in range(batch)])
    chosen, rejected = implicit_rewards(logps, logps - 2, logps, logps - 2, beta=0.1)
    return chosen, rejected


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_at_initialisation(name):
    chosen, rejected = zero_inputs()
    gt = t(1.0, 2.0, 0.5)
    weak = {"weak_chosen_rewards": chosen, "weak_rejected_rewards": rejected}
    out = method_loss(METHODS[name], chosen, rejected, gt_margins=gt, **weak)
    # z = 0 - m, loss = w * log(1 + e^m)
    expected = {
        "dpo-margin": [math.log1p(math.e)] * 3,  # constant 1: log(1 + e) = 1.3132617
        "dpo-margin-gt": [math.log1p(math.exp(m)) for m in (1.0, 2.0, 0.5)],
        "dpo-sbt": [w * LOG2 for w in (1.0, 2.0, 0.5)],
    }.get(name, [LOG2] * 3)  # no margin, or a PoP margin of 0 from target = reference
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-9)
    if METHODS[name].needs_weak_pair:
        assert out.metrics["pop/target_margin"].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("name", sorted([*METHODS, *REWARD_MODEL_METHODS]))
def test_metrics_are_detached_per_example(name):
    method = get_method(name)
    chosen, rejected = t(0.3, -0.2, 1.0, 0.0, grad=True), t(0.1, 0.4, -1.0, 0.0, grad=True)
    weak_c, weak_r = t(2.0, -1.0, 30.0, 0.0, grad=True), t(0.5, 0.0, 1.0, 0.0, grad=True)
    out = method_loss(
        method,
        chosen,
        rejected,
        gt_margins=t(1.0, 0.0, 3.5, 2.0),
        weak_chosen_rewards=weak_c,
        weak_rejected_rewards=weak_r,
    )
    assert out.losses.shape == (4,) and out.losses.requires_grad
    for key, value in out.metrics.items():
        assert value.shape == (4,), key
        assert not value.requires_grad, key
    assert ("pop/target_margin" in out.metrics) == method.needs_weak_pair
    assert ("margin/used" in out.metrics) == (method.margin != "none")
    assert ("weight/used" in out.metrics) == (method.weighting == "ground_truth")


def test_constant_margin_method_uses_the_constant():
    # strong z = 0.3; margin 2: log(1 + e^(2 - 0.3)) = log(1 + 5.4739474) = 1.8677860
    out = method_loss(METHODS["dpo-margin"], t(0.2), t(-0.1), params=LossParams(margin=2.0))
    assert out.losses.item() == pytest.approx(1.8677860, abs=1e-6)
    assert out.metrics["margin/used"].tolist() == [2.0]


def test_pop_margin_metrics_and_clipping():
    weak_chosen, weak_rejected = t(0.0, 1.5, 20.0), t(3.0, 1.0, 8.0)  # raw margins -3, 0.5, 12
    strong = t(0.0, 0.0, 0.0)
    weak = {"weak_chosen_rewards": weak_chosen, "weak_rejected_rewards": weak_rejected}
    out = method_loss(METHODS["dpo-pop"], strong, strong, **weak)
    assert out.metrics["pop/raw_margin"].tolist() == [-3.0, 0.5, 12.0]
    assert out.metrics["pop/target_margin"].tolist() == [0.0, 0.5, 10.0]
    assert out.metrics["pop/clipped_low"].tolist() == [1.0, 0.0, 0.0]
    assert out.metrics["pop/clipped_high"].tolist() == [0.0, 0.0, 1.0]
    # losses: log 2, log(1 + e^0.5) = 0.9740770, log(1 + e^10) = 10.0000454
    assert out.losses.tolist() == pytest.approx([LOG2, 0.9740770, 10.0000454], abs=1e-6)

    unclipped = method_loss(METHODS["dpo-pop"], strong, strong, **weak, params=LossParams(max_margin=None))
    assert unclipped.metrics["pop/target_margin"].tolist() == [-3.0, 0.5, 12.0]
    assert unclipped.metrics["pop/clipped_low"].tolist() == [0.0, 0.0, 0.0]
    assert unclipped.metrics["pop/clipped_high"].tolist() == [0.0, 0.0, 0.0]


def test_no_gradient_reaches_the_weak_pair():
    beta = 0.1
    # strong: chosen reward 0.1 * (-10 + 12) = 0.2, rejected 0.1 * (-11 + 10) = -0.1, difference 0.3
    pc, pr = t(-10.0, grad=True), t(-11.0, grad=True)
    chosen, rejected = implicit_rewards(pc, pr, t(-12.0), t(-10.0), beta)
    # weak (target policy): chosen 0.1 * (-5 + 10) = 0.5, rejected 0.1 * (-8 + 9) = 0.1, margin 0.4
    wc, wr = t(-5.0, grad=True), t(-8.0, grad=True)
    weak_chosen, weak_rejected = implicit_rewards(wc, wr, t(-10.0), t(-9.0), beta)
    weak = {"weak_chosen_rewards": weak_chosen, "weak_rejected_rewards": weak_rejected}
    out = method_loss(METHODS["dpo-pop"], chosen, rejected, **weak)
    # z = 0.3 - 0.4 = -0.1: loss = log(1 + e^0.1) = 0.7443967
    assert out.losses.item() == pytest.approx(0.7443967, abs=1e-6)
    out.losses.sum().backward()
    assert wc.grad is None and wr.grad is None
    # dL/dz = -(1 - sigmoid(-0.1)) = -sigmoid(0.1) = -0.5249792; times +-beta
    assert pc.grad.item() == pytest.approx(-0.05249792, abs=1e-6)
    assert pr.grad.item() == pytest.approx(0.05249792, abs=1e-6)


def test_live_reward_model_margin_carries_no_gradient():
    # A linear reward model r(x) = w . x scores both pairs with the same live weights (Eq. 5).
    w = t(1.0, 2.0, grad=True)
    strong_c, strong_r = t(1.0, 0.0), t(0.0, 0.5)  # r = 1, 1 -> difference 0
    weak_c, weak_r = t(0.5, 0.5), t(0.0, 0.25)  # r = 1.5, 0.5 -> margin 1 (unclipped)
    out = method_loss(
        REWARD_MODEL_METHODS["pop"],
        (w @ strong_c).reshape(1),
        (w @ strong_r).reshape(1),
        weak_chosen_rewards=(w @ weak_c).reshape(1),
        weak_rejected_rewards=(w @ weak_r).reshape(1),
        params=LossParams(max_margin=None),
    )
    out.losses.sum().backward()
    # z = 0 - 1; dL/dz = -sigmoid(1) = -0.7310586; dz/dw = strong_c - strong_r = (1, -0.5) only
    assert w.grad.tolist() == pytest.approx([-0.7310586, 0.3655293], abs=1e-6)


def test_sbt_tie_and_negative_weight():
    out = method_loss(METHODS["dpo-sbt"], t(0.2, 0.2, grad=True), t(-0.1, -0.1), gt_margins=t(0.0, 2.0))
    # tie: weight 0 -> loss 0; weight 2 -> 2 * log(1 + e^-0.3) = 1.1087105
    assert out.losses.tolist() == pytest.approx([0.0, 1.1087105], abs=1e-6)
    with pytest.raises(ValueError, match=">= 0"):
        method_loss(METHODS["dpo-sbt"], t(0.2), t(-0.1), gt_margins=t(-1.0))


def test_gt_margins_accept_plain_sequences():
    import numpy as np

    out = method_loss(METHODS["dpo-margin-gt"], t(0.2), t(-0.1), gt_margins=np.array([0.5]))
    # log(1 + e^(0.5 - 0.3)) = 0.7981389
    assert out.losses.item() == pytest.approx(0.7981389, abs=1e-6)


@pytest.mark.parametrize("name", ["dpo-margin-gt", "dpo-sbt", "margin-gt", "sbt"])
def test_missing_gt_margins_is_a_clear_error(name):
    with pytest.raises(ValueError, match=f"{name}.*gt_margins"):
        method_loss(get_method(name), t(0.2), t(-0.1))


@pytest.mark.parametrize("name", ["dpo-pop", "dpo-pop-iter", "dpo-pop-random", "pop"])
def test_missing_weak_rewards_is_a_clear_error(name):
    with pytest.raises(ValueError, match=f"{name}.*weak_chosen_rewards"):
        method_loss(get_method(name), t(0.2), t(-0.1))
    with pytest.raises(ValueError, match="weak_rejected_rewards"):
        method_loss(get_method(name), t(0.2), t(-0.1), weak_chosen_rewards=t(0.0))


def test_methods_without_a_margin_ignore_extra_inputs():
    plain = method_loss(METHODS["dpo"], t(0.2), t(-0.1))
    extra = method_loss(
        METHODS["dpo-pop-nomargin"],
        t(0.2),
        t(-0.1),
        gt_margins=t(5.0),
        weak_chosen_rewards=t(3.0),
        weak_rejected_rewards=t(0.0),
    )
    # both are plain DPO: log(1 + e^-0.3) = 0.5543552
    assert plain.losses.item() == pytest.approx(0.5543552, abs=1e-6)
    assert extra.losses.item() == pytest.approx(0.5543552, abs=1e-6)
