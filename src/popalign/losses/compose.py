"""A method's loss on a batch: its margin source gives the margin, its weighting the weight, its loss form
the per-example losses (``loss = weight * f(z - m)``).

The method is anything with the parts of a preset (:class:`LossParts`; the presets of
:mod:`popalign.methods` are), so the losses know nothing of how presets are named or chosen. The loss
settings travel whole as one :class:`~popalign.losses.params.LossParams`. torch is imported only inside
:func:`method_loss`, so command-line help stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from popalign.losses.params import LossParams
from popalign.losses.weights import WEIGHTINGS

if TYPE_CHECKING:
    from torch import Tensor

    from popalign.losses.forms import LossForm
    from popalign.losses.preference import LossOutput
    from popalign.losses.sources import MarginSource


class LossParts(Protocol):
    """What :func:`method_loss` reads of a method (:class:`popalign.methods.Method` has it all)."""

    name: str
    weighting: str

    @property
    def source(self) -> MarginSource: ...

    @property
    def loss_form(self) -> LossForm: ...

    @property
    def needs_gt_margin(self) -> bool: ...

    @property
    def needs_weak_pair(self) -> bool: ...


def _require(value, what: str, method: LossParts):
    if value is None:
        raise ValueError(f"method {method.name!r} needs {what}, but it was not given")
    return value


def method_loss(
    method: LossParts,
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    gt_margins: Tensor | None = None,
    weak_chosen_rewards: Tensor | None = None,
    weak_rejected_rewards: Tensor | None = None,
    margin_column: Tensor | None = None,
    lengths: dict[str, Tensor] | None = None,
    rows: dict[str, Tensor] | None = None,
    params: LossParams | None = None,
) -> LossOutput:
    """The loss of ``method`` on a batch: ask its margin source and weighting, then apply its loss form.

    Args:
        method: the preset (or any :class:`LossParts`).
        chosen_rewards, rejected_rewards: (B,) rewards of the (strong) preference, with their graph.
        gt_margins: (B,) score differences ``score_chosen - score_rejected`` (ground-truth margins) of the
            (strong) preference; needed when ``method.needs_gt_margin``.
        weak_chosen_rewards, weak_rejected_rewards: (B,) rewards of the weaker preference of each PoP pair
            under the target (or live) model (``beta`` applied); needed when ``method.needs_weak_pair``.
            They are detached here whatever their origin.
        margin_column: (B,) the data's per-row ``margin`` column (margin source ``column``).
        lengths: (B,) completion-token counts ``chosen`` / ``rejected`` (and ``weak_chosen`` /
            ``weak_rejected`` for PoP), needed by a length-normalised form. The weak pair's rewards are
            normalised with them like the strong pair's, so a PoP margin is in the units of the argument.
        rows: (B,) the margin source's further per-row inputs by name (``source.row_inputs``).
        params: the loss settings, handed whole to the source and the form (``margin``: the constant
            source's margin; ``max_margin``: ``M_max`` of Eq. 7, ``None`` unclipped (Eq. 5/6);
            ``odpo_alpha``; ``beta``: IPO's target ``1/(2 beta)``, the rewards carry it already;
            ``label_smoothing``: ``eps`` of cdpo and robust). ``None``: the defaults.

    Returns:
        :class:`~popalign.losses.preference.LossOutput`; the PoP sources add ``pop/target_margin``
        (clipped), ``pop/raw_margin`` (unclipped), ``pop/clipped_low`` (1.0 where the raw margin was raised
        to 0) and ``pop/clipped_high`` (1.0 where it was lowered to ``max_margin``); both flags are 0 when
        ``max_margin`` is ``None``.

    Raises:
        ValueError: a needed input is missing, or an SBT weight (ground-truth margin) is negative.
    """
    import torch

    from popalign.losses.preference import preference_loss
    from popalign.losses.sources import MarginInputs

    def as_rewards_like(value: Tensor | None) -> Tensor | None:
        if value is None:
            return None
        return torch.as_tensor(value, dtype=chosen_rewards.dtype, device=chosen_rewards.device)

    params = params or LossParams()
    form, lengths = method.loss_form, lengths or {}
    if method.needs_gt_margin:
        _require(gt_margins, "gt_margins (ground-truth score margins)", method)
    weak_c = weak_r = None
    if method.needs_weak_pair:
        weak_c = _require(weak_chosen_rewards, "weak_chosen_rewards (the weaker pair's rewards)", method)
        weak_r = _require(weak_rejected_rewards, "weak_rejected_rewards", method)
        # The margin is the weak pair's value of the same argument: per token where the form is.
        weak_c = form.per_token(weak_c, lengths.get("weak_chosen"))
        weak_r = form.per_token(weak_r, lengths.get("weak_rejected"))
    if method.source.needs_column:
        _require(margin_column, "margin_column (the data's per-row margin column)", method)
    rows = rows or {}
    for name in method.source.row_inputs:
        _require(rows.get(name), f"the row input {name!r}", method)
    gt = as_rewards_like(gt_margins)
    inputs = MarginInputs(
        like=chosen_rewards,
        gt_margins=gt,
        weak_chosen_rewards=weak_c,
        weak_rejected_rewards=weak_r,
        column=as_rewards_like(margin_column),
        rows={name: as_rewards_like(rows[name]) for name in method.source.row_inputs},
    )
    margin, extra = method.source(inputs, params)
    weight = WEIGHTINGS[method.weighting](gt, method.name)
    out = preference_loss(
        chosen_rewards,
        rejected_rewards,
        margin=margin,
        weight=weight,
        form=form,
        params=params,
        chosen_lengths=lengths.get("chosen"),
        rejected_lengths=lengths.get("rejected"),
    )
    out.metrics.update(extra)
    return out
