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


def resolve_method(cfg: TrainConfig, method) -> TrainConfig:
    """``cfg`` with what the method preset fixes written in, so the saved ``config.yaml`` is what ran.

    A preset such as ``dpo-pop-random`` fixes the PoP strategy whatever ``pop.strategy`` says.
    """
    from dataclasses import replace

    if method.sampler != "pop" or method.pop_strategy in (None, cfg.pop.strategy) or cfg.pop_labels:
        return cfg
    log.info("method %s samples PoP pairs with strategy %s", method.name, method.pop_strategy)
    return replace(cfg, pop=replace(cfg.pop, strategy=method.pop_strategy))


def build_examples(cfg: TrainConfig, table, method, output_dir: Path) -> tuple[Any, dict[str, Any]]:
    """Training examples for the method's sampler: every preference, or PoP pairs (built or people's)."""
    from popalign.train.collate import PairExamples

    if method.sampler == "preferences":
        return PairExamples(np.arange(len(table))), {"examples": len(table), "sampler": "preferences"}
    from popalign.pop.build import build_pop_for_table
    from popalign.pop.labels import load_pop_labels

    if cfg.pop_labels:
        pairs = load_pop_labels(cfg.pop_labels, table)
    else:
        pairs = build_pop_for_table(table, cfg.pop)
    pairs.save(output_dir / "pop_pairs.parquet", table)
    info = {"examples": len(pairs), "sampler": "pop", "pop": pairs.meta}
    if len(pairs) == 0:
        raise PopalignError("the PoP builder produced no pairs (is min_gap larger than every margin gap?)")
    return PairExamples(pairs.strong_idx, pairs.weak_idx), info


def _use_prefix_sharing(cfg: TrainConfig, model) -> bool:
    """``training.prefix_sharing`` where it applies: a policy whose attention takes custom masks."""
    if not cfg.training.prefix_sharing or cfg.objective != "policy":
        return False
    from popalign.modeling.prefix_sharing import prefix_sharing_supported

    if prefix_sharing_supported(model):
        return True
    log.warning("training.prefix_sharing: this model's attention cannot take a block mask; using plain rows")
    return False


def run_train(cfg: TrainConfig, callbacks: list | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says; returns a summary (paths, metrics). Resumes from checkpoints.

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (progress hooks, tests).
    """
    from popalign.data.tokenize import tokenize_preferences
    from popalign.methods import get_method
    from popalign.modeling.chunked_head import set_chunk_size
    from popalign.modeling.reference import cached_reference_logps
    from popalign.modeling.target import adapters_disabled
    from popalign.train.collate import PreferenceCollator
    from popalign.train.setup import (
        apply_lora,
        build_model_and_tokenizer,
        finish_run,
        finished_run,
        start_run,
        training_arguments,
    )
    from popalign.train.trainer import PreferenceTrainer

    method = get_method(cfg.method, cfg.objective)
    cfg = resolve_method(cfg, method)
    done = finished_run(cfg)
    if done is not None:
        return done
    out, resume, table, report = start_run(cfg)
    if method.needs_gt_margin and not table.has_scores:
        raise PopalignError(f"{cfg.data.path}: method {method.name} needs scores (ground-truth margins)")
    reward_model = cfg.objective == "reward-model"
    model, tokenizer = build_model_and_tokenizer(
        cfg.model, texts=_training_texts(table), reward_model=reward_model
    )
    model = apply_lora(model, cfg.lora, reward_model=reward_model)
    tokenized = tokenize_preferences(table, tokenizer, cfg.tokenize)
    info: dict[str, Any] = {"data": vars(report), "tokenize": tokenized.stats, "method": vars(method)}

    ref_c = ref_r = None
    set_chunk_size(cfg.training.logps_chunk_size)  # the precompute runs before training_arguments
    if not reward_model and cfg.reference.precompute:
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
    info["prefix_sharing"] = _use_prefix_sharing(cfg, model)
    collator = PreferenceCollator(
        tokenized,
        tokenizer.pad_token_id,
        reference_chosen_logps=ref_c,
        reference_rejected_logps=ref_r,
        gt_margins=table.margins if table.has_scores else None,
        with_weak=method.needs_weak_pair,
        prefix_sharing=info["prefix_sharing"],
    )
    atomic_write_json(out / "run_info.json", info)
    trainer = PreferenceTrainer(
        model=model,
        args=training_arguments(cfg.training, out),
        train_dataset=examples,
        data_collator=collator,
        processing_class=tokenizer,
        method=method,
        objective=cfg.objective,
        beta=cfg.loss.beta,
        margin=cfg.loss.margin,
        max_margin=cfg.loss.max_margin,
        pop_margin_model=cfg.loss.pop_margin_model,
        tau=cfg.target.tau,
        live_reference=not cfg.reference.precompute,
        margin_refresh_steps=cfg.loss.margin_refresh_steps,
        callbacks=callbacks,
    )
    return finish_run(trainer, tokenizer, out, cfg.save_final, resume)
