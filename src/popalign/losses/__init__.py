"""The losses as pure torch functions: reward differences, margin sources and the one preference loss.

``loss = -weight * log sigmoid(reward_diff(strong) - margin)`` (Eq. 2-8); the named presets that choose the
margin and the weight live in :mod:`popalign.methods`.
"""

from popalign.losses.margins import clip_margin, constant_margin, pop_margin
from popalign.losses.preference import LossOutput, preference_loss
from popalign.losses.rewards import explicit_rewards, implicit_rewards, reward_difference

__all__ = [
    "LossOutput",
    "clip_margin",
    "constant_margin",
    "explicit_rewards",
    "implicit_rewards",
    "pop_margin",
    "preference_loss",
    "reward_difference",
]
