"""popalign equals TRL's ``DPOTrainer`` on the same model, data and batch, for every loss form both have.

Vanilla DPO is TRL's ``loss_type="sigmoid"``; popalign's ``ipo``, ``hinge`` and ``rdpo`` presets are TRL's
``"ipo"`` (length-normalised, as TRL 1.16 computes it), ``"hinge"`` and ``"robust"`` (with the same label
smoothing).

Both trainers get the same tiny Llama (policy perturbed away from the reference so rewards are not 0),
the same reference model and the same 8 UltraFeedback preferences. Each computes the loss of one batch with
its public ``compute_loss`` and logs it with its public ``log``; the logged loss, ``rewards/*`` and
``logps/*`` must agree.

Conventions that make the inputs identical:

* TRL is given plain-text rows (no conversational messages): the prompt as popalign renders it (chat
  template with the generation prompt) and the bare replies. TRL then appends the eos token to each reply,
  as popalign does. With conversational rows TRL would also keep the template's ``"\\n"`` after
  ``<|im_end|>`` in every completion.
* No truncation on either side (TRL's ``max_length=None``; rows chosen short enough for popalign's limits):
  TRL truncates the end of prompt+reply, popalign keeps the prompt's end and shortens the replies.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import TrainingArguments

from popalign.data.load import DataSpec, load_preferences
from popalign.data.tokenize import TokenizeSpec, render_prompt, tokenize_preferences
from popalign.methods import get_method
from popalign.modeling.build import build_model_and_tokenizer
from popalign.modeling.reference import compute_reference_logps
from popalign.train.collate import PairExamples, PreferenceCollator
from popalign.train.config import LossSpec, ModelSpec
from popalign.train.trainer import PreferenceTrainer

trl = pytest.importorskip("trl")

BETA = 0.1
BATCH = 8
MAX_TOKENS = 400  # prompt + longer reply; the tiny model has 512 positions
TOKENIZE = TokenizeSpec(max_length=512, max_prompt_length=256)
# Sums of several hundred float32 token log-probs (~ -800) are exact only to a few 1e-5, so the logps are
# compared relatively; everything else absolutely.
ABSOLUTE = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
RELATIVE = ("logps/chosen", "logps/rejected")


@pytest.fixture(scope="module")
def setup(ultrafeedback_dir):
    """The short preferences, popalign's tokenisation of them, the tokenizer, reference and policy."""
    table, _ = load_preferences(DataSpec(path=str(ultrafeedback_dir), limit=64))
    texts = [t for row in zip(table.prompts, table.chosen, table.rejected, strict=True) for t in row]
    model, tokenizer = build_model_and_tokenizer(ModelSpec(), texts=texts)
    everything = tokenize_preferences(
        table, tokenizer, TokenizeSpec(max_length=10**6, max_prompt_length=10**5)
    )
    lengths = [
        len(p) + max(len(c), len(r))
        for p, c, r in zip(everything.prompt_ids, everything.chosen_ids, everything.rejected_ids, strict=True)
    ]
    short = np.array([i for i, n in enumerate(lengths) if n <= MAX_TOKENS][:BATCH])
    assert len(short) == BATCH
    table = table.select(short)
    tokenized = tokenize_preferences(table, tokenizer, TOKENIZE)
    assert tokenized.stats["truncated_rows"] == 0

    reference = model.eval()
    policy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    return {
        "table": table,
        "tokenized": tokenized,
        "tokenizer": tokenizer,
        "reference": reference,
        "policy": policy,
    }


def popalign_step(
    setup, tmp_path, method: str = "dpo", label_smoothing: float = 0.0
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """popalign's batch and its logged metrics after one ``compute_loss`` (precomputed reference)."""
    tokenized, pad = setup["tokenized"], setup["tokenizer"].pad_token_id
    ref_c, ref_r = compute_reference_logps(
        setup["reference"], tokenized, pad, batch_size=BATCH, progress=False
    )
    collator = PreferenceCollator(
        tokenized, pad, reference_chosen_logps=ref_c, reference_rejected_logps=ref_r
    )
    trainer = PreferenceTrainer(
        model=copy.deepcopy(setup["policy"]),
        args=TrainingArguments(output_dir=str(tmp_path / "popalign"), report_to="none", use_cpu=True),
        train_dataset=PairExamples(np.arange(BATCH)),
        data_collator=collator,
        method=get_method(method),
        loss=LossSpec(beta=BETA, label_smoothing=label_smoothing),
    )
    batch = collator([{"strong": i, "weak": -1} for i in range(BATCH)])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    trainer.log({"loss": loss.item()})
    return batch, trainer.state.log_history[-1]


def trl_trainer(setup, tmp_path, loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> trl.DPOTrainer:
    table, tokenizer = setup["table"], setup["tokenizer"]
    rows = Dataset.from_dict(
        {
            "prompt": [render_prompt(p, tokenizer, TOKENIZE.chat_template) for p in table.prompts],
            "chosen": list(table.chosen),
            "rejected": list(table.rejected),
        }
    )
    config = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=BETA,
        loss_type=loss_type,
        label_smoothing=label_smoothing,
        precompute_ref_log_probs=False,
        max_length=None,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        use_cpu=True,
    )
    return trl.DPOTrainer(
        model=copy.deepcopy(setup["policy"]),
        ref_model=copy.deepcopy(setup["reference"]),
        args=config,
        train_dataset=rows,
        processing_class=tokenizer,
    )


def test_trl_tokenises_the_rows_as_popalign_does(setup, tmp_path):
    trainer = trl_trainer(setup, tmp_path)
    tokenized = setup["tokenized"]
    assert trainer.train_dataset["prompt_ids"] == tokenized.prompt_ids
    assert trainer.train_dataset["chosen_ids"] == tokenized.chosen_ids
    assert trainer.train_dataset["rejected_ids"] == tokenized.rejected_ids
    eos = setup["tokenizer"].eos_token_id
    assert all(ids[-1] == eos for ids in tokenized.chosen_ids + tokenized.rejected_ids)


def test_dpo_loss_and_logged_metrics_equal_trl(setup, tmp_path):
    ours_batch, ours = popalign_step(setup, tmp_path)

    trainer = trl_trainer(setup, tmp_path)
    theirs_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(BATCH)])
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(theirs_batch[key], ours_batch[key]), key
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, theirs_batch)
    trainer.log({"loss": loss.item()})
    theirs = trainer.state.log_history[-1]

    # The perturbation makes the comparison meaningful: rewards away from 0, accuracy neither 0 nor 1.
    assert abs(ours["rewards/margins"]) > 1e-2 and 0 < ours["rewards/accuracies"] < 1
    for key in ABSOLUTE:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-5), f"{key}: {ours[key]} vs {theirs[key]}"
    for key in RELATIVE:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-6), f"{key}: {ours[key]} vs {theirs[key]}"
    # The logged means are the same function of the per-example rewards: margins = chosen - rejected.
    assert ours["rewards/margins"] == pytest.approx(
        ours["rewards/chosen"] - ours["rewards/rejected"], abs=2e-6
    )


# popalign preset -> (TRL loss_type, label smoothing)
OTHER_FORMS = {"ipo": ("ipo", 0.0), "hinge": ("hinge", 0.0), "rdpo": ("robust", 0.2)}


@pytest.mark.parametrize("method", sorted(OTHER_FORMS))
def test_other_loss_forms_equal_trl(setup, tmp_path, method):
    loss_type, smoothing = OTHER_FORMS[method]
    _, ours = popalign_step(setup, tmp_path, method, smoothing)

    trainer = trl_trainer(setup, tmp_path, loss_type, smoothing)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(BATCH)])
    trainer.model.train()
    trainer.log({"loss": trainer.compute_loss(trainer.model, batch).item()})
    theirs = trainer.state.log_history[-1]

    assert abs(ours["rewards/margins"]) > 1e-2 and 0 < ours["rewards/accuracies"] < 1
    for key in ABSOLUTE:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-5), f"{key}: {ours[key]} vs {theirs[key]}"
    for key in RELATIVE:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-6), f"{key}: {ours[key]} vs {theirs[key]}"
    # Not DPO's loss: the forms differ (IPO starts near (1 / (2 beta))^2 = 25, the hinge near 1).
    _, dpo = popalign_step(setup, tmp_path, "dpo")
    assert abs(ours["loss"] - dpo["loss"]) > 1e-3
