"""``popalign train``: the recipe's parts for preference training (DPO, every PoP method, reward models).

The stages are :mod:`popalign.train.recipe`'s; this module adds what preferences need: the data check,
reference log-probs, the sampler's examples (every preference, or PoP pairs), the batch layout, and
:class:`~popalign.train.trainer.PreferenceTrainer`. Every data step records what it did (rows kept,
truncation, cache hits, PoP statistics) in ``run_info.json`` beside the resolved ``config.yaml``, so a
run can be audited and reproduced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from popalign.errors import PopalignError
from popalign.io import atomic_write_json
from popalign.methods import Method
from popalign.train.config import TrainConfig
from popalign.train.recipe import Job, announce, run_recipe

log = logging.getLogger(__name__)


def run_train(cfg: TrainConfig, callbacks: list | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says (:func:`popalign.train.recipe.run_recipe`); returns a summary (paths,
    metrics). Resumes from checkpoints. ``callbacks``: extra ``transformers.TrainerCallback`` objects."""
    method = cfg.resolved_method()
    return run_recipe(with_preset_strategy(cfg, method), PreferenceParts(method), callbacks)


@dataclass
class PreferenceParts:
    """The recipe's parts for a preference method (its preset: sampler, margin source, loss form)."""

    method: Method

    @property
    def reward_model(self) -> bool:
        return self.method.reward_model

    def check_data(self, table) -> None:
        check_data(self.method, table)

    def save_how(self, cfg: TrainConfig) -> str:
        return cfg.save_final

    def setup_data(self, job: Job) -> tuple[Any, Any]:
        """Reference log-probs, the sampler's examples and the collator; ``run_info.json`` records them."""
        from popalign.train.collate import PreferenceCollator

        cfg, method, model, table, tokenized = job.cfg, self.method, job.model, job.table, job.tokenized
        info: dict[str, Any] = {"data": vars(job.report), "tokenize": tokenized.stats, "method": vars(method)}
        ref_c = ref_r = None
        if not self.reward_model and cfg.reference.precompute and not method.loss_form.reference_free:
            from popalign.modeling.reference import cached_reference_logps
            from popalign.modeling.target import adapters_disabled

            with adapters_disabled(model):
                ref_c, ref_r, info["reference"] = cached_reference_logps(
                    model,
                    tokenized,
                    job.tokenizer.pad_token_id,
                    cfg.reference.cache_dir,
                    batch_size=cfg.reference.batch_size,
                    progress=cfg.training.progress,
                )
        examples, info["examples"] = build_examples(cfg, table, method, job.out)
        info["prefix_sharing"] = _use_prefix_sharing(cfg, model, self.reward_model)
        info["padding_free"] = _use_padding_free(cfg, model)
        dataset = batched_examples(cfg, examples, tokenized)
        if dataset is not examples:
            info["micro_batches"] = len(dataset)
        collator = PreferenceCollator(
            tokenized,
            job.tokenizer.pad_token_id,
            reference_chosen_logps=ref_c,
            reference_rejected_logps=ref_r,
            gt_margins=table.margins if table.has_scores else None,
            margin_column=table.margin_column if method.source.needs_column else None,
            row_inputs=method.source.row_arrays(table),
            with_weak=method.needs_weak_pair,
            prefix_sharing=info["prefix_sharing"],
            padding_free=info["padding_free"],
        )
        atomic_write_json(job.out / "run_info.json", info)
        return dataset, collator

    def make_trainer(self, job: Job, args, dataset, collator, callbacks: list | None):
        from popalign.train.trainer import PreferenceTrainer

        cfg = job.cfg
        return PreferenceTrainer(
            model=job.model,
            args=args,
            train_dataset=dataset,
            data_collator=collator,
            processing_class=job.tokenizer,
            method=self.method,
            loss=cfg.loss,
            target=cfg.target,
            reference=cfg.reference,
            mean_over_step=cfg.training.max_tokens_per_batch is not None,
            callbacks=callbacks,
        )


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
