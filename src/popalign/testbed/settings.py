"""Every setting of ``popalign reproduce``, as typed, documented dataclasses (``--help-config`` lists them).

The defaults are the default preset (``configs/testbed/default.yaml`` repeats them); docs/testbed.md gives the
reason for each value. They were fixed before any method was compared and are not tuned to make one win.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from popalign.config import ConfigError, help_field
from popalign.losses.params import DEFAULT_MARGIN, DEFAULT_MAX_MARGIN
from popalign.testbed.make_data import TaskSpec

# The six methods of the paper's Section 4.2, in its order; vanilla DPO is the generative baseline.
PAPER_METHODS = ["dpo", "dpo-margin", "dpo-margin-gt", "dpo-sbt", "dpo-pop-iter", "dpo-pop-random"]
BASELINE = "dpo"
POP_METHODS = ["dpo-pop-iter", "dpo-pop-random"]
# The controls the paper lacks, one of each per PoP sampler (keyed by its PoP method): vanilla DPO given
# that sampler's step count, and that sampler's PoP pairs without the margin.
STEPS_MATCHED_CONTROLS = {
    "dpo-pop-iter": "dpo-steps-matched-iter",
    "dpo-pop-random": "dpo-steps-matched-random",
}
NOMARGIN_CONTROLS = {"dpo-pop-iter": "dpo-pop-nomargin-iter", "dpo-pop-random": "dpo-pop-nomargin-random"}
NOMARGIN_METHOD = "dpo-pop-nomargin"  # the preset the no-margin controls train
# DPO-PoP-random's, the paper's generative winner: the controls the claims about it name.
STEPS_MATCHED = STEPS_MATCHED_CONTROLS["dpo-pop-random"]
NOMARGIN = NOMARGIN_CONTROLS["dpo-pop-random"]
# The positive control: DPO with the oracle margin oracle_scale * (r*(chosen) - r*(rejected)).
ORACLE = "dpo-margin-oracle"
ORACLE_METHOD = "dpo-margin-column"  # the preset it trains: the margin is the data's margin column
CONTROLS = [*STEPS_MATCHED_CONTROLS.values(), *NOMARGIN_CONTROLS.values(), ORACLE]
# The default pre-registered contrasts (claim ids of testbed/claims.py and testbed/frontier.py): the
# questions the testbed exists to answer, fixed before any run. First the positive controls that must be
# detected before any margin verdict (the oracle margin's effect); then the PoP margin's effect at matched
# KL and in Spearman, for each sampler; the paper's two headline claims; the steps controls.
PREREGISTERED = [
    "oracle-spearman",
    "kl-oracle@final",
    "kl-margin@final",
    "kl-margin-iter@final",
    "nomargin-spearman",
    "nomargin-iter-spearman",
    "random-beats-dpo",
    "acc-best",
    "steps-winrate",
    "steps-acc",
]


@dataclass
class ModelSettings:
    hidden_size: int = help_field(64, help="Hidden size of the tiny random Llama (random:tiny-llama).")
    layers: int = help_field(2, help="Transformer layers of the tiny Llama.")
    vocab_size: int = help_field(
        1024, help="Upper bound of the byte-level BPE vocabulary trained on the training texts."
    )
    seed: int = help_field(0, help="Initialisation seed of the model (and of SFT's data order).")
    name_or_path: str = help_field(
        "",
        help="A pretrained instruction model instead of the tiny random Llama (the real-model track, e.g. "
        "smollm2-135m-instruct): no SFT stage, it is the initial policy and the reference.",
    )
    lora: bool = help_field(False, help="Train LoRA adapters (rank lora_r) instead of every weight.")
    lora_r: int = help_field(16, help="LoRA rank when lora is on (alpha = 2 r).")
    lora_last_layers: int = help_field(
        0, help="LoRA adapters in the last N transformer blocks only (0: every block; lora.last_layers)."
    )


@dataclass
class SFTSettings:
    learning_rate: float = help_field(3e-3, help="Peak learning rate of SFT (cosine schedule, no warmup).")
    epochs: float = help_field(3.0, help="Epochs over the chosen responses: the model starts from random.")
    batch_size: int = help_field(16, help="Examples per optimiser step.")


@dataclass
class PreferenceSettings:
    learning_rate: float = help_field(
        3e-4,
        help="Peak learning rate of every preference method (settled with beta and epochs on validation "
        "prompts: docs/testbed.md, 'The regime').",
    )
    batch_size: int = help_field(16, help="Examples (preferences or PoP pairs) per optimiser step.")
    epochs: float = help_field(
        2.0,
        help="Epochs over each method's examples (the paper: 1; here 2 so that reward margins reach "
        "the margins' scale: docs/testbed.md).",
    )
    beta: float = help_field(
        1.0,
        help="DPO's beta (the paper: 0.1, for replies of hundreds of tokens; the testbed's replies of about "
        "10 tokens need 1 for implicit reward margins on the scale of the margins: docs/testbed.md).",
    )
    margin: float = help_field(DEFAULT_MARGIN, help="The constant margin of dpo-margin (the paper: 1).")
    max_margin: float = help_field(
        DEFAULT_MAX_MARGIN, help="M_max, the clip of PoP margins (Eq. 7; the paper: 10)."
    )
    warmup_ratio: float = help_field(0.03, help="Warmup fraction (the paper's Table 6).")
    weight_decay: float = help_field(0.05, help="AdamW weight decay (the paper's Table 6).")
    target_memory: float = help_field(
        0.05,
        help="Polyak target memory as a fraction of a PoP run: tau = 1 / (target_memory * PoP steps), so "
        "the target lags the policy by the same share of training whatever the run's length.",
    )
    save_steps: int = help_field(100, help="Checkpoint every N steps, so an interrupted run resumes inside.")


@dataclass
class PoPSettings:
    k: float = help_field(2.0, help="PoP data multiplier: k * |D_pref| pairs (the paper: 2).")
    min_gap: float = help_field(
        1.0,
        help="Smallest margin gap of a PoP pair, on the true margins when judged (the paper: 1, on scores).",
    )
    noise: float = help_field(
        0.0,
        help="Injected PoP label noise: flip probability (Appendix F; main runs: 0), on top of the judge's.",
    )
    judged: bool = help_field(
        True,
        help="Testbed: PoP labels are the annotators' judgements of the true margins (task.judge_noise), "
        "pairs drawn on the true margins, passed to training as a label file (pop_labels); false: pairs "
        "built from the score margins, as the paper does. Real data (data=...) has no true margins: scores.",
    )


@dataclass
class GenerationSettings:
    max_new_tokens: int = help_field(24, help="Longest reply sampled for the win-rate evaluation.")
    temperature: float = help_field(0.7, help="Sampling temperature (0: greedy).")
    batch_size: int = help_field(100, help="Prompts per generation batch.")


@dataclass
class CurveSettings:
    every: int = help_field(
        1,
        help="Save a snapshot every N optimiser steps for the training curves and the reward-KL frontier "
        "(the same spacing in every run; 0: final models only, no frontier).",
    )
    screen_every: int = help_field(
        10,
        help="Screen the KL of every Nth snapshot first; snapshots between two screened ones are screened "
        "(by bisection) only where KL grows faster than max_ratio allows.",
    )
    screen_prompts: int = help_field(
        64,
        help="Test prompts whose replies estimate each snapshot's KL cheaply, to choose which to evaluate.",
    )
    max_ratio: float = help_field(
        1.5,
        help="Evaluated checkpoints are spaced by screened KL: the next one is the last snapshot before KL "
        "exceeds max_ratio times (and min_gap nats beyond) the previous one's.",
    )
    min_gap: float = help_field(0.1, help="Smallest KL step (nats) between evaluated checkpoints.")
    max_kl: float = help_field(
        10.0,
        help="Beyond this KL (nats) only the final model is evaluated and KL is not screened densely: the "
        "budgets compared lie far below (vanilla DPO ends near 2), and past it runs have collapsed into "
        "degenerate text, so checkpoints there would cost evaluations for the picture alone.",
    )
    budget_fractions: list[float] = help_field(
        default_factory=lambda: [0.25, 0.5, 0.75],
        help="KL budgets of the matched-KL table besides vanilla DPO's final KL, as fractions of the common "
        "range (the smallest largest-KL of any run's curve), so they lie inside every curve.",
    )


@dataclass
class TuningSettings:
    learning_rate_factors: list[float] = help_field(
        default_factory=list,
        help="Fair tuning (off when empty): every method and control is also trained at these multiples of "
        "preference.learning_rate, e.g. [0.5, 1, 2], and each method's setting is picked on the validation "
        "prompts (task.validation_prompts), never on the test ones.",
    )


@dataclass
class SweepSettings:
    k: list[float] = help_field(
        default_factory=list, help="Extra data multipliers for the PoP methods (Appendix E), e.g. [1, 4]."
    )
    noise: list[float] = help_field(
        default_factory=list,
        help="PoP label-noise levels for the PoP methods (Appendix F), e.g. [0.1, 0.3, 0.5].",
    )
    methods: list[str] = help_field(
        default_factory=lambda: list(POP_METHODS), help="Methods the sweeps train."
    )


@dataclass
class ReproduceConfig:
    """``popalign reproduce``: the paper's pipeline on the testbed, end to end, resumable."""

    output_dir: str = help_field("runs/reproduce", help="Everything goes here; a rerun resumes from it.")
    seeds: list[int] = help_field(
        default_factory=lambda: [0, 1, 2, 3, 4],
        help="Seeds of data order, PoP pairs and sampling, one run each: the unit of replication.",
    )
    methods: list[str] = help_field(
        default_factory=lambda: list(PAPER_METHODS), help="The paper's methods to run (dpo is the baseline)."
    )
    controls: list[str] = help_field(
        default_factory=lambda: list(CONTROLS), help=f"Controls to run: {', '.join(CONTROLS)} (or [])."
    )
    task: TaskSpec = field(default_factory=TaskSpec)
    model: ModelSettings = field(default_factory=ModelSettings)
    sft: SFTSettings = field(default_factory=SFTSettings)
    preference: PreferenceSettings = field(default_factory=PreferenceSettings)
    pop: PoPSettings = field(default_factory=PoPSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    curve: CurveSettings = field(default_factory=CurveSettings)
    tuning: TuningSettings = field(default_factory=TuningSettings)
    sweeps: SweepSettings = field(default_factory=SweepSettings)
    data: str = help_field(
        "",
        help="Real preferences (a folder with train and test splits and scores) instead of the testbed's "
        "task: the real-model track. Without a ground-truth reward there is no generative evaluation, so "
        "only discriminative claims are judged.",
    )
    train_rows: int | None = help_field(None, help="With data: the first N training preferences (null: all).")
    test_rows: int | None = help_field(None, help="With data: the first N test preferences (null: all).")
    folds: int = help_field(
        0,
        help="With data: K-fold cross-fitting (0: off, train on train and score test). K >= 2 pools the "
        "train and test rows, splits them by prompt into K folds (fold_seed), trains every run on K - 1 "
        "folds and scores the held-out one, so each row is scored out of fold once per seed "
        "(testbed/crossfit.py).",
    )
    fold_seed: int = help_field(
        0, help="Seed of the prompts' assignment to folds (the same folds for every seed and run)."
    )
    train_settings: list[str] = help_field(
        default_factory=list,
        help="Extra popalign train key=value settings for every preference run, e.g. "
        "[training.bf16=true, training.gradient_checkpointing=true] on a GPU.",
    )
    max_length: int = help_field(64, help="Longest prompt + response in tokens (the task needs about 40).")
    max_prompt_length: int = help_field(32, help="Longest prompt in tokens.")
    bootstrap: int = help_field(1000, help="Bootstrap resamples of every interval and verdict.")
    threads: int | None = help_field(
        1,
        help="torch CPU threads (None: torch's default, all cores). 1: the tiny model gains nothing from "
        "more, and one thread cannot stall when other processes compete for the cores.",
    )
    workers: int = help_field(
        2,
        help="Worker processes training runs side by side (each run as soon as its seed's vanilla DPO is "
        "done), each with `threads` torch threads (1: all in this process, one after another). Results do "
        "not depend on it.",
    )
    compare_data: str = help_field(
        "../shared/data/ultrafeedback-binarized-sample",
        help="UltraFeedback preferences whose margins the report compares with the testbed's ('' to skip).",
    )
    progress: bool = help_field(True, help="Show progress bars.")
    preregistered: list[str] = help_field(
        default_factory=lambda: list(PREREGISTERED),
        help="The primary contrasts, fixed before the run: claim ids, with @budget for matched-KL claims "
        "(final: vanilla DPO's final KL; rangeNN: NN% of the common range). The report lists them first and "
        "Holm-adjusts them as their own family; every other verdict is exploratory.",
    )

    @property
    def generative(self) -> bool:
        """Whether replies are judged: only the testbed's task has a ground-truth reward to judge them."""
        return not self.data

    @property
    def judged_pop(self) -> bool:
        """Whether PoP labels are the annotators' judgements of the true margins (the testbed's only)."""
        return self.generative and self.pop.judged

    def validate(self) -> None:
        self.task.validate()
        if self.data and self.tuning.learning_rate_factors:
            raise ConfigError("tuning needs the testbed's validation prompts; it does not run with data")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: each seed once, got {self.seeds}")
        if BASELINE not in self.methods:
            raise ConfigError("methods must include dpo: it is the baseline of the win rates")
        for m in [*self.methods, *self.sweeps.methods]:
            if m not in PAPER_METHODS:
                raise ConfigError(f"methods: {m!r} is not one of {', '.join(PAPER_METHODS)}")
        for c in self.controls:
            if c not in CONTROLS:
                raise ConfigError(f"controls: {c!r} is not one of {', '.join(CONTROLS)}")
        if self.folds and (self.folds < 2 or not self.data):
            raise ConfigError(f"folds: 0 (off) or at least 2 with data=..., got {self.folds}")
        if self.folds and (self.train_rows is not None or self.test_rows is not None):
            raise ConfigError("folds pools every row of both splits: leave train_rows and test_rows null")
        if self.data and ORACLE in self.controls:
            raise ConfigError(
                f"controls: {ORACLE} needs the testbed's true rewards; it does not run with data"
            )
        if any(k <= 0 for k in self.sweeps.k) or any(not 0 <= e <= 1 for e in self.sweeps.noise):
            raise ConfigError("sweeps.k must be positive and sweeps.noise in [0, 1]")
        factors = self.tuning.learning_rate_factors
        if factors and (self.task.validation_prompts < 2 or any(f <= 0 for f in factors)):
            raise ConfigError(
                "tuning.learning_rate_factors needs positive factors and task.validation_prompts >= 2: "
                "settings are picked on validation prompts, never on the test ones"
            )
        c = self.curve
        if (
            c.every < 0
            or c.screen_every < 1
            or c.screen_prompts < 2
            or c.max_ratio <= 1
            or c.min_gap < 0
            or c.max_kl <= 0
        ):
            raise ConfigError(
                "curve.every must be >= 0, curve.screen_every >= 1, curve.screen_prompts >= 2, "
                "curve.max_ratio > 1, curve.min_gap >= 0, curve.max_kl > 0"
            )
        if any(not 0 < f <= 1 for f in c.budget_fractions):
            raise ConfigError("curve.budget_fractions must lie in (0, 1]")
        if self.max_prompt_length >= self.max_length:
            raise ConfigError("max_prompt_length must be smaller than max_length")
