"""The loss's settings: one dataclass, handed whole to every loss form and margin source.

Each default is written here once (``beta``, the constant margin, ``M_max``); the run settings
(``popalign.train.config.LossSpec``) embed :class:`LossParams`, and the testbed and the probe import the
constants. A form or source reads the fields it needs and ignores the rest, so a new setting is one field
here, the part that reads it, and its test; nothing between the config and the part passes it along.
"""

from __future__ import annotations

from dataclasses import dataclass

from popalign.config import help_field

DEFAULT_BETA = 0.1
"""The KL strength beta of Eq. 3 (the paper's Table 6)."""
DEFAULT_MARGIN = 1.0
"""The constant margin of DPO-margin (the paper's Eq. 4 baseline uses 1)."""
DEFAULT_MAX_MARGIN = 10.0
"""``M_max``: PoP margins are clipped to ``[0, M_max]`` (Eq. 7; the paper uses 10)."""


@dataclass
class LossParams:
    """What a method's loss form and margin source may read (``loss.*`` in a run config)."""

    beta: float = help_field(
        DEFAULT_BETA, help="KL strength beta of DPO (Eq. 3); the paper uses 0.1 (Table 6). SimPO's beta too."
    )
    form: str = help_field(
        "",
        help="Loss form, replacing the method's (empty: the method's; method=custom: sigmoid); "
        "`popalign train --help` lists the forms.",
    )
    margin_source: str = help_field(
        "",
        help="Margin source, replacing the method's (empty: the method's; method=custom: none); "
        "`popalign train --help` lists the sources. 'live' takes PoP margins from the model itself under "
        "stop-grad (Eq. 5/6), 'target' from the Polyak target (Eq. 7).",
    )
    margin: float = help_field(
        DEFAULT_MARGIN, help="The constant margin of dpo-margin (the paper uses 1); SimPO's gamma."
    )
    max_margin: float | None = help_field(
        DEFAULT_MAX_MARGIN,
        help="M_max: PoP margins are clipped to [0, M_max] (Eq. 7; the paper uses 10). null = no clip.",
    )
    label_smoothing: float = help_field(
        0.0, help="Label-flip rate eps of the cdpo form (in [0, 0.5]) and the robust form (in [0, 0.5))."
    )
    odpo_alpha: float = help_field(1.0, help="ODPO's alpha: margin source odpo is alpha * log(score margin).")
