"""``popalign train`` end to end: data -> tokens -> reference log-probs -> examples -> Trainer -> model.

Every step records what it did (rows kept, truncation, cache hits, PoP statistics) in ``run_info.json``
beside the resolved ``config.yaml``, so a run can be audited and reproduced.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from popalign.errors import PopalignError
from popalign.io import atomic_write_json
from popalign.train.config import TrainConfig

log = logging.getLogger(__name__)


def _training_texts(table) -> list[str]:
    texts: list[str] = []
    for p, c, r in zip(table.prompts, table.chosen, table.rejected, strict=True):
        texts.append(p if isinstance(p, str) else "\n".join(m["content"] for m in p))
        texts.extend((c, r))
    return texts


def with_preset_strategy(cfg: TrainConfig, method) -> TrainConfig:
    """``cfg`` with what the method preset fixes written in, so the saved ``config.yaml`` is what ran.

    A preset such as ``dpo-pop-random`` fixes the PoP strategy whatever ``pop.strategy`` says.
    """
    from dataclasses import replace

    if not method.uses_pop_pairs or method.pop_strategy in (None, cfg.pop.strategy) or cfg.pop_labels:
        return cfg
    log.info("method %s samples PoP pairs with strategy %s", method.name, method.pop_strategy)
    return replace(cfg, pop=replace(cfg.pop, strategy=method.pop_strategy))


def build_examples(cfg: TrainConfig, table, method, output_dir: Path) -> tuple[Any, dict[str, Any]]:
    """Training examples for the method's sampler: every preference, or PoP pairs (built or people's)."""
    from popalign.train.collate import PairExamples

    if not method.uses_pop_pairs:
        return PairExamples(np.arange(len(table))), {"examples": len(table), "sampler": "preferences"}
    from popalign.pop.build import build_pop_for_table, check_pairs, shortfall_warning
    from popalign.pop.labels import load_pop_labels
    from popalign.train.setup import announce

    if cfg.pop_labels:
        pairs = load_pop_labels(cfg.pop_labels, table)
    else:
        pairs = build_pop_for_table(table, cfg.pop)
    announce(shortfall_warning(pairs.meta, style="key"))
    check_pairs(pairs, table.source, style="key")
    pairs.save(output_dir / "pop_pairs.parquet", table)
    info = {"examples": len(pairs), "sampler": "pop", "pop": pairs.meta}
    return PairExamples(pairs.strong_idx, pairs.weak_idx), info


def check_data(method, table) -> None:
    """Refuse data the method's margin source or weighting cannot use, naming the data and what is missing."""
    try:
        method.source.check_table(table)
    except ValueError as exc:
        raise PopalignError(f"method {method.name}: {exc}") from None
    if method.needs_gt_margin and not table.has_scores:
        raise PopalignError(f"{table.source}: method {method.name} needs scores (ground-truth margins)")


def _use_prefix_sharing(cfg: TrainConfig, model, reward_model: bool) -> bool:
    """``training.prefix_sharing`` where it applies: a policy whose attention takes custom masks."""
    if not cfg.training.prefix_sharing or reward_model:
        return False
    from popalign.modeling.prefix_sharing import prefix_sharing_supported

    if prefix_sharing_supported(model):
        return True
    log.warning("training.prefix_sharing: this model's attention cannot take a block mask; using plain rows")
    return False


def _use_padding_free(cfg: TrainConfig, model) -> bool:
    """``training.padding_free`` where the model's attention separates packed sequences (config validation
    has refused reward models and prefix sharing)."""
    if not cfg.training.padding_free:
        return False
    from popalign.modeling.packing import padding_free_unsupported

    why = padding_free_unsupported(model)
    if why is None:
        return True
    log.warning("training.padding_free: %s; using padded rows", why)
    return False


def batched_examples(cfg: TrainConfig, examples, tokenized):
    """``examples`` as the Trainer's dataset: one example per item, or whole micro-batches under a token
    budget (``training.max_tokens_per_batch``)."""
    budget = cfg.training.max_tokens_per_batch
    if budget is None:
        return examples
    from popalign.train.collate import BudgetBatches

    return BudgetBatches(examples, tokenized, budget, seed=cfg.training.seed)


def run_train(cfg: TrainConfig, callbacks: list | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says; returns a summary (paths, metrics). Resumes from checkpoints.

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (progress hooks, tests).
    """
    from popalign.data.tokenize import tokenize_preferences, truncation_warning
    from popalign.modeling.reference import cached_reference_logps
    from popalign.modeling.target import adapters_disabled
    from popalign.train.collate import PreferenceCollator
    from popalign.train.setup import (
        announce,
        apply_lora,
        apply_process_settings,
        build_model_and_tokenizer,
        finish_run,
        finished_run,
        start_run,
        training_arguments,
    )
    from popalign.train.trainer import PreferenceTrainer

    method = cfg.resolved_method()
    cfg = with_preset_strategy(cfg, method)
    done = finished_run(cfg)
    if done is not None:
        return done
    out, resume, table, report = start_run(cfg)
    check_data(method, table)
    apply_process_settings(cfg.training)  # the reference precompute runs before training_arguments
    reward_model = method.reward_model
    model, tokenizer = build_model_and_tokenizer(
        cfg.model, texts=_training_texts(table), reward_model=reward_model
    )
    model = apply_lora(model, cfg.lora, reward_model=reward_model)
    tokenized = tokenize_preferences(table, tokenizer, cfg.tokenize)
    announce(truncation_warning(tokenized.stats))
    info: dict[str, Any] = {"data": vars(report), "tokenize": tokenized.stats, "method": vars(method)}

    ref_c = ref_r = None
    if not reward_model and cfg.reference.precompute and not method.loss_form.reference_free:
        with adapters_disabled(model):
            ref_c, ref_r, info["reference"] = cached_reference_logps(
                model,
                tokenized,
                tokenizer.pad_token_id,
                cfg.reference.cache_dir,
                batch_size=cfg.reference.batch_size,
                progress=cfg.training.progress,
            )
    examples, info["examples"] = build_examples(cfg, table, method, out)
    info["prefix_sharing"] = _use_prefix_sharing(cfg, model, reward_model)
    info["padding_free"] = _use_padding_free(cfg, model)
    dataset = batched_examples(cfg, examples, tokenized)
    if dataset is not examples:
        info["micro_batches"] = len(dataset)
    collator = PreferenceCollator(
        tokenized,
        tokenizer.pad_token_id,
        reference_chosen_logps=ref_c,
        reference_rejected_logps=ref_r,
        gt_margins=table.margins if table.has_scores else None,
        margin_column=table.margin_column if method.source.needs_column else None,
        row_inputs=method.source.row_arrays(table),
        with_weak=method.needs_weak_pair,
        prefix_sharing=info["prefix_sharing"],
        padding_free=info["padding_free"],
    )
    atomic_write_json(out / "run_info.json", info)
    trainer = PreferenceTrainer(
        model=model,
        args=training_arguments(cfg.training, out),
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        method=method,
        loss=cfg.loss,
        target=cfg.target,
        reference=cfg.reference,
        mean_over_step=cfg.training.max_tokens_per_batch is not None,
        callbacks=callbacks,
    )
    return finish_run(trainer, tokenizer, out, cfg.save_final, resume)
