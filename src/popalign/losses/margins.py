"""Margin sources: the term subtracted inside the log-sigmoid (Eq. 4-7).

* none -> no margin (Eq. 2/3);
* constant -> :func:`constant_margin` (DPO-margin-1);
* ground truth -> the score difference of the preference itself, passed in as a (B,) tensor;
* target -> :func:`pop_margin`, the reward difference of the *weaker* preference of a PoP pair under a
  target model, clipped and behind a stop-gradient (Eq. 5-7).
"""

from __future__ import annotations

import torch
from torch import Tensor


def clip_margin(raw: Tensor, max_margin: float | None) -> Tensor:
    """``clip_[0, max_margin](raw)`` elementwise (Section 3, before Eq. 7).

    Args:
        raw: (B,) raw margins.
        max_margin: ``M_max``. ``None`` returns ``raw`` unchanged, i.e. the unclipped objective of
            Eq. 5 (reward model) and Eq. 6 (policy); note that then negative margins stay negative too.

    Returns:
        (B,) tensor of the same dtype and device.
    """
    if max_margin is None:
        return raw
    if max_margin < 0:
        raise ValueError(f"max_margin must be >= 0 (clipping is to [0, max_margin]), got {max_margin}")
    return raw.clamp(min=0.0, max=float(max_margin))


def pop_margin(
    weak_chosen_rewards: Tensor, weak_rejected_rewards: Tensor, max_margin: float | None
) -> Tensor:
    """The PoP margin ``sg[clip_[0, M_max](r(x_w, y_w+) - r(x_w, y_w-))]`` for the stronger pair (Eq. 7).

    Args:
        weak_chosen_rewards, weak_rejected_rewards: (B,) rewards of the weaker preference of each PoP pair,
            from the target policy (``beta`` already applied, Eq. 7), or from a reward model (Eq. 5).
        max_margin: ``M_max``; ``None`` leaves the margin unclipped (Eq. 5/6).

    Returns:
        (B,) margin, always detached: without the stop-gradient the loss would reward inverting the weaker
        preference (Section 3), so no gradient may reach whatever produced the weak rewards.
    """
    if weak_chosen_rewards.shape != weak_rejected_rewards.shape:
        raise ValueError(
            "weak_chosen_rewards and weak_rejected_rewards must have one shape (B,), got "
            f"{tuple(weak_chosen_rewards.shape)} and {tuple(weak_rejected_rewards.shape)}"
        )
    raw = weak_chosen_rewards.detach() - weak_rejected_rewards.detach()
    return clip_margin(raw, max_margin)


def constant_margin(batch_size: int, value: float, like: Tensor) -> Tensor:
    """A (batch_size,) margin filled with ``value`` on ``like``'s dtype and device (fixed margin, Eq. 4)."""
    return torch.full((batch_size,), float(value), dtype=like.dtype, device=like.device)
