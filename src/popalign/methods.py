"""The paper's methods as named presets of one loss with three knobs.

Every method is ``loss = -weight * log sigmoid(reward_diff(strong pair) - margin)`` (Eq. 2-8); a preset picks

* the **sampler**: plain preferences, or PoP pairs (a stronger and a weaker preference);
* the **margin** inside the log-sigmoid: none, a constant, the ground-truth score margin, or the reward
  difference of the weaker PoP preference under a target model (stop-gradient, clipped; Eq. 5-7);
* the **weighting** outside: 1, or the ground-truth score margin (scaled Bradley-Terry, Eq. 8).

The policy objective (DPO family, implicit rewards) uses the names in :data:`METHODS`; the reward-model
objective (explicit rewards) uses the names in :data:`REWARD_MODEL_METHODS`, which carry the same knobs
(``bt`` is ``dpo``, ``pop`` is ``dpo-pop``, ...). The names never collide, so :func:`get_method` resolves
either. This module imports torch only inside :func:`method_loss`, so command-line help stays fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from popalign.errors import PopalignError

if TYPE_CHECKING:
    from torch import Tensor

    from popalign.losses.preference import LossOutput

MarginSource = Literal["none", "constant", "ground_truth", "target"]
Weighting = Literal["one", "ground_truth"]
Sampler = Literal["preferences", "pop"]
Objective = Literal["policy", "reward-model"]


@dataclass(frozen=True)
class Method:
    """One named preset of the shared loss.

    Attributes:
        name: the config / command-line name.
        sampler: ``"preferences"`` (one preference per example) or ``"pop"`` (PoP pairs: strong + weak).
        margin: where the margin inside the log-sigmoid comes from.
        weighting: ``"one"`` or ``"ground_truth"`` (the preference's score margin, Eq. 8).
        pop_strategy: the PoP sampling strategy this preset fixes; ``None`` takes it from the PoP settings.
        equation: the paper's equation, e.g. ``"Eq. 7"``.
        description: one line for help texts.
        objective: ``"policy"`` (implicit DPO rewards) or ``"reward-model"`` (explicit rewards).
    """

    name: str
    sampler: Sampler
    margin: MarginSource
    weighting: Weighting
    pop_strategy: Literal["iterative", "random"] | None
    equation: str
    description: str
    objective: Objective = "policy"

    @property
    def needs_weak_pair(self) -> bool:
        """Whether the loss needs the weak preference's rewards (only the target-model margin does)."""
        return self.margin == "target"

    @property
    def needs_gt_margin(self) -> bool:
        """Whether the loss needs the ground-truth score margin of each (strong) preference."""
        return self.margin == "ground_truth" or self.weighting == "ground_truth"


_POLICY_PRESETS = [
    Method(
        name="dpo",
        sampler="preferences",
        margin="none",
        weighting="one",
        pop_strategy=None,
        equation="Eq. 3",
        description="vanilla DPO: no margin",
    ),
    Method(
        name="dpo-margin",
        sampler="preferences",
        margin="constant",
        weighting="one",
        pop_strategy=None,
        equation="Eq. 4 in Eq. 3",
        description="fixed margin inside the log-sigmoid (the paper's DPO-margin-1 uses 1)",
    ),
    Method(
        name="dpo-margin-gt",
        sampler="preferences",
        margin="ground_truth",
        weighting="one",
        pop_strategy=None,
        equation="Eq. 4 in Eq. 3",
        description="ground-truth score margin inside the log-sigmoid",
    ),
    Method(
        name="dpo-sbt",
        sampler="preferences",
        margin="none",
        weighting="ground_truth",
        pop_strategy=None,
        equation="Eq. 8",
        description="scaled Bradley-Terry (DPO-margin-gt-scaled): ground-truth margin as the weight",
    ),
    Method(
        name="dpo-pop",
        sampler="pop",
        margin="target",
        weighting="one",
        pop_strategy=None,
        equation="Eq. 7",
        description="DPO-PoP: clipped, stop-gradient target-policy margin of the weaker preference",
    ),
    Method(
        name="dpo-pop-iter",
        sampler="pop",
        margin="target",
        weighting="one",
        pop_strategy="iterative",
        equation="Eq. 7",
        description="DPO-PoP on iteratively sampled PoP pairs",
    ),
    Method(
        name="dpo-pop-random",
        sampler="pop",
        margin="target",
        weighting="one",
        pop_strategy="random",
        equation="Eq. 7",
        description="DPO-PoP on randomly sampled PoP pairs",
    ),
    Method(
        name="dpo-pop-nomargin",
        sampler="pop",
        margin="none",
        weighting="one",
        pop_strategy=None,
        equation="Eq. 3 on PoP pairs",
        description="control: PoP sampling with the margin switched off",
    ),
]

# Reward-model name -> the policy preset whose knobs it shares, and its equation for explicit rewards.
_REWARD_MODEL_ALIASES = {
    "bt": ("dpo", "Eq. 2"),
    "margin": ("dpo-margin", "Eq. 4"),
    "margin-gt": ("dpo-margin-gt", "Eq. 4"),
    "sbt": ("dpo-sbt", "Eq. 8 (explicit rewards)"),
    "pop": ("dpo-pop", "Eq. 5"),
    "pop-iter": ("dpo-pop-iter", "Eq. 5"),
    "pop-random": ("dpo-pop-random", "Eq. 5"),
    "pop-nomargin": ("dpo-pop-nomargin", "Eq. 2 on PoP pairs"),
}

METHODS: dict[str, Method] = {m.name: m for m in _POLICY_PRESETS}
"""The policy (DPO-family) presets by name."""

REWARD_MODEL_METHODS: dict[str, Method] = {
    name: dataclasses.replace(METHODS[policy_name], name=name, equation=equation, objective="reward-model")
    for name, (policy_name, equation) in _REWARD_MODEL_ALIASES.items()
}
"""The reward-model presets by name: the same knobs as their policy counterparts, explicit rewards."""


def get_method(name: str, objective: Objective | None = None) -> Method:
    """The preset called ``name``; ``objective`` restricts the search to one objective's names.

    Raises:
        PopalignError: unknown name (or a name of the other objective); the message lists the valid names.
    """
    tables = {"policy": METHODS, "reward-model": REWARD_MODEL_METHODS}
    if objective is not None and objective not in tables:
        raise PopalignError(f"unknown objective {objective!r}; valid: {', '.join(tables)}")
    searched = [objective] if objective is not None else list(tables)
    for key in searched:
        if name in tables[key]:
            return tables[key][name]
    valid = "; ".join(f"{key}: {', '.join(tables[key])}" for key in searched)
    raise PopalignError(f"unknown method {name!r}; valid methods ({valid})")


def format_methods_table(objective: Objective = "policy") -> str:
    """A plain-text table of one objective's presets, for help texts."""
    table = METHODS if objective == "policy" else REWARD_MODEL_METHODS
    width = max(len(name) for name in table)
    lines = [f"{name:<{width}}  {m.equation:<16}  {m.description}" for name, m in table.items()]
    return "\n".join(lines)


def _require(value, what: str, method: Method):
    if value is None:
        raise ValueError(f"method {method.name!r} needs {what}, but it was not given")
    return value


def _target_margin(
    weak_chosen_rewards: Tensor, weak_rejected_rewards: Tensor, max_margin: float | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """The PoP margin (B,) of Eq. 5/7 and its ``pop/*`` metrics, each (B,) and detached."""
    import torch

    from popalign.losses.margins import pop_margin

    margin = pop_margin(weak_chosen_rewards, weak_rejected_rewards, max_margin)
    raw = (weak_chosen_rewards - weak_rejected_rewards).detach()
    if max_margin is None:
        clipped_low = clipped_high = torch.zeros_like(raw)
    else:
        clipped_low, clipped_high = (raw < 0).to(raw.dtype), (raw > max_margin).to(raw.dtype)
    metrics = {
        "pop/target_margin": margin,
        "pop/raw_margin": raw,
        "pop/clipped_low": clipped_low,
        "pop/clipped_high": clipped_high,
    }
    return margin, metrics


def method_loss(
    method: Method,
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    gt_margins: Tensor | None = None,
    weak_chosen_rewards: Tensor | None = None,
    weak_rejected_rewards: Tensor | None = None,
    constant: float = 1.0,
    max_margin: float | None = 10.0,
) -> LossOutput:
    """The loss of ``method`` on a batch: pick its margin and weighting, then ``preference_loss``.

    Args:
        method: the preset.
        chosen_rewards, rejected_rewards: (B,) rewards of the (strong) preference, with their graph.
        gt_margins: (B,) ground-truth score margins ``score_chosen - score_rejected`` of the (strong)
            preference; needed when ``method.needs_gt_margin``.
        weak_chosen_rewards, weak_rejected_rewards: (B,) rewards of the weaker preference of each PoP pair
            under the target model (``beta`` applied); needed when ``method.needs_weak_pair``. They are
            detached here whatever their origin.
        constant: the fixed margin of ``margin == "constant"`` (the paper's DPO-margin-1 uses 1).
        max_margin: ``M_max`` of Eq. 7 for the target margin (paper: 10); ``None`` leaves it unclipped
            (Eq. 5/6).

    Returns:
        :class:`~popalign.losses.preference.LossOutput`; for ``margin == "target"`` the metrics also hold
        ``pop/target_margin`` (clipped), ``pop/raw_margin`` (unclipped), ``pop/clipped_low`` (1.0 where the
        raw margin was raised to 0) and ``pop/clipped_high`` (1.0 where it was lowered to ``max_margin``);
        both flags are 0 when ``max_margin`` is ``None``.

    Raises:
        ValueError: a needed input is missing, or an SBT weight (ground-truth margin) is negative.
    """
    import torch

    from popalign.losses.margins import constant_margin
    from popalign.losses.preference import preference_loss

    def as_rewards_like(value: Tensor) -> Tensor:
        return torch.as_tensor(value, dtype=chosen_rewards.dtype, device=chosen_rewards.device)

    gt = None
    if method.needs_gt_margin:
        gt = as_rewards_like(_require(gt_margins, "gt_margins (ground-truth score margins)", method))
    extra: dict[str, Tensor] = {}
    margin: Tensor | None = None
    if method.margin == "constant":
        margin = constant_margin(chosen_rewards.shape[0], constant, like=chosen_rewards)
    elif method.margin == "ground_truth":
        margin = gt
    elif method.margin == "target":
        weak_chosen = _require(weak_chosen_rewards, "weak_chosen_rewards (the weaker pair's rewards)", method)
        weak_rejected = _require(weak_rejected_rewards, "weak_rejected_rewards", method)
        margin, extra = _target_margin(weak_chosen, weak_rejected, max_margin)
    weight: Tensor | None = None
    if method.weighting == "ground_truth":
        # A negative weight would turn the loss into one that rewards getting the preference wrong.
        if bool((gt < 0).any()):
            raise ValueError(f"method {method.name!r} weighs by the ground-truth margin, which must be >= 0")
        weight = gt
    out = preference_loss(chosen_rewards, rejected_rewards, margin=margin, weight=weight)
    out.metrics.update(extra)
    return out
