"""The one loss every method shares: ``weight * f(reward_diff - margin)``, ``f`` a loss form.

With DPO's form ``f(u) = -log sigmoid(u)`` this is the paper's family (Eq. 2-8): vanilla DPO (Eq. 3) and
the Bradley-Terry reward model (Eq. 2) have no margin and weight 1; the margin variants (Eq. 4) and DPO-PoP
(Eq. 5-7) subtract a margin inside the log-sigmoid; the scaled Bradley-Terry loss (Eq. 8) multiplies
outside. Other forms (IPO, hinge, cDPO, rDPO, SimPO) are in :mod:`popalign.losses.forms`; which margin,
weight and form a method uses is the job of :mod:`popalign.methods`, and
:func:`popalign.losses.compose.method_loss` puts a method's parts together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from popalign.losses.forms import FORMS, LossForm
from popalign.losses.params import LossParams


@dataclass
class LossOutput:
    """Per-example losses and metrics of one batch.

    Attributes:
        losses: (B,) per-example losses with their graph; the trainer reduces them (usually the mean).
        metrics: name -> detached (B,) tensor, per example so that averages across micro-batches and
            processes weigh every example once.
    """

    losses: Tensor
    metrics: dict[str, Tensor]


def _as_batch(value: Tensor | float, like: Tensor, name: str) -> Tensor:
    """``value`` as a (B,) tensor on ``like``'s dtype and device; scalars are broadcast."""
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if tensor.dim() == 0:
        return tensor.expand(like.shape)
    if tensor.shape != like.shape:
        expected, got = tuple(like.shape), tuple(tensor.shape)
        raise ValueError(f"{name} must be a scalar or of shape {expected}, got {got}")
    return tensor


def preference_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    margin: Tensor | float | None = None,
    weight: Tensor | None = None,
    form: LossForm | None = None,
    params: LossParams | None = None,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> LossOutput:
    """``losses = weight * f(z - margin)`` with ``z = form.argument(chosen_rewards, rejected_rewards)``.

    The default form is DPO's, ``f(u) = -log sigmoid(u)``, so without ``form`` this is
    ``-weight * log sigmoid(chosen_rewards - rejected_rewards - margin)`` (Eq. 2-8).

    Args:
        chosen_rewards, rejected_rewards: (B,) rewards of the preferred / dispreferred response, implicit
            (``beta * log pi/pi_ref``, Eq. 3) or explicit (reward-model scores, Eq. 2).
        margin: scalar or (B,) margin ``m`` (Eq. 4-7); ``None`` means 0. It is used as given: a margin that
            must not carry gradient (Eq. 5/7) is detached by its source.
        weight: (B,) weight outside (Eq. 8); ``None`` means 1. A weight of 0 (an SBT tie) gives loss 0 and
            gradient 0.
        form: a :class:`~popalign.losses.forms.LossForm`; ``None`` is ``sigmoid``.
        params: the loss settings, handed whole to the form (IPO's ``beta``; cDPO's and rDPO's
            ``label_smoothing``); ``None`` is :class:`~popalign.losses.params.LossParams`' defaults.
        chosen_lengths, rejected_lengths: (B,) completion-token counts, for a length-normalised form.

    Returns:
        :class:`LossOutput` with ``losses`` (B,) and detached (B,) metrics ``rewards/chosen``,
        ``rewards/rejected``, ``rewards/margins`` (chosen - rejected, never length-normalised),
        ``rewards/accuracies`` (1.0 where chosen > rejected), plus ``margin/used`` when a margin is given
        and ``weight/used`` when a weight is given.
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.dim() != 1:
        raise ValueError(
            "chosen_rewards and rejected_rewards must both have shape (B,), got "
            f"{tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}"
        )
    form = form or FORMS["sigmoid"]
    params = params or LossParams()
    form.check(params)
    reward_margins = chosen_rewards - rejected_rewards
    logits = form.argument(chosen_rewards, rejected_rewards, chosen_lengths, rejected_lengths)
    metrics: dict[str, Tensor] = {}
    if margin is not None:
        margin_b = _as_batch(margin, chosen_rewards, "margin")
        logits = logits - margin_b
        metrics["margin/used"] = margin_b.detach().clone()
    losses = form.losses(logits, params)
    if weight is not None:
        weight_b = _as_batch(weight, chosen_rewards, "weight")
        losses = weight_b * losses
        metrics["weight/used"] = weight_b.detach().clone()

    detached = reward_margins.detach()
    metrics.update(
        {
            "rewards/chosen": chosen_rewards.detach(),
            "rewards/rejected": rejected_rewards.detach(),
            "rewards/margins": detached,
            "rewards/accuracies": (detached > 0).to(detached.dtype),
        }
    )
    return LossOutput(losses=losses, metrics=metrics)
