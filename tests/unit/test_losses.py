"""The pure losses: hand-worked values, the initialisation invariant, clipping, stop-gradient, metrics."""

from __future__ import annotations

import math

import pytest
import torch

from popalign.losses import (
    clip_margin,
    constant_margin,
    explicit_rewards,
    implicit_rewards,
    pop_margin,
    preference_loss,
    reward_difference,
)

LOG2 = math.log(2.0)


def t(*values: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def softplus(x: float) -> float:
    """log(1 + e^x), the value of -log sigmoid(-x)."""
    return math.log1p(math.exp(x))


# The running example: beta = 0.1, policy chosen/rejected logps -10 / -11, reference -12 / -10.
#   chosen_reward   = 0.1 * (-10 - -12) = 0.2
#   rejected_reward = 0.1 * (-11 - -10) = -0.1
#   reward difference z = 0.3
BETA = 0.1


def example_rewards(grad: bool = False):
    pc, pr = t(-10.0, grad=grad), t(-11.0, grad=grad)
    chosen, rejected = implicit_rewards(pc, pr, t(-12.0), t(-10.0), BETA)
    return pc, pr, chosen, rejected


def test_implicit_rewards_hand_values():
    _, _, chosen, rejected = example_rewards()
    assert chosen.item() == pytest.approx(0.2, abs=1e-12)
    assert rejected.item() == pytest.approx(-0.1, abs=1e-12)
    assert reward_difference(chosen, rejected).item() == pytest.approx(0.3, abs=1e-12)


def test_implicit_rewards_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        implicit_rewards(t(1.0, 2.0), t(1.0), t(1.0), t(1.0), BETA)


def test_explicit_rewards_drops_head_dimension():
    chosen, rejected = explicit_rewards(torch.ones(3, 1), torch.zeros(3, 1))
    assert chosen.shape == rejected.shape == (3,)
    assert reward_difference(chosen, rejected).tolist() == [1.0, 1.0, 1.0]


def test_dpo_loss_hand_value():
    # -log sigmoid(0.3) = log(1 + e^-0.3) = log(1 + 0.7408182) = 0.5543552
    _, _, chosen, rejected = example_rewards()
    out = preference_loss(chosen, rejected)
    assert out.losses.item() == pytest.approx(0.5543552444, abs=1e-6)
    assert out.losses.item() == pytest.approx(softplus(-0.3), abs=1e-12)


def test_margin_loss_hand_value():
    # margin 1: -log sigmoid(0.3 - 1) = log(1 + e^0.7) = log(1 + 2.0137527) = 1.1031860
    _, _, chosen, rejected = example_rewards()
    out = preference_loss(chosen, rejected, margin=1.0)
    assert out.losses.item() == pytest.approx(1.1031860, abs=1e-6)
    assert out.losses.item() == pytest.approx(softplus(0.7), abs=1e-12)
    # margin 0.5 as a tensor: log(1 + e^0.2) = log(2.2214028) = 0.7981389
    out = preference_loss(chosen, rejected, margin=t(0.5))
    assert out.losses.item() == pytest.approx(0.7981389, abs=1e-6)


def test_weight_multiplies_the_loss():
    # weight 2 (SBT with a ground-truth margin of 2): 2 * 0.5543552 = 1.1087105
    _, _, chosen, rejected = example_rewards()
    out = preference_loss(chosen, rejected, weight=t(2.0))
    assert out.losses.item() == pytest.approx(1.1087105, abs=1e-6)
    # weight and margin together: 3 * log(1 + e^(1 - 0.3)) = 3 * 1.1031860 = 3.3095581
    out = preference_loss(chosen, rejected, margin=1.0, weight=t(3.0))
    assert out.losses.item() == pytest.approx(3.3095581, abs=1e-6)


def test_at_initialisation_the_loss_is_log2_or_softplus_of_the_margin():
    # policy = reference: every implicit reward is 0, so z = 0 - m.
    logps = t(-7.0, -3.5, -20.0)
    chosen, rejected = implicit_rewards(logps, logps - 1, logps, logps - 1, beta=0.5)
    assert torch.all(chosen == 0) and torch.all(rejected == 0)
    assert preference_loss(chosen, rejected).losses.tolist() == pytest.approx([LOG2] * 3, abs=1e-12)
    # margins 0, 1, 2.5 -> log 2, log(1 + e) = 1.3132617, log(1 + 12.1824940) = 2.5788897
    losses = preference_loss(chosen, rejected, margin=t(0.0, 1.0, 2.5)).losses
    assert losses.tolist() == pytest.approx([LOG2, 1.3132617, 2.5788897], abs=1e-6)
    # the PoP margin from a target equal to the reference is 0, so DPO-PoP starts at log 2 too
    weak_chosen, weak_rejected = implicit_rewards(logps, logps, logps, logps, beta=0.5)
    assert torch.all(pop_margin(weak_chosen, weak_rejected, 10.0) == 0)


def test_gradient_matches_the_analytic_one():
    # dL/dz = -(1 - sigmoid(z)); dz/d policy_chosen_logps = beta, dz/d policy_rejected_logps = -beta.
    # z = 0.3 - 1 = -0.7: dL/dz = -(1 - sigmoid(-0.7)) = -sigmoid(0.7) = -0.6681878
    pc, pr, chosen, rejected = example_rewards(grad=True)
    preference_loss(chosen, rejected, margin=1.0).losses.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.06681878, abs=1e-6)
    assert pr.grad.item() == pytest.approx(0.06681878, abs=1e-6)


def test_scaled_gradient_is_weight_times_dpo_gradient_and_a_tie_is_inert():
    gen = torch.Generator().manual_seed(0)
    base_c = torch.randn(4, generator=gen, dtype=torch.float64)
    base_r = torch.randn(4, generator=gen, dtype=torch.float64)
    weight = t(0.0, 0.5, 2.0, 4.5)

    c1, r1 = base_c.clone().requires_grad_(), base_r.clone().requires_grad_()
    preference_loss(c1, r1).losses.sum().backward()
    c2, r2 = base_c.clone().requires_grad_(), base_r.clone().requires_grad_()
    sbt = preference_loss(c2, r2, weight=weight)
    sbt.losses.sum().backward()

    assert torch.allclose(c2.grad, weight * c1.grad)
    assert torch.allclose(r2.grad, weight * r1.grad)
    # the tie (weight 0, Eq. 8) contributes neither loss nor gradient
    assert sbt.losses[0].item() == 0.0
    assert c2.grad[0].item() == 0.0 and r2.grad[0].item() == 0.0


def test_loss_is_finite_for_extreme_reward_differences():
    out = preference_loss(t(-1000.0, 1000.0), t(0.0, 0.0))
    # -log sigmoid(-1000) = 1000 (to double precision); -log sigmoid(1000) = 0
    assert out.losses.tolist() == pytest.approx([1000.0, 0.0])


def test_metrics_are_detached_per_example():
    chosen, rejected = t(0.5, -0.2, 1.0, grad=True), t(0.1, 0.3, 1.0, grad=True)
    out = preference_loss(chosen, rejected, margin=0.25, weight=t(1.0, 2.0, 3.0))
    expected = {
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "margin/used",
        "weight/used",
    }
    assert set(out.metrics) == expected
    for name, value in out.metrics.items():
        assert value.shape == (3,), name
        assert not value.requires_grad, name
    assert out.losses.requires_grad
    # margins 0.4, -0.5, 0.0; accuracy counts chosen > rejected strictly, so the tie is wrong
    assert out.metrics["rewards/margins"].tolist() == pytest.approx([0.4, -0.5, 0.0])
    assert out.metrics["rewards/accuracies"].tolist() == [1.0, 0.0, 0.0]
    assert out.metrics["margin/used"].tolist() == [0.25, 0.25, 0.25]


def test_optional_metrics_are_absent_without_margin_or_weight():
    out = preference_loss(t(1.0), t(0.0))
    assert "margin/used" not in out.metrics and "weight/used" not in out.metrics


def test_preference_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        preference_loss(t(1.0, 2.0), t(1.0))
    with pytest.raises(ValueError, match="margin"):
        preference_loss(t(1.0, 2.0), t(1.0, 0.0), margin=t(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="weight"):
        preference_loss(t(1.0, 2.0), t(1.0, 0.0), weight=t(1.0, 2.0, 3.0))


def test_clip_margin():
    raw = t(-3.0, 0.5, 12.0)
    assert clip_margin(raw, 10.0).tolist() == [0.0, 0.5, 10.0]
    assert clip_margin(raw, None) is raw
    assert clip_margin(raw, 0.0).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="max_margin"):
        clip_margin(raw, -1.0)


def test_pop_margin_is_clipped_and_detached():
    weak_chosen = t(0.0, 1.5, 20.0, grad=True)
    weak_rejected = t(3.0, 1.0, 8.0, grad=True)
    # raw = [-3, 0.5, 12] -> clip to [0, 10]
    margin = pop_margin(weak_chosen, weak_rejected, 10.0)
    assert margin.tolist() == [0.0, 0.5, 10.0]
    assert not margin.requires_grad
    unclipped = pop_margin(weak_chosen, weak_rejected, None)
    assert unclipped.tolist() == [-3.0, 0.5, 12.0]
    assert not unclipped.requires_grad


def test_constant_margin_follows_like():
    like = torch.zeros(2, dtype=torch.bfloat16)
    margin = constant_margin(4, 1.0, like)
    assert margin.shape == (4,) and margin.dtype == torch.bfloat16
    assert margin.tolist() == [1.0, 1.0, 1.0, 1.0]
