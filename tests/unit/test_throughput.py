"""Throughput in the training logs: real tokens, padding share and MFU, counted by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import TrainingArguments

from popalign.data.tokenize import TokenizedPreferences
from popalign.methods import get_method
from popalign.modeling.pair_batch import STRONG, WEAK
from popalign.modeling.tiny import tiny_causal_lm
from popalign.modeling.tokenizer import build_local_tokenizer
from popalign.train.collate import PairExamples, PreferenceCollator
from popalign.train.throughput import ThroughputMeter, non_embedding_parameters, peak_flops, row_tokens
from popalign.train.trainer import PreferenceTrainer

# Two preferences: sequences prompt+chosen of 2+3 and 4+1 tokens, prompt+rejected of 2+1 and 4+6.
TOKENIZED = TokenizedPreferences(
    [[5, 6], [7, 8, 9, 10]], [[11, 12, 13], [14]], [[15], [16, 17, 18, 19, 20, 21]]
)
REAL = 5 + 5 + 3 + 10


@pytest.mark.parametrize(
    ("layout", "positions"),
    # padded: 4 rows of 10; shared: 2 rows of 11 (2+3+1 padded, 4+1+6); packed: rows of 10
    # holding [10], [5, 5], [3 + tail]
    [({}, 40), ({"prefix_sharing": True}, 22), ({"padding_free": True}, 30)],
)
def test_row_tokens_of_every_layout(layout, positions):
    batch = PreferenceCollator(TOKENIZED, 0, **layout)([{"strong": 0, "weak": -1}, {"strong": 1, "weak": -1}])
    real, width = row_tokens(batch.pair(STRONG))
    # Prefix sharing runs each prompt once: 6 prompt tokens fewer.
    assert (real, width) == ((REAL - 6, positions) if "prefix_sharing" in layout else (REAL, positions))
    assert row_tokens(batch.pair(WEAK)) == (0, 0)


def test_meter_rates_by_hand(monkeypatch):
    clock = iter([100.0, 102.0])
    monkeypatch.setattr("popalign.train.throughput.time.perf_counter", lambda: next(clock))
    meter = ThroughputMeter(1000, lora=False, peak=1e6)
    batch = PreferenceCollator(TOKENIZED, 0, with_weak=True)(
        [{"strong": 0, "weak": 1}, {"strong": 1, "weak": 0}]
    )
    meter.add(batch)  # starts the clock at 100 s
    got = meter.take()  # 2 s later
    assert got["throughput/real_tokens_per_s"] == REAL / 2
    assert got["throughput/padding_share"] == round(1 - REAL / 40, 4)
    # 6 N per trained token, 2 N per weak-pair token (the same 23 tokens), over 2 s at a peak of 1e6.
    assert got["throughput/mfu"] == round((6000 * REAL + 2000 * REAL) / 2e6, 4)
    assert meter.take() == {}  # nothing counted since


def test_no_mfu_without_a_known_peak_and_parameters_skip_embeddings():
    assert peak_flops(torch.device("cpu")) is None
    model = tiny_causal_lm(build_local_tokenizer(), seed=0)
    total = sum(p.numel() for p in model.parameters())
    assert non_embedding_parameters(model) == total - model.get_input_embeddings().weight.numel()
    meter = ThroughputMeter(10, lora=True, peak=None)
    meter.add(PreferenceCollator(TOKENIZED, 0)([{"strong": 0, "weak": -1}]))
    assert "throughput/mfu" not in meter.take()


def test_training_logs_carry_throughput(tmp_path):
    tokenizer = build_local_tokenizer()
    ref = np.array([-10.0, -12.0])
    collator = PreferenceCollator(
        TOKENIZED,
        tokenizer.pad_token_id,
        reference_chosen_logps=ref,
        reference_rejected_logps=ref,
        padding_free=True,
    )
    args = TrainingArguments(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        max_steps=2,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = PreferenceTrainer(
        model=tiny_causal_lm(tokenizer, seed=0),
        args=args,
        train_dataset=PairExamples(np.arange(2)),
        data_collator=collator,
        method=get_method("dpo"),
    )
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2
    for entry in logged:
        assert entry["throughput/real_tokens_per_s"] > 0
        assert entry["throughput/padding_share"] == round(1 - REAL / 30, 4)
        assert "throughput/mfu" not in entry  # a CPU: no known peak
