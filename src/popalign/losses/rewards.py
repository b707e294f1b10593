"""Reward differences: implicit (the DPO policy, Eq. 3) or explicit (a reward-model head, Eq. 2/4/5).

Every method of the paper scores a preference ``(x, y+, y-)`` by a reward difference and differs only in
the margin subtracted inside the log-sigmoid and the weight outside (see :mod:`popalign.losses.preference`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"expected tensors of one shape (B,), got {shapes}")


def implicit_rewards(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor]:
    """DPO's implicit rewards ``beta * log(pi_theta(y|x) / pi_ref(y|x))`` (Section 2.2, Eq. 3).

    Args:
        policy_chosen_logps, policy_rejected_logps: (B,) summed completion log-probs under the policy
            (or under the target policy when scoring the weak pair for Eq. 7).
        reference_chosen_logps, reference_rejected_logps: (B,) the same under the frozen reference.
        beta: the KL strength of Eq. 3.

    Returns:
        ``(chosen_rewards, rejected_rewards)``, each (B,); ``chosen_rewards = beta * (policy_chosen_logps -
        reference_chosen_logps)``. The graph is kept through the policy log-probs.
    """
    _check_same_shape(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        reference_chosen_logps=reference_chosen_logps,
        reference_rejected_logps=reference_rejected_logps,
    )
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps)
    return chosen_rewards, rejected_rewards


def explicit_rewards(chosen_scores: Tensor, rejected_scores: Tensor) -> tuple[Tensor, Tensor]:
    """A reward model's scores ``r(x, y+)``, ``r(x, y-)`` as (B,) rewards (Eq. 2/4/5).

    Reward heads usually return (B, 1); the trailing singleton is dropped so both reward kinds reach
    :func:`popalign.losses.preference.preference_loss` with the same shape.
    """
    if chosen_scores.dim() == 2 and chosen_scores.shape[-1] == 1:
        chosen_scores = chosen_scores.squeeze(-1)
    if rejected_scores.dim() == 2 and rejected_scores.shape[-1] == 1:
        rejected_scores = rejected_scores.squeeze(-1)
    _check_same_shape(chosen_scores=chosen_scores, rejected_scores=rejected_scores)
    return chosen_scores, rejected_scores


def reward_difference(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """``chosen_rewards - rejected_rewards``, (B,): the predicted margin of each preference.

    For the policy this is ``beta * ((pc - rc) - (pr - rr))``, the argument of the log-sigmoid in Eq. 3.
    """
    _check_same_shape(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    return torch.sub(chosen_rewards, rejected_rewards)
