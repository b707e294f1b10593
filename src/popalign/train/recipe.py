"""One training recipe for SFT, preference policies (DPO and every PoP method) and reward models.

A run goes through the same stages whatever it trains; what differs is handed in as a job's *parts*
(:class:`Parts`: :class:`popalign.train.run.PreferenceParts`, :class:`popalign.train.sft.SFTParts`).

1. :func:`start`: the run folder with the resolved ``config.yaml``, seeds, the checkpoint to resume
   from, and the data (a finished run is left as it is: :func:`finished_run`).
2. :func:`setup_model`: the model and its tokenizer, with LoRA (:mod:`popalign.modeling.build`,
   :mod:`popalign.modeling.lora`).
3. :func:`setup_data`: the data tokenized, then the parts' dataset and collator (for preferences: the
   reference log-probs, the sampler's examples, the batch layout).
4. :func:`train`: the parts' ``transformers.Trainer`` runs, resuming if asked.
5. :func:`save`: the final model, transformers' result files and the model card.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from popalign.errors import PopalignError
from popalign.train.config import SFTConfig, TrainConfig, TrainingSpec


@dataclass
class Job:
    """What the stages hand on: the settings, the run folder, the data, and later the model and tokens."""

    cfg: TrainConfig | SFTConfig
    out: Path
    resume: str | None
    table: Any
    report: Any
    model: Any = None
    tokenizer: Any = None
    tokenized: Any = None


class Parts(Protocol):
    """What one kind of job adds to the recipe."""

    #: A scalar-head model (explicit rewards) rather than a causal LM.
    reward_model: bool

    def check_data(self, table: Any) -> None:
        """Refuse data this job cannot use, with a clear error."""

    def setup_data(self, job: Job) -> tuple[Any, Any]:
        """The Trainer's dataset and collator, from the tokenized data."""

    def make_trainer(self, job: Job, args: Any, dataset: Any, collator: Any, callbacks: list | None) -> Any:
        """The ``transformers.Trainer`` that trains ``job.model``."""

    def save_how(self, cfg: Any) -> str:
        """How the final model is saved: ``full``, ``adapter`` or ``merged``."""


def run_recipe(cfg: TrainConfig | SFTConfig, parts: Parts, callbacks: list | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says; returns a summary (paths, metrics). Resumes from checkpoints.

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (progress hooks, tests).
    """
    done = finished_run(cfg)
    if done is not None:
        return done
    job = start(cfg)
    parts.check_data(job.table)
    apply_process_settings(cfg.training)  # the reference precompute runs before training_arguments
    setup_model(job, reward_model=parts.reward_model)
    dataset, collator = setup_data(job, parts)
    trainer = parts.make_trainer(job, training_arguments(cfg.training, job.out), dataset, collator, callbacks)
    result = train(trainer, job)
    return save(trainer, job, parts.save_how(cfg), result)


# ---- 1. start ------------------------------------------------------------------------------------------
def finished_run(cfg: Any) -> dict[str, Any] | None:
    """With ``resume=auto``, the summary of a run that already finished in ``cfg.output_dir``, else None.

    ``train_results.json`` is written last, after the final model. Resuming a finished run from its last
    checkpoint would make the Trainer take one step past ``max_steps`` and overwrite the final model, so a
    finished run is left as it is.
    """
    out = Path(cfg.output_dir)
    results = out / "train_results.json"
    if cfg.resume != "auto" or not results.is_file():
        return None
    import json

    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"{out}: this run has finished already (train_results.json); nothing to do. "
            "Set resume=never to train it again, or output_dir to a new folder."
        )
    metrics = json.loads(results.read_text())
    return {
        "output_dir": str(out),
        "model": str(out),
        "metrics": metrics,
        "resumed_from": None,
        "finished": True,
    }


def start(cfg: TrainConfig | SFTConfig) -> Job:
    """The run folder with the resolved config saved, seeds set, the checkpoint to resume from, the data."""
    from popalign.config import save_config
    from popalign.data.load import load_preferences
    from popalign.train.checkpoints import resolve_resume

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    seed_everything(cfg.training.seed)
    resume = resolve_resume(cfg.resume, out)
    table, report = load_preferences(cfg.data)
    announce(report.summary())
    if int(os.environ.get("RANK", "0")) == 0:
        from popalign.data.overlap import record_training_rows

        record_training_rows(table, out)  # so that eval can warn about evaluating on training rows
    return Job(cfg=cfg, out=out, resume=resume, table=table, report=report)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def announce(message: str | None) -> None:
    """Print what a user must see, once per run (not once per process)."""
    # The launcher's RANK decides: creating accelerate's state here would fix it before
    # TrainingArguments can choose the CPU backend.
    if message and int(os.environ.get("RANK", "0")) == 0:
        print(message, flush=True)


def apply_process_settings(spec: TrainingSpec) -> None:
    """The settings that hold for the whole process (torch's CPU threads, the LM head's chunk size).

    Applied before any model runs, so that the reference precompute obeys them as training does.
    """
    import torch

    from popalign.modeling.chunked_head import set_chunk_size

    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    set_chunk_size(spec.logps_chunk_size)


# ---- 2. model ------------------------------------------------------------------------------------------
def setup_model(job: Job, *, reward_model: bool) -> None:
    """``job.model`` (with LoRA where asked) and ``job.tokenizer``; a ``random:`` model's tokenizer learns
    from the run's data."""
    from popalign.modeling.build import build_model_and_tokenizer, training_texts
    from popalign.modeling.lora import apply_lora

    model, job.tokenizer = build_model_and_tokenizer(
        job.cfg.model, texts=training_texts(job.table), reward_model=reward_model
    )
    job.model = apply_lora(model, job.cfg.lora, reward_model=reward_model)


# ---- 3. data -------------------------------------------------------------------------------------------
def setup_data(job: Job, parts: Parts) -> tuple[Any, Any]:
    """``job.tokenized`` (truncation announced), then the parts' dataset and collator."""
    from popalign.data.tokenize import tokenize_preferences, truncation_warning

    job.tokenized = tokenize_preferences(job.table, job.tokenizer, job.cfg.tokenize)
    announce(truncation_warning(job.tokenized.stats))
    return parts.setup_data(job)


# ---- 4. train ------------------------------------------------------------------------------------------
def training_arguments(spec: TrainingSpec, output_dir: str | Path, **extra: Any):
    """transformers' ``TrainingArguments`` from the run's training settings; a missing logger package
    or processes that did not form one group are refused before training."""
    import torch
    from transformers import TrainingArguments

    apply_process_settings(spec)
    report_to = [r for r in spec.report_to if r != "none"] or "none"
    _check_loggers(report_to)
    args = TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=spec.learning_rate,
        num_train_epochs=spec.num_train_epochs,
        max_steps=spec.max_steps,
        # Under a token budget each dataset item is a whole micro-batch (train.collate.BudgetBatches).
        per_device_train_batch_size=1 if spec.max_tokens_per_batch else spec.per_device_train_batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        lr_scheduler_type=spec.lr_scheduler_type,
        # transformers 5 reads a warmup below 1 as a fraction of all steps.
        warmup_steps=spec.warmup_ratio,
        weight_decay=spec.weight_decay,
        optim=spec.optim,
        max_grad_norm=spec.max_grad_norm,
        activation_checkpointing=spec.gradient_checkpointing,
        bf16=spec.bf16,
        seed=spec.seed,
        data_seed=spec.seed,
        logging_steps=spec.logging_steps,
        save_strategy="steps",
        save_steps=spec.save_steps,
        save_total_limit=spec.save_total_limit,
        report_to=report_to,
        dataloader_num_workers=spec.dataloader_num_workers,
        remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=not spec.progress,
        **extra,
    )
    _check_processes_joined(args)
    return args


def _check_loggers(report_to: list[str] | str) -> None:
    """A logger whose package is missing is one clear error before training, not a traceback inside it."""
    import importlib.util

    for name in [] if report_to == "none" else report_to:
        if name in ("wandb", "mlflow", "comet_ml") and importlib.util.find_spec(name) is None:
            raise PopalignError(
                f"training.report_to=[{name}] needs the {name} package: pip install {name} "
                "(or leave it out of training.report_to)"
            )


def _check_processes_joined(args: Any) -> None:
    """Refuse launched processes that did not form one group: each would train alone on all the data.

    That is what a torchrun-style launch on a machine without GPUs gives unless the processes are told to
    use the CPU (``ACCELERATE_USE_CPU=true``), and nothing else would show it.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched <= 1:
        return
    from accelerate import PartialState

    # accelerate's shared state (used by the reference precompute) must agree with the Trainer's view.
    sees = min(args.world_size, PartialState().num_processes)
    if sees != launched:
        raise PopalignError(
            f"{launched} processes were launched but training sees {sees}; on a machine without "
            "GPUs set ACCELERATE_USE_CPU=true (see docs/training.md, distributed training)"
        )


def train(trainer: Any, job: Job) -> Any:
    """Train (resuming from ``job.resume`` if set) and keep the Trainer's state; transformers' result."""
    result = trainer.train(resume_from_checkpoint=job.resume)
    trainer.save_state()
    return result


# ---- 5. save -------------------------------------------------------------------------------------------
def save(trainer: Any, job: Job, how: str, result: Any) -> dict[str, Any]:
    """The final model, then transformers' result files and the model card; the run's summary."""
    from popalign.train.save import save_final_model

    final = save_final_model(trainer, job.tokenizer, job.out, how)
    # Last: its presence marks a finished run (see finished_run).
    trainer.save_metrics("train", result.metrics)
    if trainer.args.should_save:
        from popalign.eval.report import card_section
        from popalign.hub.card import write_model_card

        # Rewritten by eval; regenerable with `popalign push RUN --card-only`.
        write_model_card(job.out, card_section(job.out))
    return {"output_dir": str(job.out), "model": final, "metrics": result.metrics, "resumed_from": job.resume}
