"""Loss forms: how the margin-shifted reward difference of one preference becomes its loss.

Every form is a function ``f(u)`` of one argument ``u = z - m``: the reward difference ``z`` of the (strong)
preference minus the margin ``m`` from a margin source (:mod:`popalign.losses.sources`). A margin therefore
enters every form the same way, as a shift of the argument, and a margin of 0 gives the published loss. ``z``
is ``chosen_rewards - rejected_rewards`` with ``beta`` already applied (``beta * log pi/pi_ref``, Eq. 3 of
the paper), or, for a length-normalised form, the difference of per-token rewards.

Each form is a class registered in :data:`FORMS` with :func:`register_form`; its docstring and
``equation`` / ``citation`` say where it comes from. This module imports torch only inside the loss
functions, so listing the forms (command-line help) stays fast.

Add a form: subclass :class:`LossForm` here, decorate it with ``@register_form``, test it (docs/losses.md,
"Add your own").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from popalign.losses.registry import lookup, registrar

if TYPE_CHECKING:
    from torch import Tensor

    from popalign.losses.params import LossParams

FORMS: dict[str, LossForm] = {}
"""Every loss form by name (``loss.form``)."""


class LossForm:
    """One loss form ``f(u)``, ``u = z - m``.

    Class attributes (the table in docs/losses.md is made of them):
        name: the ``loss.form`` name.
        title: the method's usual name.
        equation: ``f(u)`` in plain text.
        citation: the paper and equation it comes from.
        margin_enters: how a margin changes the published loss.
        length_normalised: ``z`` is the difference of per-token rewards ``r / |y|`` (needs completion
            lengths), not of summed ones.
        reference_free: the rewards are ``beta * log pi(y|x)`` without a reference model.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    equation: ClassVar[str]
    citation: ClassVar[str]
    margin_enters: ClassVar[str] = "shifts the argument: u = z - m"
    length_normalised: ClassVar[bool] = False
    reference_free: ClassVar[bool] = False

    def check(self, params: LossParams) -> None:
        """Raise ``ValueError`` for settings the form cannot use."""

    def losses(self, u: Tensor, params: LossParams) -> Tensor:
        """(B,) per-example losses of the (B,) argument ``u = z - m``, with the loss settings ``params``."""
        raise NotImplementedError

    def per_token(self, rewards: Tensor, lengths: Tensor | None) -> Tensor:
        """``rewards / lengths`` if the form is length-normalised, else ``rewards``; lengths: (B,)."""
        if not self.length_normalised:
            return rewards
        if lengths is None:
            raise ValueError(f"loss form {self.name!r} is length-normalised and needs the completion lengths")
        return rewards / lengths.to(rewards.dtype).clamp(min=1.0)

    def argument(
        self,
        chosen_rewards: Tensor,
        rejected_rewards: Tensor,
        chosen_lengths: Tensor | None = None,
        rejected_lengths: Tensor | None = None,
    ) -> Tensor:
        """(B,) ``z``: ``chosen - rejected``, or ``chosen / |y+| - rejected / |y-|`` if length-normalised."""
        if not self.length_normalised:
            return chosen_rewards - rejected_rewards
        return self.per_token(chosen_rewards, chosen_lengths) - self.per_token(
            rejected_rewards, rejected_lengths
        )


register_form = registrar(FORMS, "loss form")


def get_form(name: str) -> LossForm:
    """The form called ``name``; ``ValueError`` listing the valid names otherwise."""
    return lookup(FORMS, "loss form", name)


def _smoothing_in(label_smoothing: float, high: float, name: str, closed: bool) -> None:
    ok = 0.0 <= label_smoothing <= high if closed else 0.0 <= label_smoothing < high
    if not ok:
        bracket = "]" if closed else ")"
        raise ValueError(
            f"loss form {name!r}: label_smoothing must lie in [0, {high}{bracket}, got {label_smoothing}"
        )


@register_form
class Sigmoid(LossForm):
    """DPO's log-sigmoid loss ``-log sigmoid(u)`` (Rafailov et al. 2023, Eq. 7; the paper's Eq. 3).

    With a margin it is the paper's Eq. 4 (margin inside the log-sigmoid) and, with the PoP margin, Eq. 7.
    At initialisation (``z = 0``) the loss is ``log(1 + e^m)``: ``log 2`` without a margin.
    """

    name = "sigmoid"
    title = "DPO"
    equation = "-log sigmoid(u)"
    citation = "Rafailov et al. 2023, Eq. 7 (the paper's Eq. 3; Eq. 4 with a margin)"
    margin_enters = "inside the log-sigmoid: -log sigmoid(z - m) (Eq. 4)"

    def losses(self, u: Tensor, params: LossParams) -> Tensor:
        import torch.nn.functional as F

        # logsigmoid is the numerically stable form of log(1 / (1 + exp(-u))) for large |u|.
        return -F.logsigmoid(u)


@register_form
class IPO(LossForm):
    """IPO's squared loss ``(h - 1/(2 beta))^2`` on the per-token log-ratio difference ``h = z / beta``.

    Azar et al. 2024, Eq. 17 (``tau`` there is ``beta`` here). ``z`` is length-normalised as in TRL's
    ``loss_type="ipo"`` (each response's log-ratio divided by its number of completion tokens, a choice
    TRL reports agreeing with the IPO authors). IPO already regresses ``z`` onto a fixed target margin,
    ``1/2`` in reward units; a margin ``m`` raises that target to ``1/2 + m``:
    ``((z - m) - 1/2)^2 / beta^2``. At initialisation without a margin the loss is ``(1/(2 beta))^2``
    (25 for beta 0.1).
    """

    name = "ipo"
    title = "IPO"
    equation = "(u / beta - 1 / (2 beta))^2, u per token"
    citation = "Azar et al. 2024, Eq. 17"
    margin_enters = "raises the regression target 1/2 to 1/2 + m: ((z - m) - 1/2)^2 / beta^2"
    length_normalised = True

    def losses(self, u: Tensor, params: LossParams) -> Tensor:
        beta = params.beta
        return (u / beta - 1.0 / (2.0 * beta)) ** 2


@register_form
class Hinge(LossForm):
    """SLiC's hinge ``max(0, 1 - u)`` (Zhao et al. 2023, Eq. 1 with ``delta = 1 / beta`` in log-ratio units).

    As TRL's ``loss_type="hinge"``: ``relu(1 - beta * h)`` with ``h`` the log-ratio difference. A margin
    ``m`` raises the hinge point: ``max(0, 1 + m - z)``. At initialisation the loss is ``1 + m``.
    """

    name = "hinge"
    title = "SLiC (hinge)"
    equation = "max(0, 1 - u)"
    citation = "Zhao et al. 2023 (SLiC-HF), Eq. 1"
    margin_enters = "raises the hinge point: max(0, 1 + m - z)"

    def losses(self, u: Tensor, params: LossParams) -> Tensor:
        import torch

        return torch.relu(1.0 - u)


@register_form
class ConservativeDPO(LossForm):
    """cDPO: DPO with label smoothing ``eps``, the expected loss when each label is flipped with rate ``eps``.

    ``-(1 - eps) log sigmoid(u) - eps log sigmoid(-u)`` (Mitchell 2023, "A note on DPO with noisy
    preferences and relationship to IPO", Sec. 2). ``eps = loss.label_smoothing``; ``eps = 0`` is DPO. The
    margin shifts the argument of both terms. At initialisation the loss is ``log 2`` whatever ``eps``.
    """

    name = "cdpo"
    title = "cDPO"
    equation = "-(1 - eps) log sigmoid(u) - eps log sigmoid(-u)"
    citation = "Mitchell 2023 (cDPO note), Sec. 2"

    def check(self, params: LossParams) -> None:
        _smoothing_in(params.label_smoothing, 0.5, self.name, closed=True)

    def losses(self, u: Tensor, params: LossParams) -> Tensor:
        import torch.nn.functional as F

        eps = params.label_smoothing
        return -(1.0 - eps) * F.logsigmoid(u) - eps * F.logsigmoid(-u)


@register_form
class RobustDPO(LossForm):
    """rDPO: the unbiased loss under label-flip noise of rate ``eps`` (Chowdhury et al. 2024, Sec. 3).

    ``(-(1 - eps) log sigmoid(u) + eps log sigmoid(-u)) / (1 - 2 eps)``, as TRL's ``loss_type="robust"``;
    ``eps = loss.label_smoothing`` in ``[0, 0.5)``, ``eps = 0`` is DPO. At initialisation the loss is
    ``log 2``.
    """

    name = "robust"
    title = "rDPO"
    equation = "(-(1 - eps) log sigmoid(u) + eps log sigmoid(-u)) / (1 - 2 eps)"
    citation = "Chowdhury et al. 2024, Sec. 3 (the de-biased loss)"

    def check(self, params: LossParams) -> None:
        _smoothing_in(params.label_smoothing, 0.5, self.name, closed=False)

    def losses(self, u: Tensor, params: LossParams) -> Tensor:
        import torch.nn.functional as F

        eps = params.label_smoothing
        return (-(1.0 - eps) * F.logsigmoid(u) + eps * F.logsigmoid(-u)) / (1.0 - 2.0 * eps)


@register_form
class SimPO(LossForm):
    """SimPO: ``-log sigmoid(u)`` on reference-free, length-normalised rewards ``beta / |y| log pi(y|x)``.

    Meng et al. 2024, Eq. 6: ``-log sigmoid(beta/|y+| log pi(y+|x) - beta/|y-| log pi(y-|x) - gamma)``.
    SimPO's ``gamma`` is a margin: the ``simpo`` preset takes it from the constant source
    (``loss.margin``). No reference model is run or precomputed.
    """

    name = "simpo"
    title = "SimPO"
    equation = "-log sigmoid(u), u per token, no reference"
    citation = "Meng et al. 2024, Eq. 6"
    margin_enters = "gamma of Eq. 6: -log sigmoid(z - m)"
    length_normalised = True
    reference_free = True

    def losses(self, u: Tensor, params: LossParams) -> Tensor:
        import torch.nn.functional as F

        return -F.logsigmoid(u)
