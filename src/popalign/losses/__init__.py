"""The losses as pure torch functions: reward differences, loss forms, margin sources and the one loss.

``loss = weight * f(reward_diff(strong) - margin)`` with a loss form ``f`` (:mod:`popalign.losses.forms`),
a margin source (:mod:`popalign.losses.sources`) and a weighting (:mod:`popalign.losses.weights`); with
DPO's ``f(u) = -log sigmoid(u)`` it is the paper's Eq. 2-8. The named presets that choose the parts live in
:mod:`popalign.methods`; :func:`method_loss` (:mod:`popalign.losses.compose`) puts a method's parts
together, with the settings of :class:`LossParams` (:mod:`popalign.losses.params`) handed whole.

The names below are loaded on first use, so that the registries (and command-line help built from them)
do not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LossParams": "params",
    "method_loss": "compose",
    "LossOutput": "preference",
    "preference_loss": "preference",
    "clip_margin": "margins",
    "constant_margin": "margins",
    "pop_margin": "margins",
    "explicit_rewards": "rewards",
    "implicit_rewards": "rewards",
    "reward_difference": "rewards",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'popalign.losses' has no attribute {name!r}")
    return getattr(importlib.import_module(f"popalign.losses.{_EXPORTS[name]}"), name)
