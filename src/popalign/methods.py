"""The methods as named presets of three parts: a sampler, a margin source and a loss form (plus a weighting).

Every method is ``loss = weight * f(z - m)`` on the reward difference ``z`` of the (strong) preference; a
preset picks

* the **sampler**: plain preferences, or PoP pairs (a stronger and a weaker preference) with a strategy;
* the **margin source** ``m`` (:data:`popalign.losses.sources.MARGIN_SOURCES`): none, a constant, the
  ground-truth score margin, the weaker PoP preference's reward difference under the Polyak target (Eq. 7)
  or the live model (Eq. 5/6), the data's ``margin`` column, or ODPO's offset;
* the **loss form** ``f`` (:data:`popalign.losses.forms.FORMS`): DPO's log-sigmoid, IPO, hinge, cDPO,
  rDPO, SimPO;
* the **weighting** outside (:data:`popalign.losses.weights.WEIGHTINGS`): 1, or the ground-truth margin
  (scaled Bradley-Terry, Eq. 8).

The paper's policy presets are :data:`METHODS`; its reward-model objective (explicit rewards) uses the names
in :data:`REWARD_MODEL_METHODS`, which carry the same parts (``bt`` is ``dpo``, ``pop`` is ``dpo-pop``, ...).
Presets beyond the paper (other loss forms, margin sources) are :data:`EXTENSIONS`; ``method=custom`` takes
its form and source from the loss settings. No two names collide, so :func:`get_method` resolves any. A
method's loss on a batch is :func:`popalign.losses.compose.method_loss`. This module never imports torch,
so command-line help stays fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from popalign.errors import PopalignError
from popalign.losses.forms import FORMS, LossForm
from popalign.losses.sources import MARGIN_SOURCES, MarginSource
from popalign.losses.weights import WEIGHTINGS

Sampler = Literal["preferences", "pop"]
Objective = Literal["policy", "reward-model"]
CUSTOM = "custom"
"""The method name whose loss form and margin source come from ``loss.form`` / ``loss.margin_source``."""


@dataclass(frozen=True)
class Method:
    """One named preset of the shared loss.

    Attributes:
        name: the config / command-line name.
        sampler: ``"preferences"`` (one preference per example) or ``"pop"`` (PoP pairs: strong + weak).
        margin: the margin source's name (a key of ``MARGIN_SOURCES``).
        weighting: the weighting's name (a key of ``WEIGHTINGS``): ``"one"`` or ``"ground_truth"`` (Eq. 8).
        pop_strategy: the PoP sampling strategy this preset fixes; ``None`` takes it from the PoP settings.
        equation: the paper's equation (or the form's source), e.g. ``"Eq. 7"``.
        description: one line for help texts.
        objective: ``"policy"`` (implicit DPO rewards) or ``"reward-model"`` (explicit rewards).
        form: the loss form's name (a key of ``FORMS``).
    """

    name: str
    sampler: Sampler
    margin: str
    weighting: str
    pop_strategy: Literal["iterative", "random"] | None
    equation: str
    description: str
    objective: Objective = "policy"
    form: str = "sigmoid"

    def __post_init__(self) -> None:
        for part, table, kind in (
            (self.margin, MARGIN_SOURCES, "margin source"),
            (self.weighting, WEIGHTINGS, "weighting"),
            (self.form, FORMS, "loss form"),
        ):
            if part not in table:
                raise PopalignError(
                    f"method {self.name!r}: unknown {kind} {part!r}; valid: {', '.join(table)}"
                )
        if self.source.needs_weak_pair and not self.uses_pop_pairs:
            raise PopalignError(
                f"method {self.name!r}: margin source {self.margin!r} needs PoP pairs (a weak preference), "
                "but the method samples plain preferences (method=custom samples PoP pairs for it)"
            )
        if self.loss_form.reference_free and self.objective != "policy":
            raise PopalignError(f"method {self.name!r}: loss form {self.form!r} is for a policy only")

    @property
    def source(self) -> MarginSource:
        return MARGIN_SOURCES[self.margin]

    @property
    def loss_form(self) -> LossForm:
        return FORMS[self.form]

    @property
    def reward_model(self) -> bool:
        """Whether the rewards are a reward head's scores (explicit) rather than DPO's implicit ones."""
        return self.objective == "reward-model"

    @property
    def uses_pop_pairs(self) -> bool:
        """Whether examples are PoP pairs (strong + weak preference) rather than single preferences."""
        return self.sampler == "pop"

    @property
    def needs_weak_pair(self) -> bool:
        """Whether the loss needs the weak preference's rewards (the PoP margin sources)."""
        return self.source.needs_weak_pair

    @property
    def needs_gt_margin(self) -> bool:
        """Whether the loss needs the ground-truth score margin of each (strong) preference."""
        return self.source.needs_gt_margin or WEIGHTINGS[self.weighting].needs_gt_margin

    @property
    def needs_lengths(self) -> bool:
        """Whether the loss needs completion lengths (a length-normalised form)."""
        return self.loss_form.length_normalised


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


def _sampler_for(margin: str) -> Sampler:
    """PoP pairs exactly when the margin source needs a weak preference."""
    return "pop" if MARGIN_SOURCES[margin].needs_weak_pair else "preferences"


def _extension(
    name: str, form: str, margin: str, equation: str, description: str, pop_strategy: str | None = None
) -> Method:
    return Method(
        name=name,
        sampler=_sampler_for(margin),
        margin=margin,
        weighting="one",
        pop_strategy=pop_strategy,
        equation=equation,
        description=description,
        form=form,
    )


_EXTENSION_PRESETS = [
    _extension(
        "ipo", "ipo", "none", "Azar et al. 2024, Eq. 17", "IPO: squared loss to a fixed target margin"
    ),
    _extension(
        "ipo-pop-iter",
        "ipo",
        "target",
        "IPO target + Eq. 7",
        "IPO whose target is raised by the PoP margin; iterative PoP pairs",
        pop_strategy="iterative",
    ),
    _extension("hinge", "hinge", "none", "Zhao et al. 2023, Eq. 1", "SLiC: hinge on the reward difference"),
    _extension(
        "hinge-pop-random",
        "hinge",
        "target",
        "SLiC hinge + Eq. 7",
        "SLiC hinge point raised by the PoP margin; random PoP pairs",
        pop_strategy="random",
    ),
    _extension(
        "cdpo", "cdpo", "none", "Mitchell 2023", "conservative DPO: label smoothing loss.label_smoothing"
    ),
    _extension(
        "rdpo", "robust", "none", "Chowdhury et al. 2024", "robust DPO: unbiased under label-flip rate eps"
    ),
    _extension(
        "simpo",
        "simpo",
        "constant",
        "Meng et al. 2024, Eq. 6",
        "SimPO: reference-free, per token, gamma = loss.margin",
    ),
    _extension("odpo", "sigmoid", "odpo", "Amini et al. 2024", "ODPO: offset alpha * log(score margin)"),
    _extension(
        "dpo-margin-column",
        "sigmoid",
        "column",
        "Eq. 4, margin from the data",
        "the data's per-row margin column",
    ),
    _extension(
        "dpo-pop-live",
        "sigmoid",
        "live",
        "Eq. 6",
        "DPO-PoP with the margin from the live policy under stop-gradient (no target)",
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

EXTENSIONS: dict[str, Method] = {m.name: m for m in _EXTENSION_PRESETS}
"""Policy presets beyond the paper: other loss forms and margin sources."""

_TABLES: dict[str, dict[str, Method]] = {
    "policy": {**METHODS, **EXTENSIONS},
    "reward-model": REWARD_MODEL_METHODS,
}


def get_method(name: str, objective: Objective | None = None) -> Method:
    """The preset called ``name``; ``objective`` restricts the search to one objective's names.

    Raises:
        PopalignError: unknown name (or a name of the other objective); the message lists the valid names.
    """
    if objective is not None and objective not in _TABLES:
        raise PopalignError(f"unknown objective {objective!r}; valid: {', '.join(_TABLES)}")
    searched = [objective] if objective is not None else list(_TABLES)
    for key in searched:
        if name in _TABLES[key]:
            return _TABLES[key][name]
    valid = "; ".join(f"{key}: {', '.join([*_TABLES[key], CUSTOM])}" for key in searched)
    raise PopalignError(f"unknown method {name!r}; valid methods ({valid})")


def resolve_method(
    name: str, objective: Objective = "policy", form: str = "", margin_source: str = ""
) -> Method:
    """The method a run uses: the preset ``name`` with ``form`` / ``margin_source`` replacing its parts.

    An empty ``form`` or ``margin_source`` keeps the preset's. ``name == "custom"`` starts from DPO's form and
    no margin, and samples PoP pairs exactly when the margin source needs a weak preference.

    Raises:
        PopalignError: an unknown name or part, or parts that do not fit (a PoP margin on plain preferences).
    """
    if name == CUSTOM:
        source = margin_source or "none"
        if source not in MARGIN_SOURCES:
            raise PopalignError(f"unknown margin source {source!r}; valid: {', '.join(MARGIN_SOURCES)}")
        return Method(
            name=CUSTOM,
            sampler=_sampler_for(source),
            margin=source,
            weighting="one",
            pop_strategy=None,
            equation="custom",
            description="loss.form with loss.margin_source",
            objective=objective,
            form=form or "sigmoid",
        )
    method = get_method(name, objective)
    changes = {key: value for key, value in (("form", form), ("margin", margin_source)) if value}
    return dataclasses.replace(method, **changes) if changes else method


def all_methods(objective: Objective = "policy") -> dict[str, Method]:
    """Every preset of one objective by name (the paper's first)."""
    return dict(_TABLES[objective])
