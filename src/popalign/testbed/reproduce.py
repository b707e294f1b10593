"""``popalign reproduce``: the paper's pipeline on the testbed, end to end, resumable.

Data -> SFT -> for each seed, every method (vanilla DPO first) trained by
:func:`popalign.train.run.run_train`, then evaluated by the functions behind ``popalign eval``
(discriminative metrics on the test preferences, sampled replies to the test prompts, judged by ``r*``
against vanilla DPO's) -> report with verdicts.

Resuming: each stage ends by writing a ``done.json`` marker atomically (data: ``task.json``). A rerun skips
every stage whose marker exists and whose settings fingerprint matches, and the trainer resumes an
unfinished run from its newest checkpoint. Changed settings on a finished stage are an error, never a
silent mix of old and new results.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from popalign.config import config_to_dict, load_config, save_config
from popalign.errors import PopalignError
from popalign.io import atomic_write_json
from popalign.testbed import evaluation as ev
from popalign.testbed import tuning
from popalign.testbed.curves import (
    curve_steps,
    snapshot_callback,
)
from popalign.testbed.plan import (
    Layout,
    RunSpec,
    ensure_pop_labels,
    plan_runs,
    run_steps,
    sft_overrides,
    train_overrides,
)
from popalign.testbed.settings import BASELINE, ReproduceConfig

DONE = "done.json"
TRAINED = "trained.json"
STARTED = "started.json"
LOG = "log.txt"

RunHook = Callable[[RunSpec, int], None]


# Where things are, and how they are displayed or parallelised, is not what they are: moving an output
# folder or changing threads must not invalidate its finished runs.
_IGNORED = ("output_dir", "data.path", "model.name_or_path", "reference.cache_dir", "training.progress")
_IGNORED += ("training.torch_threads",)
# Files under output_dir: their name says what they hold (the settings they were made with), not their folder.
_NAME_ONLY = ("pop_labels",)


def _kept(override: str) -> str:
    key, _, value = override.partition("=")
    return f"{key}={Path(value).name}" if key in _NAME_ONLY else override


def settings_fingerprint(overrides: list[str], **extra: Any) -> str:
    """A short hash of the ``key=value`` settings a stage was made with (paths left out) and ``extra``.

    Only what reproduce sets is hashed, so a new setting with a default elsewhere in popalign does not
    invalidate finished runs.
    """
    kept = sorted(_kept(o) for o in overrides if o.split("=", 1)[0] not in _IGNORED)
    text = json.dumps({"settings": kept, **extra}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_marker(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _check_marker(marker: dict[str, Any] | None, fingerprint: str, what: str, folder: Path) -> bool:
    """True when the stage is finished with these settings; an error when it was made with others."""
    if marker is None:
        return False
    if marker.get("fingerprint") != fingerprint:
        raise PopalignError(
            f"{folder}: {what} was made with other settings; use another output_dir or delete that folder"
        )
    return True


@contextlib.contextmanager
def _quiet(log_path: Path | None) -> Iterator[None]:
    """Send a stage's printed output to its log file; silence transformers' own progress bars."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        if log_path is None:
            yield
        else:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a", encoding="utf-8") as log, contextlib.redirect_stdout(log):
                yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _step_bar(desc: str, enabled: bool):
    """A TrainerCallback showing the optimiser steps of the current run under the overall bar."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class StepBar(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(
                total=state.max_steps, initial=state.global_step, desc=desc, leave=False, disable=not enabled
            )

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return StepBar()


def load_preferences_or_fail(path: str, split: str, limit: int | None = None):
    """The preferences of ``split`` (ties kept: they are ordered pairs with margin 0)."""
    from popalign.data.load import load_preferences

    with _quiet(None):
        return load_preferences(path, split=split, tie_policy="keep", limit=limit)[0]


def ensure_data(cfg: ReproduceConfig, layout: Layout) -> dict[str, Any]:
    """The testbed's preference files (made once; a different task in the folder is an error)."""
    from popalign.testbed.annotators import annotator_statistics
    from popalign.testbed.make_data import make_dataset, read_split

    if cfg.data:  # the real-model track reads its preferences where they are
        from popalign.testbed.crossfit import ensure_folds

        for split in ("train", "test"):
            load_preferences_or_fail(str(layout.data), split)
        if cfg.folds:
            ensure_folds(cfg, layout)
        return {"source": cfg.data}
    marker = read_marker(layout.data / "task.json")
    if _check_marker(marker, cfg.task.fingerprint(), "the task data", layout.data):
        if marker["annotators"]["pop_label_error"]["min_gap"] != cfg.pop.min_gap:
            # The same files; only the PoP statistics depend on the sampler's gap.
            rows = read_split(layout.data, "train")
            marker["annotators"] = annotator_statistics(rows, cfg.task, cfg.pop.min_gap)
            atomic_write_json(layout.data / "task.json", marker)
        return marker
    start = time.time()
    record = make_dataset(cfg.task, layout.data, cfg.pop.min_gap)
    record["seconds"] = time.time() - start
    atomic_write_json(layout.data / "task.json", record)
    return record


def ensure_sft(cfg: ReproduceConfig, layout: Layout) -> dict[str, Any]:
    """Fine-tune the tiny random Llama on the chosen responses; sample its replies for reference."""
    from popalign.train.config import SFTConfig
    from popalign.train.sft import run_sft

    if cfg.model.name_or_path:  # a pretrained instruction model needs no SFT stage
        return {"model": cfg.model.name_or_path, "mean_reward": float("nan"), "seconds": 0.0}
    overrides = sft_overrides(cfg, layout)
    sft_cfg = load_config(SFTConfig, None, [*overrides, f"training.progress={cfg.progress}"])
    fingerprint = settings_fingerprint(
        overrides, task=cfg.task.fingerprint(), generation=config_to_dict(cfg.generation)
    )
    marker = read_marker(layout.sft / DONE)
    if _check_marker(marker, fingerprint, "the SFT model", layout.sft):
        return marker
    start = time.time()
    _check_marker(read_marker(layout.sft / STARTED), fingerprint, "the SFT model", layout.sft)
    atomic_write_json(layout.sft / STARTED, {"fingerprint": fingerprint})
    with _quiet(layout.sft / LOG):
        summary = run_sft(sft_cfg)
        _drop_checkpoints(layout.sft)
        ev.evaluate(cfg, layout, layout.sft, "sft", cfg.model.seed, baseline=None)
    record = {
        "fingerprint": fingerprint,
        "model": summary["model"],
        "train": summary["metrics"],
        "mean_reward": ev.mean_reward(layout.sft / "eval" / "model_outputs.json"),
        "seconds": time.time() - start,
    }
    atomic_write_json(layout.sft / DONE, record)
    return record


def _drop_checkpoints(folder: Path) -> None:
    # The final model is saved beside them; the checkpoints only served resuming.
    for ckpt in folder.glob("checkpoint-*"):
        shutil.rmtree(ckpt, ignore_errors=True)


def ensure_run(
    cfg: ReproduceConfig, layout: Layout, spec: RunSpec, seed: int, table, sft_model: str
) -> tuple[bool, dict[str, Any]]:
    """Train and evaluate one (run, seed) unless already done; returns ``(ran_now, done record)``."""
    from popalign.testbed.annotators import true_margins
    from popalign.testbed.make_data import read_split
    from popalign.train.config import TrainConfig
    from popalign.train.run import run_train

    folder = layout.run(spec.name, seed)
    # Judged PoP labels are drawn on the true margins, which only the raw records carry.
    rows = read_split(layout.data, "train")[: cfg.train_rows] if cfg.judged_pop else None
    truth = true_margins(rows) if rows is not None else None
    steps = run_steps(cfg, table, spec, seed, truth)
    labels, label_summary = None, None
    if rows is not None and spec.uses_pop:
        labels, label_summary = ensure_pop_labels(cfg, layout, spec, seed, rows)
    overrides = train_overrides(cfg, layout, spec, seed, steps, sft_model, labels)
    train_cfg = load_config(TrainConfig, None, overrides)
    # Tuning variants are compared at the end of their epoch only; their curves would go unused.
    points = curve_steps(steps, cfg.curve.every) if spec.group != "tune" and cfg.generative else []
    validate = tuning.enabled(cfg)
    fingerprint = settings_fingerprint(
        overrides,
        generation=config_to_dict(cfg.generation),
        bootstrap=cfg.bootstrap,
        # The budgets are the report's business: changing them must not retrain anything.
        curve={
            "steps": points,
            **{k: v for k, v in config_to_dict(cfg.curve).items() if k != "budget_fractions"},
        },
        **({"validation": True} if validate else {}),
    )
    if _check_marker(read_marker(folder / DONE), fingerprint, f"run {spec.name} seed {seed}", folder):
        return False, read_marker(folder / DONE)
    start = time.time()
    with _quiet(folder / LOG):
        trained = read_marker(folder / TRAINED)
        if not _check_marker(trained, fingerprint, f"run {spec.name} seed {seed}", folder):
            # An unfinished run resumes from its checkpoints only with the settings it started with.
            _check_marker(read_marker(folder / STARTED), fingerprint, f"run {spec.name} seed {seed}", folder)
            atomic_write_json(folder / STARTED, {"fingerprint": fingerprint})
            bar = _step_bar(f"{spec.name} seed {seed}", cfg.progress)
            summary = run_train(train_cfg, callbacks=[bar, snapshot_callback(folder, points, steps)])
            _drop_checkpoints(folder)
            trained = {"fingerprint": fingerprint, "metrics": summary["metrics"], "steps": steps}
            trained["resumed_from"] = summary.get("resumed_from")
            atomic_write_json(folder / TRAINED, trained)
        baseline = None if spec.name == BASELINE else layout.run(BASELINE, seed) / "eval"
        if baseline is not None and cfg.generative and not (baseline / "model_outputs.json").is_file():
            raise PopalignError(f"{baseline}: vanilla DPO's replies are missing; it must run first")
        ev.evaluate(cfg, layout, folder, spec.name, seed, baseline)
        kept = ev.evaluate_curve_points(cfg, layout, spec, seed, points, steps, sft_model) if points else []
        if validate:
            ev.evaluate_validation(cfg, layout, folder, spec.name, seed)
    record = {
        "fingerprint": fingerprint,
        **spec.identity(seed),
        "steps": trained["steps"],
        "curve_steps": kept,
        "pop_labels": label_summary,
        "train_loss": trained["metrics"].get("train_loss"),
        "seconds": time.time() - start,
    }
    atomic_write_json(folder / DONE, record)
    return True, record


def ensure_seed_run(
    cfg: ReproduceConfig, layout: Layout, spec: RunSpec, seed: int, table, sft_model: str
) -> tuple[bool, dict[str, Any]]:
    """:func:`ensure_run`, or with ``folds`` one run per fold, then the pooled seed (testbed/crossfit.py)."""
    from popalign.testbed import crossfit

    if not cfg.folds:
        return ensure_run(cfg, layout, spec, seed, table, sft_model)
    return crossfit.ensure_crossfit_run(
        cfg,
        layout,
        spec,
        seed,
        lambda fold, fold_table: ensure_run(cfg, fold, spec, seed, fold_table, sft_model),
    )


_TABLES: dict[tuple[str, int | None], Any] = {}


def _run_job(cfg: ReproduceConfig, key: tuple[str, int]) -> list[str]:
    """One (run, seed) in a worker process; ``[run/seed-N]`` if it ran now (not resumed as done)."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    name, seed = key
    layout = Layout.of(cfg)
    sft = ensure_sft(cfg, layout)  # done by the parent: this reads its marker (or names a pretrained model)
    # A worker runs many jobs: the training preferences are read once per process.
    source = (str(layout.data), cfg.train_rows)
    if source not in _TABLES:
        _TABLES[source] = load_preferences_or_fail(str(layout.data), "train", cfg.train_rows)
    spec = {r.name: r for r in plan_runs(cfg)}[name]
    ran_now, _ = ensure_seed_run(cfg, layout, spec, seed, _TABLES[source], sft["model"])
    return [f"{name}/seed-{seed}"] if ran_now else []


def _job_label(key: tuple[str, int]) -> str:
    return f"{key[0]} seed {key[1]}"


def schedule(cfg: ReproduceConfig, runs: list[RunSpec]) -> tuple[list[tuple[str, int]], dict]:
    """Every (run, seed) in the order to start them, and what each waits for (its seed's vanilla DPO).

    Vanilla DPO of every seed comes first (the others are judged against its replies), then the rest,
    longest first (runs with PoP pairs or their step counts take about twice as long), so that the last
    jobs are short and the workers finish together.
    """

    def rank(spec: RunSpec) -> int:  # start order: baseline, then the long runs, then the short ones
        return 0 if spec.name == BASELINE else (1 if spec.uses_pop or spec.matched_to else 2)

    order = sorted(((spec, seed) for seed in cfg.seeds for spec in runs), key=lambda j: rank(j[0]))
    keys = [(spec.name, seed) for spec, seed in order]
    has_baseline = any(spec.name == BASELINE for spec in runs)
    needs = {
        (spec.name, seed): {(BASELINE, seed)} if has_baseline and spec.name != BASELINE else set()
        for spec, seed in order
    }
    return keys, needs


def reproduce(cfg: ReproduceConfig, *, on_run_done: RunHook | None = None) -> dict[str, Any]:
    """Run (or resume) the whole reproduction; returns the report paths and what ran now.

    ``on_run_done(spec, seed)`` is called after each run finished in this call (tests interrupt through it);
    it needs ``workers = 1`` (everything in this process).
    """
    import dataclasses

    import torch
    from tqdm.auto import tqdm

    from popalign.testbed.report import write_report
    from popalign.testbed.verdict_report import check_preregistered
    from popalign.testbed.workers import run_jobs

    check_preregistered(cfg.preregistered, cfg.curve.budget_fractions)
    if on_run_done is not None and cfg.workers > 1:
        raise PopalignError("reproduce: on_run_done needs workers=1")
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    layout = Layout.of(cfg)
    layout.root.mkdir(parents=True, exist_ok=True)
    runs = plan_runs(cfg)
    jobs = [(spec, seed) for seed in cfg.seeds for spec in runs]
    start = time.time()
    ran: list[str] = []
    bar = tqdm(total=len(jobs) + 3, desc="reproduce", unit="stage", disable=not cfg.progress)
    try:
        bar.set_postfix_str("data")
        ensure_data(cfg, layout)
        bar.update()
        bar.set_postfix_str("sft")
        sft = ensure_sft(cfg, layout)
        bar.update()
        if cfg.workers > 1 and len(jobs) > 1:
            # Per-step bars of several processes would garble one terminal: the stage bar speaks for them.
            quiet = dataclasses.replace(cfg, progress=False)
            keys, needs = schedule(cfg, runs)
            ran = run_jobs(_run_job, quiet, keys, needs, cfg.workers, bar, label=_job_label)
        else:
            table = load_preferences_or_fail(str(layout.data), "train", cfg.train_rows)
            for spec, seed in jobs:
                bar.set_postfix_str(f"{spec.name} seed {seed}")
                now, _ = ensure_seed_run(cfg, layout, spec, seed, table, sft["model"])
                if now:
                    ran.append(f"{spec.name}/seed-{seed}")
                    if on_run_done is not None:
                        on_run_done(spec, seed)
                bar.update()
        bar.set_postfix_str("report")
        # The settings every finished stage agreed with (a mismatch would have stopped us above).
        save_config(cfg, layout.root / "reproduce.yaml")
        paths = write_report(cfg, layout, runs, wall_seconds=time.time() - start)
        bar.update()
    finally:
        bar.close()
        torch.set_num_threads(threads)
    return {"report": paths, "ran": ran, "wall_seconds": time.time() - start}
