"""Margin sources: where the margin ``m`` of ``u = z - m`` comes from (paper Eq. 4-7 and beyond).

A source is a small class with one job: it says what it needs from the batch (the ground-truth score
margins, the weak pair of a PoP example, a per-row ``margin`` column) and turns a :class:`MarginInputs` into
``(margin, metrics)``. The trainer asks the method's source what to compute; it never branches on a name.
How the margin then enters the loss is the loss form's business (:mod:`popalign.losses.forms`).

Each source is registered in :data:`MARGIN_SOURCES` with :func:`register_source`. This module imports
torch only inside the sources' calls, so listing them stays fast.

Add a source: subclass :class:`MarginSource` here, decorate it with ``@register_source``, test it
(docs/losses.md, "Add your own").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from popalign.losses.registry import lookup, registrar

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

    from popalign.data.schema import PreferenceTable
    from popalign.losses.params import LossParams

MARGIN_SOURCES: dict[str, MarginSource] = {}
"""Every margin source by name (``loss.margin_source``)."""

ROW_INPUTS: dict[str, Callable[[PreferenceTable], np.ndarray | None]] = {}
"""Per-row inputs a source may ask for by name (``MarginSource.row_inputs``), beyond the fields of
:class:`MarginInputs`: each reads one ``(N,)`` array of the preference table (None: the data lacks it).
Training puts the strong preferences' values in the batch and hands them to the source as
``MarginInputs.rows``; nothing in between knows the name."""


def register_row_input(name: str) -> Callable:
    """Decorator: register a function ``table -> (N,) array or None`` in :data:`ROW_INPUTS` as ``name``."""

    def add(read: Callable[[PreferenceTable], np.ndarray | None]) -> Callable:
        if name in ROW_INPUTS:
            raise ValueError(f"row input {name!r} is registered twice")
        ROW_INPUTS[name] = read
        return read

    return add


@dataclass
class MarginInputs:
    """What a source may read; each field is (B,) on the rewards' dtype and device, or None if not given.

    Attributes:
        like: the strong pair's chosen rewards: batch size, dtype and device of the margin.
        gt_margins: ground-truth score margins ``score_chosen - score_rejected`` of the strong preference.
        weak_chosen_rewards, weak_rejected_rewards: the weak preference's rewards of a PoP example, in the
            units of the loss form's argument (per token for a length-normalised form); ``beta`` applied.
        column: the data's per-row ``margin`` column for the strong preference.
        rows: the source's :attr:`MarginSource.row_inputs` by name (:data:`ROW_INPUTS`).
    """

    like: Tensor
    gt_margins: Tensor | None = None
    weak_chosen_rewards: Tensor | None = None
    weak_rejected_rewards: Tensor | None = None
    column: Tensor | None = None
    rows: dict[str, Tensor] = field(default_factory=dict)


class MarginSource:
    """One margin source.

    Class attributes (the table in docs/losses.md is made of them):
        name: the ``loss.margin_source`` name.
        title: one line for help texts.
        equation: ``m`` in plain text.
        citation: where it comes from.
        needs_gt_margin: reads ``MarginInputs.gt_margins`` (the data must have scores).
        needs_weak_pair: reads the weak pair's rewards (the examples must be PoP pairs).
        uses_target: the weak pair is scored by the Polyak target (else by the live model, stop-gradient).
        needs_column: reads the data's per-row ``margin`` column.
        row_inputs: names of further per-row inputs it reads (:data:`ROW_INPUTS`), as ``inputs.rows[name]``.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    equation: ClassVar[str]
    citation: ClassVar[str]
    needs_gt_margin: ClassVar[bool] = False
    needs_weak_pair: ClassVar[bool] = False
    uses_target: ClassVar[bool] = False
    needs_column: ClassVar[bool] = False
    row_inputs: ClassVar[tuple[str, ...]] = ()

    def __call__(self, inputs: MarginInputs, params: LossParams) -> tuple[Tensor | None, dict[str, Tensor]]:
        """``(margin, metrics)``: a (B,) margin (None: no margin) and detached (B,) metrics; ``params`` are
        the loss settings, whole (a source reads the fields it needs)."""
        raise NotImplementedError

    def check_table(self, table: PreferenceTable) -> None:
        """Raise ``ValueError`` naming the data if ``table`` cannot feed this source."""
        if self.needs_gt_margin and not table.has_scores:
            raise ValueError(
                f"{table.source}: margin source {self.name!r} needs scores (ground-truth margins)"
            )
        if self.needs_column and table.margin_column is None:
            raise ValueError(f"{table.source}: margin source {self.name!r} needs a per-row 'margin' column")
        for name in self.row_inputs:
            if name not in ROW_INPUTS:
                raise ValueError(f"margin source {self.name!r}: no row input {name!r} is registered")
            if ROW_INPUTS[name](table) is None:
                raise ValueError(
                    f"{table.source}: margin source {self.name!r} needs {name!r}, which the data lacks"
                )

    def row_arrays(self, table: PreferenceTable) -> dict[str, np.ndarray]:
        """The ``(N,)`` arrays of :attr:`row_inputs` by name, from ``table`` (see :meth:`check_table`)."""
        return {name: ROW_INPUTS[name](table) for name in self.row_inputs}


register_source = registrar(MARGIN_SOURCES, "margin source")


def get_source(name: str) -> MarginSource:
    """The source called ``name``; ``ValueError`` listing the valid names otherwise."""
    return lookup(MARGIN_SOURCES, "margin source", name)


def _needed(value: Tensor | None, what: str, source: MarginSource) -> Tensor:
    if value is None:
        raise ValueError(f"margin source {source.name!r} needs {what}, but it was not given")
    return value


@register_source
class NoMargin(MarginSource):
    """No margin: the published loss (the paper's Eq. 2/3)."""

    name = "none"
    title = "no margin"
    equation = "0"
    citation = "the paper's Eq. 2/3"

    def __call__(self, inputs, params):
        return None, {}


@register_source
class ConstantMargin(MarginSource):
    """One margin for every preference, ``loss.margin`` (the paper's DPO-margin-1 uses 1; SimPO's gamma)."""

    name = "constant"
    title = "a constant (loss.margin)"
    equation = "loss.margin"
    citation = "the paper's Eq. 4 with a constant"

    def __call__(self, inputs, params):
        from popalign.losses.margins import constant_margin

        return constant_margin(inputs.like.shape[0], params.margin, like=inputs.like), {}


@register_source
class GroundTruthMargin(MarginSource):
    """The preference's own score margin ``score_chosen - score_rejected`` (the paper's Eq. 4)."""

    name = "ground_truth"
    title = "ground-truth score margin"
    equation = "score_chosen - score_rejected"
    citation = "the paper's Eq. 4"
    needs_gt_margin = True

    def __call__(self, inputs, params):
        return _needed(inputs.gt_margins, "gt_margins (ground-truth score margins)", self), {}


class _PoPMargin(MarginSource):
    """The weak preference's reward difference, clipped and behind a stop-gradient (Eq. 5-7)."""

    needs_weak_pair = True

    def __call__(self, inputs, params):
        import torch

        from popalign.losses.margins import pop_margin

        weak_c = _needed(inputs.weak_chosen_rewards, "weak_chosen_rewards (the weaker pair's rewards)", self)
        weak_r = _needed(inputs.weak_rejected_rewards, "weak_rejected_rewards", self)
        max_margin = params.max_margin
        margin = pop_margin(weak_c, weak_r, max_margin)
        raw = (weak_c - weak_r).detach()
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


@register_source
class TargetPoPMargin(_PoPMargin):
    """DPO-PoP's margin: the weak pair's rewards under the Polyak target, ``sg[clip_[0, M_max]]`` (Eq. 7)."""

    name = "target"
    title = "PoP: weak pair under the Polyak target"
    equation = "sg[clip_[0, M_max](r_target(x_w, y_w+) - r_target(x_w, y_w-))]"
    citation = "the paper's Eq. 7 (Eq. 5 for a reward model)"
    uses_target = True


@register_source
class LivePoPMargin(_PoPMargin):
    """The PoP margin from the live model under stop-gradient (Eq. 5 for a reward model, Eq. 6 for a policy).

    With ``loss.max_margin=null`` it is unclipped, as in Eq. 5/6.
    """

    name = "live"
    title = "PoP: weak pair under the live model"
    equation = "sg[clip_[0, M_max](r(x_w, y_w+) - r(x_w, y_w-))]"
    citation = "the paper's Eq. 5/6"


@register_source
class ColumnMargin(MarginSource):
    """A per-row ``margin`` column of the data, used as given (the convention of TRL's reward trainer)."""

    name = "column"
    title = "the data's per-row margin column"
    equation = "margin (a column of the data)"
    citation = "TRL RewardTrainer's margin column (Touvron et al. 2023, Eq. 2)"
    needs_column = True

    def __call__(self, inputs, params):
        return _needed(inputs.column, "the per-row margin column", self), {}


@register_source
class OffsetMargin(MarginSource):
    """ODPO's offset ``alpha * log(score_chosen - score_rejected)`` (Amini et al. 2024, Sec. 3).

    The log needs a positive score difference: ties and reversed scores are refused when the data is
    checked, naming the first such row, rather than dropped.
    """

    name = "odpo"
    title = "ODPO offset alpha * log(score margin)"
    equation = "loss.odpo_alpha * log(score_chosen - score_rejected)"
    citation = "Amini et al. 2024 (ODPO), Sec. 3"
    needs_gt_margin = True

    def __call__(self, inputs, params):
        import torch

        gt = _needed(inputs.gt_margins, "gt_margins (ground-truth score margins)", self)
        if bool((gt <= 0).any()):
            raise ValueError(
                f"margin source {self.name!r} takes the log of the score margin, which must be > 0; "
                "data.tie_policy=skip (--tie-policy skip) leaves ties out of the data"
            )
        return params.odpo_alpha * torch.log(gt), {}

    def check_table(self, table: PreferenceTable) -> None:
        super().check_table(table)
        bad = [i for i, m in enumerate(table.margins) if not m > 0]
        if bad:
            raise ValueError(
                f"{table.source}: margin source {self.name!r} needs score_chosen > score_rejected, but "
                f"{len(bad)} rows do not (first: id {table.ids[bad[0]]!r}, margin {table.margins[bad[0]]}); "
                "ODPO takes the log of the score margin, so leave ties out of the data with "
                "data.tie_policy=skip (--tie-policy skip)"
            )
