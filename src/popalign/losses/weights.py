"""Weightings: the per-example factor outside the loss form (1, or the paper's Eq. 8).

Registered in :data:`WEIGHTINGS` with :func:`register_weighting`; torch is imported only inside the calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from popalign.losses.registry import registrar

if TYPE_CHECKING:
    from torch import Tensor

WEIGHTINGS: dict[str, Weighting] = {}
"""Every weighting by name."""


class Weighting:
    """``weight(gt_margins) -> (B,) weight or None`` (None: weight 1, no ``weight/used`` metric)."""

    name: ClassVar[str]
    title: ClassVar[str]
    needs_gt_margin: ClassVar[bool] = False

    def __call__(self, gt_margins: Tensor | None, method_name: str) -> Tensor | None:
        raise NotImplementedError


register_weighting = registrar(WEIGHTINGS, "weighting")


@register_weighting
class One(Weighting):
    """Every example weighs 1."""

    name = "one"
    title = "1"

    def __call__(self, gt_margins, method_name):
        return None


@register_weighting
class GroundTruthWeight(Weighting):
    """Scaled Bradley-Terry: the ground-truth score margin multiplies the loss (the paper's Eq. 8).

    A tie (margin 0) contributes neither loss nor gradient; a negative weight would reward getting the
    preference wrong, so it is refused.
    """

    name = "ground_truth"
    title = "ground-truth score margin"
    needs_gt_margin = True

    def __call__(self, gt_margins, method_name):
        if gt_margins is None:
            raise ValueError(
                f"method {method_name!r} needs gt_margins (ground-truth score margins), but it was not given"
            )
        if bool((gt_margins < 0).any()):
            raise ValueError(f"method {method_name!r} weighs by the ground-truth margin, which must be >= 0")
        return gt_margins
