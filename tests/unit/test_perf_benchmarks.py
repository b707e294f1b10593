"""The benchmark scripts' arithmetic: cache replay, model FLOPs, ratios and targets (no timing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from benchmarks.common import Shape, ids_to_text, model_flops_per_step, synthetic_ids, word_tokenizer
from benchmarks.heads import markdown_rows, point_summary
from benchmarks.heads import targets as heads_targets
from benchmarks.margin_cache import replay_hit_rate
from benchmarks.profile_step import kind_of
from benchmarks.real import CountingCollator, targets
from benchmarks.train_step import _least_disturbed, summarise


@pytest.mark.parametrize("refresh, want", [(1, 0.0), (2, 0.5), (10, 0.75)])
def test_replay_hit_rate_by_hand(refresh, want):
    # One weak preference drawn at steps 0..3: computed at 0; with N=2 served at 1, stale at 2 (recomputed),
    # served at 3; with N=10 served at 1, 2 and 3; with N=1 never served.
    rate, steps = replay_hit_rate(np.array([5, 5, 5, 5]), batch=1, epochs=1, refresh_steps=refresh)
    assert steps == 4
    assert rate == pytest.approx(want)


def test_replay_looks_a_batch_up_before_storing():
    # The same weak preference twice in one batch: both are misses, as in the trainer.
    rate, _ = replay_hit_rate(np.array([3, 3]), batch=2, epochs=1, refresh_steps=100)
    assert rate == 0.0


def test_model_flops_by_hand():
    shape = Shape(num_hidden_layers=2, hidden_size=4, batch_size=1, prompt_len=1, completion_len=2)
    counts = {"non_embedding": 10, "lm_head": 3}
    # 2 rows of 3 tokens: dense 2*10*6 = 120, head 2*3*(2 rows * 2 positions) = 24,
    # attention 2*2 layers*4 hidden*2 rows*9 = 288; forward 432.
    assert model_flops_per_step(shape, counts) == 3 * 432
    assert model_flops_per_step(shape, counts, lora=True) == 2 * 432
    assert model_flops_per_step(shape, counts, weak_pair=True) == 4 * 432


def test_synthetic_text_tokenises_to_the_same_ids():
    shape = Shape(vocab_size=50, prompt_len=3, completion_len=4)
    prompts, chosen, _ = synthetic_ids(shape, 2, seed=1)
    tokenizer = word_tokenizer(shape.vocab_size)
    assert all(len(p) == 3 for p in prompts) and all(c[-1] == tokenizer.eos_token_id for c in chosen)
    text = ids_to_text(prompts[0]) + " " + ids_to_text(chosen[0])
    assert tokenizer(text)["input_ids"] == prompts[0] + chosen[0]


def row(step_s, rss, params=None):
    out = {"step_s": step_s, "cpu_s": step_s, "peak_rss_mib": rss, "spec": {"shape": {"dtype": "float32"}}}
    if params:
        out["params"] = {"total": params}
    return out


def test_summarise_ratios_and_targets():
    copy_mib = 2**20 * 10 * 4 / 2**20  # 10 Mi float32 parameters: 40 MiB
    results = {
        "trl-dpo": row(2.0, 1000),
        "popalign-dpo": row(1.5, 900, params=10 * 2**20),
        "popalign-pop": row(2.25, 900 + copy_mib / 2),
        "popalign-dpo-lora": row(1.0, 800),
        "popalign-pop-lora": row(1.5, 880),
    }
    summary = summarise(results)
    assert summary["ratios"]["popalign_dpo_vs_trl_step"] == pytest.approx(0.75)
    assert summary["targets"]["popalign DPO <= 0.7x TRL"]["met"] is False
    assert summary["ratios"]["popalign_pop_vs_dpo_step"] == pytest.approx(1.5)
    assert summary["full_pop_extra_memory"]["copies"] == pytest.approx(0.5)
    targets = summary["targets"]
    assert targets["DPO-PoP <= 1.4x popalign DPO"]["met"] is False
    assert targets["LoRA DPO-PoP peak memory <= 1.05x LoRA DPO"]["value"] == pytest.approx(1.1)
    assert targets["full DPO-PoP memory <= one extra model copy"]["met"] is True
    assert summarise({})["targets"]["popalign DPO <= 0.7x TRL"]["met"] is None


def test_heads_point_ratios_and_targets():
    copy_mib = 10 * 4  # 10 Mi float32 parameters
    rows = {
        "trl-dpo": row(10.0, 4000),
        "popalign-dpo": row(5.0, 1800, params=10 * 2**20),
        "popalign-dpo-full-logits": row(4.0, 4400),
        "popalign-pop": row(6.0, 1800 + 1.5 * copy_mib),
        "popalign-dpo-ckpt": row(6.0, 1000),
        "trl-dpo-ckpt": {"error": "exit 1"},
    }
    summary = point_summary(rows)
    assert summary["popalign-dpo"] == {"step_vs_trl": 0.5, "cpu_vs_trl": 0.5, "rss_vs_trl": 0.45}
    assert summary["popalign-dpo-full-logits"]["rss_vs_trl"] == pytest.approx(1.1)
    assert set(summary["popalign-dpo-ckpt"].values()) == {None}  # compared with TRL's checkpointed row
    assert summary["pop_extra"]["copies"] == pytest.approx(1.5)
    checks = heads_targets({"points": {"v128k-s256": {"summary": summary}}})
    assert [c["met"] for c in checks.values()] == [True, True, True, False]
    assert all(c["met"] is None for c in heads_targets({"points": {}}).values())

    shape = {"vocab_size": 128256, "prompt_len": 512, "completion_len": 1536, "batch_size": 1}
    report = {
        "optim": "adamw_torch",
        "points": {"v128k-s2048": {"shape": shape, "results": rows, "summary": summary}},
    }
    table = markdown_rows(report)
    assert (
        table[2]
        == "| vocab 128,256, seq 2,048, 1 pair, adamw_torch | TRL DPO | 10.00 | 10.00 | 4,000 | 1.00 | 1.00 |"
    )
    assert table[3] == "|  | popalign DPO, chunked head | 5.00 | 5.00 | 1,800 | 0.50 | 0.45 |"
    assert "| TRL DPO, gradient checkpointing | failed: exit 1 |" in table[-2]
    assert table[-1].startswith("| | DPO-PoP over DPO: 60 MiB, 1.50 model copies")


def test_rounds_keep_the_least_disturbed_run():
    first = _least_disturbed(None, {"step_s": 2.0, "peak_rss_mib": 10})
    second = _least_disturbed(first, {"step_s": 1.5, "peak_rss_mib": 12})
    third = _least_disturbed(second, {"error": "exit 1"})
    assert (second["step_s"], second["peak_rss_mib"], second["round_step_s"]) == (1.5, 12, [2.0, 1.5])
    assert third["step_s"] == 1.5 and third["round_step_s"] == [2.0, 1.5]
    assert "error" in _least_disturbed(None, {"error": "exit 1"})


def test_profile_kinds():
    assert kind_of("aten::mm") == "matrix multiplies"
    assert kind_of("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == "attention kernels"
    assert kind_of("aten::exp_") == "softmax / exp of the LM head"
    assert kind_of("aten::expand") == "other operators"


def test_real_length_targets_by_hand():
    rows = {
        "trl-dpo": {"real_tokens_per_s": 100.0},
        "popalign-dpo": {"real_tokens_per_s": 150.0},
        "popalign-dpo-padding-free": {"real_tokens_per_s": 250.0},
    }
    got = targets(rows)
    check = got["popalign padding-free >= 2x TRL real tokens/s"]
    assert (check["value"], check["met"]) == (2.5, True)
    assert got["ratios"]["padding_free_vs_padded_dpo"] == pytest.approx(250 / 150)
    assert got["ratios"]["padding_free_vs_padded_pop"] is None  # rows not measured
    rows["popalign-dpo-padding-free"] = {"error": "exit 1"}
    assert targets(rows)["popalign padding-free >= 2x TRL real tokens/s"]["met"] is None


def test_real_length_counting_collator_counts_each_batch():
    def collate(items):
        return {"input_ids": torch.zeros(2, 5), "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1] * 5])}

    counting = CountingCollator(collate)
    counting([{}])
    counting([{}])
    assert counting.counts == [(8, 10), (8, 10)]
