"""Size the cross-fitted real-model study: seconds per step of each arm kind, projected wall time.

    python -m benchmarks real-study [--config configs/testbed/real.yaml] [--steps 3] [--warmup 1]
        [--rows 48] [--eval-rows 16] [--json FILE] [key=value ...]

Drives the study's own code path (:mod:`popalign.testbed.plan`, :mod:`popalign.testbed.crossfit`): the
preset's folds are written into a temporary folder, and one run of each arm kind trains ``warmup + steps``
optimiser steps on fold 0's training rows with exactly the study's settings (``training.max_steps`` and
``data.limit=rows`` added, so that the reference precompute before training stays short). Arm kinds cost
alike per step: vanilla DPO and step-matched DPO (preference pairs); PoP with a margin (iterative and random:
the weak pair's extra no-grad forward through the target adapter); PoP without margin. Scoring is timed
on ``eval-rows`` held-out rows with no reference cache (policy and reference), and its per-row cost halved
for the policy alone (the study caches the reference). The projection counts every fold-run's real step
count (:func:`popalign.testbed.plan.run_steps` on its fold), every scored row and every reference
precompute (each pooled row is in K - 1 training sets and one test set).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import StepTimer
from benchmarks.train_step import ROOT, machine, write_report

PRESET = "configs/testbed/real.yaml"


def _kind(spec) -> str:
    from popalign.methods import get_method

    method = get_method(spec.method)
    if not spec.uses_pop:
        return "pairs"
    return "pop-margin" if method.needs_weak_pair else "pop-nomargin"


def _time_steps(cfg, fold, spec, rows: int, warmup: int, steps: int, out: Path) -> dict[str, float]:
    """Wall and CPU (this process, all threads) seconds per optimiser step."""
    from popalign.config import load_config
    from popalign.data.load import load_preferences
    from popalign.testbed.plan import run_steps, train_overrides
    from popalign.train.config import TrainConfig
    from popalign.train.run import run_train

    table = load_preferences(str(fold.data), split="train", tie_policy="keep", limit=rows)[0]
    overrides = train_overrides(cfg, fold, spec, 0, run_steps(cfg, table, spec, 0), cfg.model.name_or_path)
    overrides += [
        f"output_dir={out / spec.name}",
        f"data.limit={rows}",
        f"training.max_steps={warmup + steps}",
    ]
    overrides.append("training.save_steps=100000")
    timer = StepTimer()
    run_train(load_config(TrainConfig, None, overrides), callbacks=[timer.callback])
    return {
        "wall": sum(timer.intervals[warmup : warmup + steps]) / steps,
        "cpu": sum(timer.cpu_intervals[warmup : warmup + steps]) / steps,
    }


def _time_scoring(fold, model: Path, rows: int, out: Path) -> dict[str, float]:
    """Wall and CPU seconds per held-out row scored by a timed run's model and its reference (no cache),
    at the lengths the run was trained with (its saved settings), as the study scores its runs."""
    from popalign.eval.pipeline import BootstrapOptions, ScoringOptions, run_discriminative

    start, cpu = time.perf_counter(), time.process_time()
    run_discriminative(
        [str(model)],
        str(fold.data),
        split="test",
        limit=rows,
        out=str(out / "score"),
        names=["policy"],
        scoring=ScoringOptions(batch_size=8, device="cpu"),
        boot=BootstrapOptions(n_resamples=10, seed=0),
        progress=False,
        plots=False,
    )
    return {"wall": (time.perf_counter() - start) / rows, "cpu": (time.process_time() - cpu) / rows}


def project(cfg, layout, per_step: dict[str, float], per_row: float) -> dict[str, Any]:
    """The whole study's seconds: every fold-run's steps, scored rows and reference precomputes."""
    from popalign.data.load import load_preferences
    from popalign.testbed.crossfit import fold_layouts
    from popalign.testbed.plan import plan_runs, run_steps

    folds = fold_layouts(cfg, layout)
    tables = [load_preferences(str(f.data), split="train", tie_policy="keep")[0] for f in folds]
    rows = sum(len(load_preferences(str(f.data), split="test", tie_policy="keep")[0]) for f in folds)
    steps: dict[str, int] = {}
    train = 0.0
    for spec in plan_runs(cfg):
        n = sum(run_steps(cfg, t, spec, seed) for seed in cfg.seeds for t in tables)
        steps[spec.name] = n
        train += n * per_step[_kind(spec)]
    runs = len(plan_runs(cfg)) * len(cfg.seeds)
    scoring = runs * rows * per_row / 2
    reference = cfg.folds * rows * per_row / 2
    total = train + scoring + reference
    return {
        "steps": steps,
        "train_seconds": train,
        "scoring_seconds": scoring,
        "reference_seconds": reference,
        "total_seconds": total,
        "total_hours": total / 3600,
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    from popalign.config import load_config
    from popalign.testbed.crossfit import ensure_folds, fold_layouts
    from popalign.testbed.plan import Layout, plan_runs
    from popalign.testbed.settings import ReproduceConfig

    parser = argparse.ArgumentParser(prog="python -m benchmarks real-study", description=__doc__)
    parser.add_argument("--config", default=str(ROOT / PRESET))
    parser.add_argument("--steps", type=int, default=3, help="timed optimiser steps per arm kind")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    parser.add_argument("--rows", type=int, default=48, help="training rows the timed runs read")
    parser.add_argument("--eval-rows", type=int, default=16, help="held-out rows scored for timing")
    parser.add_argument("--json", default=None, help="where to write the result (runs/bench/...)")
    parser.add_argument("overrides", nargs="*", help="key=value settings of the preset")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="real-study-") as tmp:
        out = Path(tmp)
        cfg = load_config(ReproduceConfig, args.config, [*args.overrides, f"output_dir={out / 'study'}"])
        if not cfg.folds:
            parser.error("the preset has no folds: this sizes the cross-fitted study")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        layout = Layout.of(cfg)
        ensure_folds(cfg, layout)
        fold = fold_layouts(cfg, layout)[0]
        per_step: dict[str, dict[str, float]] = {}
        for spec in plan_runs(cfg):
            kind = _kind(spec)
            if kind not in per_step:
                per_step[kind] = _time_steps(cfg, fold, spec, args.rows, args.warmup, args.steps, out)
                print(f"{kind} ({spec.name}): {per_step[kind]}", flush=True)
        first = plan_runs(cfg)[0]  # vanilla DPO: its final model is saved like a study run's
        per_row = _time_scoring(fold, out / first.name, args.eval_rows, out)
        print(f"scoring (policy + reference) per row: {per_row}", flush=True)
        # Wall seconds as measured (on a shared machine), and CPU seconds over the threads: what the wall
        # time would be with the threads' cores to this process alone.
        threads = cfg.threads or torch.get_num_threads()
        projection = {
            "measured": project(cfg, layout, {k: v["wall"] for k, v in per_step.items()}, per_row["wall"]),
            "idle": project(
                cfg, layout, {k: v["cpu"] / threads for k, v in per_step.items()}, per_row["cpu"] / threads
            ),
        }
    report = {
        "machine": {**machine(), "load_average_end": list(os.getloadavg())},
        "config": args.config,
        "overrides": args.overrides,
        "settings": {
            "max_length": cfg.max_length,
            "batch_size": cfg.preference.batch_size,
            "threads": cfg.threads,
            "seeds": cfg.seeds,
            "folds": cfg.folds,
        },  # fmt: skip
        "seconds_per_step": per_step,
        "seconds_per_scored_row": per_row,
        "projection": projection,
    }
    print(json.dumps(report["projection"], indent=2))
    write_report(report, args.json, "real_study")
    return 0
