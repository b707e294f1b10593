"""What ``popalign reproduce`` trains: one :class:`RunSpec` per (method, setting), and each run's settings.

Every run is an ordinary ``popalign train`` configuration (:class:`~popalign.train.config.TrainConfig`) built
from ``key=value`` overrides, so the testbed exercises exactly the code that trains real models.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from popalign.io import atomic_write_json
from popalign.testbed.settings import (
    BASELINE,
    NOMARGIN_CONTROLS,
    NOMARGIN_METHOD,
    ORACLE,
    ORACLE_METHOD,
    STEPS_MATCHED_CONTROLS,
    ReproduceConfig,
)

if TYPE_CHECKING:
    import numpy as np

    from popalign.pop.build import PoPSpec


@dataclass(frozen=True)
class RunSpec:
    """One trained model per seed.

    Attributes:
        name: folder name and label (``dpo-pop-iter``, ``dpo-steps-matched-iter``, ``dpo-pop-random_k4``...).
        method: the :mod:`popalign.methods` preset it trains.
        group: ``paper`` (Section 4.2), ``control``, ``sweep-k`` (Appendix E) or ``sweep-noise`` (Appendix F).
        k, noise: the PoP data multiplier and injected label noise (used by PoP samplers only).
        strategy: PoP sampling strategy for presets that do not fix one (the no-margin controls).
        matched_to: train for as many optimiser steps as this PoP method (the steps controls; "": its own).
        lr_factor: multiple of ``preference.learning_rate`` (tuning runs, group ``tune``).
        base: the run this one is a tuning variant of (its own name otherwise).
    """

    name: str
    method: str
    group: str
    k: float
    noise: float
    strategy: str | None = None
    matched_to: str = ""
    lr_factor: float = 1.0
    base: str = ""

    @property
    def uses_pop(self) -> bool:
        from popalign.methods import get_method

        return get_method(self.method).uses_pop_pairs

    def identity(self, seed: int) -> dict[str, Any]:
        """What a run's ``done.json`` records about which run and seed it is."""
        return {
            "run": self.name,
            "method": self.method,
            "group": self.group,
            "seed": seed,
            "k": self.k,
            "noise": self.noise,
        }

    @property
    def family(self) -> str:
        """The run this one varies (itself unless it is a tuning variant)."""
        return self.base or self.name


def _number(x: float) -> str:
    return f"{x:g}".replace(".", "p")


def plan_runs(cfg: ReproduceConfig) -> list[RunSpec]:
    """The runs of one seed, vanilla DPO first (the others are judged against its replies)."""
    from popalign.methods import get_method

    k, noise = cfg.pop.k, cfg.pop.noise
    runs = [RunSpec(m, m, "paper", k, noise) for m in cfg.methods]
    runs.sort(key=lambda r: r.name != BASELINE)
    for pop_method, name in STEPS_MATCHED_CONTROLS.items():
        if name in cfg.controls:
            runs.append(RunSpec(name, BASELINE, "control", k, noise, matched_to=pop_method))
    for pop_method, name in NOMARGIN_CONTROLS.items():
        if name in cfg.controls:
            strategy = get_method(pop_method).pop_strategy
            runs.append(RunSpec(name, NOMARGIN_METHOD, "control", k, noise, strategy=strategy))
    if ORACLE in cfg.controls:
        runs.append(RunSpec(ORACLE, ORACLE_METHOD, "control", k, noise))
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

    def pop_labels(self, pop: PoPSpec, task: str) -> Path:
        """The annotators' PoP label file of one sampler setting on the task data with fingerprint ``task``.

        Shared by the runs that sample alike; the name holds everything the file depends on, so a file
        made for other data or settings is never reused (and a run's fingerprint covers the name).
        """
        name = f"{pop.strategy}-k{_number(pop.k)}-gap{_number(pop.min_gap)}-noise{_number(pop.noise)}"
        return self.root / "pop_labels" / f"{name}-seed{pop.seed}-{task}.jsonl"


def pop_strategy(spec: RunSpec) -> str:
    """The PoP sampling strategy a run uses."""
    from popalign.methods import get_method

    return get_method(spec.method).pop_strategy or spec.strategy or "random"


def pop_spec(cfg: ReproduceConfig, spec: RunSpec, seed: int) -> PoPSpec:
    """The PoP sampler settings of ``spec`` and ``seed``."""
    from popalign.pop.build import PoPSpec

    return PoPSpec(
        strategy=pop_strategy(spec), k=spec.k, min_gap=cfg.pop.min_gap, noise=spec.noise, seed=seed
    )


def pop_pairs(cfg: ReproduceConfig, table, spec: RunSpec, seed: int, truth: np.ndarray | None = None) -> int:
    """How many PoP pairs ``spec`` trains on.

    With ``truth`` (the true margins) the pairs of its judged label file (:func:`ensure_pop_labels` draws
    them alike); without, the pairs the trainer builds from the score margins.
    """
    from popalign.pop.build import build_pop, build_pop_for_table

    pop = pop_spec(cfg, spec, seed)
    return len(build_pop(truth, pop) if truth is not None else build_pop_for_table(table, pop))


def ensure_pop_labels(
    cfg: ReproduceConfig, layout: Layout, spec: RunSpec, seed: int, rows: list[dict]
) -> tuple[Path, dict[str, Any]]:
    """The annotators' PoP label file of ``spec`` and ``seed`` (written once) and its summary.

    ``rows`` are the raw training records (true margins included). The summary (pairs, judge errors,
    injected flips) is written beside the file after it, so its presence means the file is complete.
    """
    from popalign.testbed.annotators import write_judged_labels

    pop = pop_spec(cfg, spec, seed)
    path = layout.pop_labels(pop, cfg.task.fingerprint())
    summary_path = path.with_suffix(".json")
    if summary_path.is_file():
        return path, json.loads(summary_path.read_text(encoding="utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = write_judged_labels(rows, pop, cfg.task.judge_noise, path)
    atomic_write_json(summary_path, summary)
    return path, summary


def optimiser_steps(cfg: ReproduceConfig, examples: int) -> int:
    """Steps of ``epochs`` passes over ``examples`` at the configured batch size (as the Trainer counts)."""
    return max(1, math.ceil(cfg.preference.epochs * math.ceil(examples / cfg.preference.batch_size)))


def run_steps(cfg: ReproduceConfig, table, spec: RunSpec, seed: int, truth: np.ndarray | None = None) -> int:
    """Optimiser steps of a run: one pass over its examples, or its PoP method's count (steps controls).

    ``truth``: the true margins when the PoP labels are judged (:func:`pop_pairs`).
    """
    if spec.matched_to:
        spec = RunSpec("matched", spec.matched_to, "control", spec.k, spec.noise)
    if spec.uses_pop:
        return optimiser_steps(cfg, pop_pairs(cfg, table, spec, seed, truth))
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
        # Logged at every screened snapshot, so each curve checkpoint has the margins of the steps before it.
        f"training.logging_steps={cfg.curve.screen_every if cfg.curve.every else 10}",
        "training.save_total_limit=1",
        f"training.torch_threads={cfg.threads if cfg.threads else 'null'}",
    ]


def _model(cfg: ReproduceConfig) -> list[str]:
    """The model of every preference run's settings besides its start (LoRA on a pretrained model)."""
    m = cfg.model
    out = [f"lora.enabled={str(m.lora).lower()}"]
    if m.lora:
        out += [f"lora.r={m.lora_r}", f"lora.alpha={2 * m.lora_r}"]
        if m.lora_last_layers:  # only when set, so that finished runs keep their fingerprints
            out.append(f"lora.last_layers={m.lora_last_layers}")
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
    cfg: ReproduceConfig,
    layout: Layout,
    spec: RunSpec,
    seed: int,
    steps: int,
    sft_model: str,
    pop_labels: Path | None = None,
) -> list[str]:
    """``popalign train`` settings of one run and seed (``steps`` from :func:`run_steps`).

    ``pop_labels``: the PoP label file the run trains on (:func:`ensure_pop_labels`), if judged.
    """
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
    if spec.uses_pop:
        # Also where a preset fixes it: with a label file the trainer keeps pop.strategy as given, and the
        # saved config.yaml should name the sampler the labels were drawn with.
        out.append(f"pop.strategy={pop_strategy(spec)}")
    if pop_labels is not None:
        out.append(f"pop_labels={pop_labels}")
    if spec.matched_to:
        out.append(f"training.max_steps={steps}")
    return out
