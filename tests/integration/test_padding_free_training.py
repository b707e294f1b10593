"""Padding-free rows and token budgets through whole optimiser steps of PreferenceTrainer: the step's
weight change equals the padded batch's (the pieces themselves are unit-tested in
tests/unit/test_perf_padding_free.py, whose token rows these runs share)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import TrainingArguments

from popalign.methods import get_method
from popalign.modeling.lora import apply_lora
from popalign.modeling.tiny import tiny_causal_lm
from popalign.modeling.tokenizer import build_local_tokenizer
from popalign.train.collate import BudgetBatches, PairExamples, PreferenceCollator
from popalign.train.trainer import PreferenceTrainer
from tests.unit.test_perf_padding_free import PROMPTS, draw_rows

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def tokenizer():
    return build_local_tokenizer()


@pytest.fixture(scope="module")
def tokenized(tokenizer):
    return draw_rows(tokenizer)


def one_step(
    tokenizer, tokenized, tmp_path, *, method, padding_free, batch, accumulation, lora=False, budget=None
):
    """The weights' change after one SGD step (learning rate 1, no clipping): minus the step's gradient."""
    model = tiny_causal_lm(tokenizer, seed=5)
    if lora:
        from popalign.train.config import LoraSpec

        torch.manual_seed(6)  # peft draws LoRA's A from the global generator
        model = apply_lora(model, LoraSpec(enabled=True, r=4, target_modules=["q_proj", "v_proj"]))
        for name, p in model.named_parameters():  # LoRA's B starts at 0; make the adapter matter
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(6))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    n = len(PROMPTS)
    ref = np.linspace(-30.0, -20.0, n)
    method = get_method(method)
    collator = PreferenceCollator(
        tokenized,
        tokenizer.pad_token_id,
        reference_chosen_logps=ref,
        reference_rejected_logps=ref - 1.5,
        with_weak=method.needs_weak_pair,
        padding_free=padding_free,
    )
    examples = PairExamples(np.arange(n), np.arange(n)[::-1].copy() if method.needs_weak_pair else None)
    dataset = examples if budget is None else BudgetBatches(examples, tokenized, budget, seed=1)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        max_steps=1,
        per_device_train_batch_size=1 if budget else batch,
        gradient_accumulation_steps=accumulation,
        save_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = PreferenceTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        method=method,
        mean_over_step=budget is not None,
    )
    trainer.train()
    return {n: p.detach() - before[n] for n, p in model.named_parameters() if n in before}


def assert_same_step(got, want):
    assert got.keys() == want.keys()
    for name in want:
        assert want[name].norm() > 0, name
        assert (got[name] - want[name]).norm() <= 2e-5 * want[name].norm(), name


@pytest.mark.parametrize(
    ("method", "lora", "accumulation"),
    [("dpo", False, 1), ("dpo-pop", False, 1), ("dpo-pop", True, 1), ("dpo", False, 3), ("dpo-pop", True, 2)],
)
def test_a_training_step_equals_the_padded_one(tokenizer, tokenized, tmp_path, method, lora, accumulation):
    batch = 6 // accumulation
    kw = {"method": method, "lora": lora, "batch": batch, "accumulation": accumulation}
    want = one_step(tokenizer, tokenized, tmp_path / "padded", padding_free=False, **kw)
    got = one_step(tokenizer, tokenized, tmp_path / "packed", padding_free=True, **kw)
    assert_same_step(got, want)


@pytest.mark.parametrize("method", ["dpo", "dpo-pop"])
def test_a_token_budget_that_splits_pairs_unevenly_equals_one_padded_batch(
    tokenizer, tokenized, tmp_path, method
):
    # A 50-token budget groups the 6 preferences (15..22 tokens each) into micro-batches of unequal size;
    # with one accumulation step per micro-batch the optimiser step sees every preference once, and its
    # loss is the mean over all six, as in one padded batch of six.
    groups = BudgetBatches(PairExamples(np.arange(6)), tokenized, 50, seed=1).batches
    assert len({len(g) for g in groups}) > 1
    want = one_step(
        tokenizer, tokenized, tmp_path / "padded", method=method, padding_free=False, batch=6, accumulation=1
    )
    got = one_step(
        tokenizer,
        tokenized,
        tmp_path / "budget",
        method=method,
        padding_free=True,
        batch=1,
        accumulation=len(groups),
        budget=50,
    )
    assert_same_step(got, want)
