"""Every knob of ``popalign probe`` as one dataclass: ``key=value`` on the command line
(``head.kind=mlp``, ``pop.k=4``, ``features.torch_threads=2``), and the flags ``--model``, ``--folds`` and
``--seeds`` for its three most used keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from popalign.config import ConfigError, help_field
from popalign.losses.params import DEFAULT_MARGIN, DEFAULT_MAX_MARGIN
from popalign.pop.build import PoPSpec
from popalign.probe.features import FeatureSpec
from popalign.probe.heads import HeadSpec


@dataclass
class ProbeLoss:
    """The loss settings the reward-model presets read (``loss.*``; the names of ``popalign train``)."""

    margin: float = help_field(DEFAULT_MARGIN, help="The constant margin of the margin arm (Eq. 4).")
    max_margin: float | None = help_field(
        DEFAULT_MAX_MARGIN,
        help="M_max: the PoP margin is clipped to [0, M_max]; null leaves it unclipped.",
    )


@dataclass
class ProbeConfig:
    """Every knob of ``popalign probe``."""

    model: str = help_field(
        "smollm2-135m-instruct", help="The frozen model: a folder, a .gguf file or an alias."
    )
    folds: int = help_field(5, help="Cross-fitting folds: each row is scored by heads trained on the others.")
    seeds: int = help_field(
        20, help="Seeds (folds, initial weights, batch order, PoP pairs); arms share them."
    )
    arms: list[str] = help_field(
        default_factory=list, help="Arms to run (empty: all; the table in docs/probe.md)."
    )
    features: FeatureSpec = field(default_factory=FeatureSpec)
    head: HeadSpec = field(default_factory=HeadSpec)
    pop: PoPSpec = field(default_factory=PoPSpec)
    loss: ProbeLoss = field(default_factory=ProbeLoss)

    def validate(self) -> None:
        from popalign.probe.crossfit import ARM_NAMES

        if self.folds < 2:
            raise ConfigError("folds must be at least 2: a row is scored by heads that did not see it")
        if self.seeds < 2:
            raise ConfigError("seeds must be at least 2")
        unknown = [a for a in self.arms if a not in ARM_NAMES]
        if unknown:
            raise ConfigError(f"arms: unknown {', '.join(unknown)}; valid: {', '.join(ARM_NAMES)}")
        self.features.validate()
        self.head.validate()
        self.pop.validate()


def selected_arms(cfg: ProbeConfig):
    """The arms to run, in report order, with the arms the chosen ones need (a steps-matched one's model)."""
    from popalign.probe.crossfit import ARMS

    wanted = set(cfg.arms) or {a.name for a in ARMS}
    wanted |= {a.steps_of for a in ARMS if a.name in wanted and a.steps_of}
    return [a for a in ARMS if a.name in wanted]
