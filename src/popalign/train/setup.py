"""What SFT and preference training share: models, LoRA, TrainingArguments, final saving."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

from popalign.train.config import LoraSpec, ModelSpec, TrainingSpec

log = logging.getLogger(__name__)

RANDOM_PREFIX = "random:"


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model_and_tokenizer(
    spec: ModelSpec, *, texts: list[str], reward_model: bool = False
) -> tuple[Any, Any]:
    """The model to train and its tokenizer.

    ``random:tiny-llama`` trains a small byte-level BPE tokenizer on ``texts`` and builds a randomly
    initialised Llama, so tests and the CPU testbed need no download.
    """
    from popalign.modeling import load as mload

    if spec.name_or_path.startswith(RANDOM_PREFIX):
        from popalign.modeling.tiny import tiny_causal_lm, tiny_reward_model
        from popalign.modeling.tokenizer import build_local_tokenizer

        arch = spec.name_or_path[len(RANDOM_PREFIX) :]
        if arch != "tiny-llama":
            from popalign.errors import PopalignError

            raise PopalignError(
                f"model.name_or_path: unknown random architecture {arch!r} (known: tiny-llama)"
            )
        tokenizer = build_local_tokenizer(texts, vocab_size=spec.tiny_vocab_size)
        build = tiny_reward_model if reward_model else tiny_causal_lm
        model = build(
            tokenizer,
            seed=spec.seed,
            hidden_size=spec.tiny_hidden_size,
            intermediate_size=spec.tiny_hidden_size * 2,
            num_hidden_layers=spec.tiny_layers,
        )
        return model, tokenizer
    tokenizer = mload.load_tokenizer(spec.name_or_path)
    if reward_model:
        model = mload.load_reward_model(spec.name_or_path, dtype=spec.dtype)
    else:
        model = mload.load_causal_lm(spec.name_or_path, dtype=spec.dtype)
    if tokenizer.pad_token_id is None:
        # Padding is masked out everywhere, so reusing eos as pad changes no result.
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def apply_lora(model: Any, spec: LoraSpec, *, reward_model: bool = False) -> Any:
    if not spec.enabled:
        return model
    from peft import LoraConfig, TaskType

    from popalign.modeling.lora import peft_wrap

    layers = None
    if spec.last_layers:
        total = model.config.num_hidden_layers
        if not 0 < spec.last_layers <= total:
            from popalign.errors import PopalignError

            raise PopalignError(f"lora.last_layers: 1..{total} (the model's blocks), got {spec.last_layers}")
        layers = list(range(total - spec.last_layers, total))
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        layers_to_transform=layers,
        task_type=TaskType.SEQ_CLS if reward_model else TaskType.CAUSAL_LM,
    )
    return peft_wrap(model, config)


def apply_process_settings(spec: TrainingSpec) -> None:
    """The settings that hold for the whole process (torch's CPU threads, the LM head's chunk size).

    Applied before any model runs, so that the reference precompute obeys them as training does.
    """
    import torch

    from popalign.modeling.chunked_head import set_chunk_size

    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    set_chunk_size(spec.logps_chunk_size)


def training_arguments(spec: TrainingSpec, output_dir: str | Path, **extra: Any):
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

    from popalign.errors import PopalignError

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
        from popalign.errors import PopalignError

        raise PopalignError(
            f"{launched} processes were launched but training sees {sees}; on a machine without "
            "GPUs set ACCELERATE_USE_CPU=true (see docs/training.md, distributed training)"
        )


def start_run(cfg: Any) -> tuple[Path, str | None, Any, Any]:
    """Run folder with the resolved config saved, seeds set, the checkpoint to resume from, and the data.

    Returns ``(output_dir, resume_checkpoint_or_None, table, load_report)``.
    """
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
    return out, resume, table, report


def announce(message: str | None) -> None:
    """Print what a user must see, once per run (not once per process)."""
    # The launcher's RANK decides: creating accelerate's state here would fix it before
    # TrainingArguments can choose the CPU backend.
    if message and int(os.environ.get("RANK", "0")) == 0:
        print(message, flush=True)


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


def finish_run(trainer: Any, tokenizer: Any, out: Path, how: str, resume: str | None) -> dict[str, Any]:
    """Train (resuming if asked), write the final model and transformers' result files; a summary."""
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_state()
    from popalign.train.save import save_final_model

    final = save_final_model(trainer, tokenizer, out, how)
    # Last: its presence marks a finished run (see finished_run).
    trainer.save_metrics("train", result.metrics)
    if trainer.args.should_save:
        from popalign.eval.report import card_section
        from popalign.hub.card import write_model_card

        write_model_card(
            out, card_section(out)
        )  # rewritten by eval; regenerable with `popalign push RUN --card-only`
    return {"output_dir": str(out), "model": final, "metrics": result.metrics, "resumed_from": resume}
