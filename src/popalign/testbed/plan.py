"""What ``popalign reproduce`` trains: one :class:`RunSpec` per (method, setting), and each run's settings.

Every run is an ordinary ``popalign train`` configuration (:class:`~popalign.train.config.TrainConfig`) built
from ``key=value`` overrides, so the testbed exercises exactly the code that trains real models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from popalign.testbed.settings import BASELINE, NOMARGIN, STEPS_MATCHED, ReproduceConfig


@dataclass(frozen=True)
class RunSpec:
    """One trained model per seed.

    Attributes:
        name: folder name and label (``dpo-pop-iter``, ``dpo-steps-matched``, ``dpo-pop-random_k4``...).
        method: the :mod:`popalign.methods` preset it trains.
        group: ``paper`` (Section 4.2), ``control``, ``sweep-k`` (Appendix E) or ``sweep-noise`` (Appendix F).
        k, noise: the PoP data multiplier and label noise (used by PoP samplers only).
        strategy: PoP sampling strategy for presets that do not fix one (the no-margin control).
        matched_steps: train for as many optimiser steps as DPO-PoP-random (the steps control).
        lr_factor: multiple of ``preference.learning_rate`` (tuning runs, group ``tune``).
        base: the run this one is a tuning variant of (its own name otherwise).
    """

    name: str
    method: str
    group: str
    k: float
    noise: float
    strategy: str | None = None
    matched_steps: bool = False
    lr_factor: float = 1.0
    base: str = ""

    @property
    def uses_pop(self) -> bool:
        from popalign.methods import get_method

        return get_method(self.method).uses_pop_pairs

    @property
    def family(self) -> str:
        """The run this one varies (itself unless it is a tuning variant)."""
        return self.base or self.name


def _number(x: float) -> str:
    return f"{x:g}".replace(".", "p")


def plan_runs(cfg: ReproduceConfig) -> list[RunSpec]:
    """The runs of one seed, vanilla DPO first (the others are judged against its replies)."""
    k, noise = cfg.pop.k, cfg.pop.noise
    runs = [RunSpec(m, m, "paper", k, noise) for m in cfg.methods]
    runs.sort(key=lambda r: r.name != BASELINE)
    if STEPS_MATCHED in cfg.controls:
        runs.append(RunSpec(STEPS_MATCHED, "dpo", "control", k, noise, matched_steps=True))
    if NOMARGIN in cfg.controls:
        runs.append(RunSpec(NOMARGIN, NOMARGIN, "control", k, noise, strategy=cfg.pop.nomargin_strategy))
    main = list(runs)
    for f in cfg.tuning.learning_rate_factors:
        if f != 1:
            runs += [
                replace(r, name=f"{r.name}_lr{_number(f)}", group="tune", lr_factor=f, base=r.name)
                for r in main
            ]
    for method in cfg.sweeps.methods:
        runs += [
            RunSpec(f"{method}_k{_number(v)}", method, "sweep-k", v, noise) for v in cfg.sweeps.k if v != k
        ]
        runs += [
            RunSpec(f"{method}_noise{_number(v)}", method, "sweep-noise", k, v)
            for v in cfg.sweeps.noise
            if v != noise
        ]
    return runs


@dataclass(frozen=True)
class Layout:
    """Where everything of one reproduction lives under ``output_dir`` (real data stays where it is)."""

    root: Path
    source: Path | None = None

    @classmethod
    def of(cls, cfg: ReproduceConfig) -> Layout:
        return cls(Path(cfg.output_dir), Path(cfg.data) if cfg.data else None)

    @property
    def data(self) -> Path:
        return self.source or self.root / "data"

    @property
    def sft(self) -> Path:
        return self.root / "sft"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def run(self, name: str, seed: int) -> Path:
        return self.root / "runs" / name / f"seed-{seed}"

    def origin(self, seed: int) -> Path:
        """Step 0 of every training curve of ``seed``: the SFT model's replies sampled with that seed."""
        return self.root / "origin" / f"seed-{seed}"


def pop_strategy(spec: RunSpec) -> str:
    """The PoP sampling strategy a run uses."""
    from popalign.methods import get_method

    return get_method(spec.method).pop_strategy or spec.strategy or "random"


def pop_pairs(cfg: ReproduceConfig, table, spec: RunSpec, seed: int) -> int:
    """How many PoP pairs the trainer will build for ``spec`` (the same builder, the same seed)."""
    from popalign.pop.build import PoPSpec, build_pop_for_table

    pop = PoPSpec(strategy=pop_strategy(spec), k=spec.k, min_gap=cfg.pop.min_gap, noise=spec.noise, seed=seed)
    return len(build_pop_for_table(table, pop))


def optimiser_steps(cfg: ReproduceConfig, examples: int) -> int:
    """Steps of ``epochs`` passes over ``examples`` at the configured batch size (as the Trainer counts)."""
    return max(1, math.ceil(cfg.preference.epochs * math.ceil(examples / cfg.preference.batch_size)))


def run_steps(cfg: ReproduceConfig, table, spec: RunSpec, seed: int) -> int:
    """Optimiser steps of a run: one pass over its examples, or DPO-PoP-random's count for the control."""
    if spec.matched_steps:
        matched = RunSpec("matched", "dpo-pop-random", "control", spec.k, spec.noise)
        return optimiser_steps(cfg, pop_pairs(cfg, table, matched, seed))
    if spec.uses_pop:
        return optimiser_steps(cfg, pop_pairs(cfg, table, spec, seed))
    return optimiser_steps(cfg, len(table))


def polyak_tau(cfg: ReproduceConfig, steps: int) -> float:
    """``tau = 1 / (target_memory * steps)``: the target remembers the same share of every run."""
    return min(1.0, 1.0 / max(cfg.preference.target_memory * steps, 1.0))


def _common(cfg: ReproduceConfig, data: Path) -> list[str]:
    return [
        f"data.path={data}",
        f"tokenize.max_length={cfg.max_length}",
        f"tokenize.max_prompt_length={cfg.max_prompt_length}",
        "training.gradient_accumulation_steps=1",
        "training.lr_scheduler_type=cosine",
        "training.report_to=none",
        "training.progress=false",
        # Logged at every snapshot, so each curve checkpoint has the margins of the steps just before it.
        f"training.logging_steps={cfg.curve.every or 10}",
        "training.save_total_limit=1",
        f"training.torch_threads={cfg.threads if cfg.threads else 'null'}",
    ]


def _model(cfg: ReproduceConfig) -> list[str]:
    """The model of every preference run's settings besides its start (LoRA on a pretrained model)."""
    m = cfg.model
    out = [f"lora.enabled={str(m.lora).lower()}"]
    if m.lora:
        out += [f"lora.r={m.lora_r}", f"lora.alpha={2 * m.lora_r}"]
    if cfg.train_rows:
        out.append(f"data.limit={cfg.train_rows}")
    return out


def sft_overrides(cfg: ReproduceConfig, layout: Layout) -> list[str]:
    """``popalign sft`` settings: a tiny random Llama fine-tuned on the chosen responses."""
    m, s = cfg.model, cfg.sft
    return [
        *_common(cfg, layout.data),
        f"output_dir={layout.sft}",
        "model.name_or_path=random:tiny-llama",
        f"model.tiny_hidden_size={m.hidden_size}",
        f"model.tiny_layers={m.layers}",
        f"model.tiny_vocab_size={m.vocab_size}",
        f"model.seed={m.seed}",
        f"training.learning_rate={s.learning_rate}",
        f"training.num_train_epochs={s.epochs}",
        f"training.per_device_train_batch_size={s.batch_size}",
        "training.warmup_ratio=0",
        "training.weight_decay=0",
        f"training.seed={m.seed}",
        f"training.save_steps={cfg.preference.save_steps}",
    ]


def train_overrides(
    cfg: ReproduceConfig, layout: Layout, spec: RunSpec, seed: int, steps: int, sft_model: str
) -> list[str]:
    """``popalign train`` settings of one run and seed (``steps`` from :func:`run_steps`)."""
    p = cfg.preference
    out = [
        *_common(cfg, layout.data),
        f"method={spec.method}",
        f"output_dir={layout.run(spec.name, seed)}",
        f"model.name_or_path={sft_model}",
        f"reference.cache_dir={layout.cache}",
        f"loss.beta={p.beta}",
        f"loss.margin={p.margin}",
        f"loss.max_margin={p.max_margin}",
        f"target.tau={polyak_tau(cfg, steps)}",
        f"pop.k={spec.k}",
        f"pop.min_gap={cfg.pop.min_gap}",
        f"pop.noise={spec.noise}",
        f"pop.seed={seed}",
        f"training.learning_rate={p.learning_rate * spec.lr_factor}",
        f"training.per_device_train_batch_size={p.batch_size}",
        f"training.num_train_epochs={p.epochs}",
        f"training.warmup_ratio={p.warmup_ratio}",
        f"training.weight_decay={p.weight_decay}",
        f"training.seed={seed}",
        f"training.save_steps={p.save_steps}",
        *(_model(cfg) if cfg.model.name_or_path else []),
        *cfg.train_settings,
    ]
    if spec.strategy:
        out.append(f"pop.strategy={spec.strategy}")
    if spec.matched_steps:
        out.append(f"training.max_steps={steps}")
    return out
