"""Padding-free rows: packed sequences give the padded rows' log-probs, gradients and optimiser steps."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from popalign.config import ConfigError, load_config
from popalign.data.tokenize import TokenizedPreferences
from popalign.modeling.logps import completion_logps
from popalign.modeling.packing import pack_pairs, pack_rows, packed_logps, padding_free_unsupported
from popalign.modeling.pair_batch import WEAK, select_pairs
from popalign.modeling.tiny import tiny_causal_lm
from popalign.modeling.tokenizer import build_local_tokenizer
from popalign.train.collate import BudgetBatches, PairExamples, PreferenceCollator
from popalign.train.config import TrainConfig

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

# Prompt, chosen and rejected lengths per preference: long and short mixed, so that rows hold several
# sequences; preference 2 has a one-token prompt and a one-token rejected reply.
PROMPTS, CHOSEN, REJECTED = [3, 7, 1, 5, 2, 4], [4, 2, 6, 1, 14, 3], [5, 1, 1, 6, 2, 8]


@pytest.fixture(scope="module")
def tokenizer():
    return build_local_tokenizer()


def draw_rows(tokenizer) -> TokenizedPreferences:
    """Random token rows of the lengths above (seeded): the preferences every test here packs."""
    gen = torch.Generator().manual_seed(0)

    def draw(n):
        return torch.randint(5, len(tokenizer), (n,), generator=gen).tolist()

    return TokenizedPreferences(
        [draw(n) for n in PROMPTS], [draw(n) for n in CHOSEN], [draw(n) for n in REJECTED]
    )


@pytest.fixture(scope="module")
def tokenized(tokenizer):
    return draw_rows(tokenizer)


def padded_and_packed(model, tokenized, pad, idx, average=False):
    plain = PreferenceCollator(tokenized, pad).pair_tensors(idx)
    packed = pack_pairs(tokenized, idx, pad)
    want = completion_logps(
        model, plain["input_ids"], plain["attention_mask"], plain["completion_mask"], average=average
    )
    got = packed_logps(
        model,
        packed["input_ids"],
        packed["position_ids"],
        packed["completion_mask"],
        packed["sequence_index"],
        2 * len(idx),
        average=average,
    )
    return got, want, packed


def test_pack_rows_by_hand():
    # Sequences of 5, 2, 3 and 1 tokens; rows are 5 wide: [0], [2, 1], [3, tail of 4].
    seqs = [[10, 11, 12, 13, 14], [20, 21], [30, 31, 32], [40]]
    batch = pack_rows(seqs, [2, 1, 1, 1], pad_id=0)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 14], [30, 31, 32, 20, 21], [40, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1], [0, 0, 1, 2, 3]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 0, 1], [0, 0, 0, 0, 0]]
    assert batch["sequence_index"].tolist() == [[0, 0, 0, 0, 0], [2, 2, 2, 1, 1], [3, -1, -1, -1, -1]]
    assert batch["sequence_lengths"].tolist() == [5, 2, 3, 1]
    with pytest.raises(ValueError, match="prompt of at least one token"):
        pack_rows([[1, 2]], [0], pad_id=0)


@pytest.mark.parametrize("average", [False, True])
def test_logps_equal_the_padded_rows_in_float64(tokenizer, tokenized, average):
    model = tiny_causal_lm(tokenizer, seed=0).double().eval()
    with torch.no_grad():
        got, want, packed = padded_and_packed(
            model, tokenized, tokenizer.pad_token_id, [0, 1, 2, 3, 4, 5], average
        )
    # 12 sequences of 3..16 tokens in rows 16 wide: packing must have put several in one row.
    assert packed["input_ids"].shape[0] < 12
    assert got.shape == (12,)
    # Llama's RMSNorm computes in float32 even in a float64 model: agreement to float32 rounding.
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-6)


def test_logps_equal_in_float32_with_sdpa_and_eager(tokenizer, tokenized):
    model = tiny_causal_lm(tokenizer, seed=1).eval()
    with torch.no_grad():
        got, want, _ = padded_and_packed(model, tokenized, tokenizer.pad_token_id, [4, 2, 0, 5])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-6)
    model.set_attn_implementation("eager")
    assert padding_free_unsupported(model) is None
    with torch.no_grad():
        got_eager, _, _ = padded_and_packed(model, tokenized, tokenizer.pad_token_id, [4, 2, 0, 5])
    torch.testing.assert_close(got_eager, want, atol=1e-4, rtol=1e-6)


def test_a_sequence_never_sees_its_row_neighbours(tokenizer, tokenized):
    # The same sequence packed beside different neighbours keeps its value exactly (float64).
    model = tiny_causal_lm(tokenizer, seed=2).double().eval()
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        alone, _, _ = padded_and_packed(model, tokenized, pad, [3])
        crowded, _, packed = padded_and_packed(model, tokenized, pad, [4, 3, 1])
    row = packed["sequence_index"][(packed["sequence_index"] == 1).any(dim=1)][0]
    assert len(set(row.tolist()) - {-1}) > 1  # preference 3's chosen shares its row
    torch.testing.assert_close(crowded[[1, 4]], alone, atol=1e-10, rtol=0)


def test_gradients_equal_the_padded_rows(tokenizer, tokenized):
    model = tiny_causal_lm(tokenizer, seed=3).double()
    twin = copy.deepcopy(model)
    idx = [0, 1, 2, 3, 4, 5]
    got, _, _ = padded_and_packed(model, tokenized, tokenizer.pad_token_id, idx)
    _, want, _ = padded_and_packed(twin, tokenized, tokenizer.pad_token_id, idx)
    weights = torch.linspace(-1.0, 2.0, got.shape[0], dtype=got.dtype)  # every sequence its own weight
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        # Llama's RMSNorm computes in float32 even in a float64 model: agreement to float32 rounding.
        assert (a.grad - b.grad).norm() <= 1e-5 * b.grad.norm(), name
        assert b.grad.norm() > 0, name


def test_through_a_lora_adapter(tokenizer, tokenized):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(tiny_causal_lm(tokenizer, seed=4).double(), config).eval()
    assert padding_free_unsupported(model) is None
    with torch.no_grad():
        got, want, _ = padded_and_packed(model, tokenized, tokenizer.pad_token_id, [5, 1, 3])
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_select_pairs_repacks_the_chosen_preferences(tokenizer, tokenized):
    pad = tokenizer.pad_token_id
    collator = PreferenceCollator(tokenized, pad, padding_free=True, with_weak=True)
    batch = collator([{"strong": 0, "weak": w} for w in (4, 1, 5)])
    sub = select_pairs(batch.pair(WEAK), torch.tensor([2, 0]))
    want = pack_pairs(tokenized, [5, 4], pad)
    assert set(sub) == set(want)  # the weak pair alone: no strong tensors, no table rows
    for key in want:
        assert torch.equal(sub[key], want[key]), key


def test_support_check(tokenizer):
    model = tiny_causal_lm(tokenizer, seed=0)
    model.config._attn_implementation = "flash_attention_2"  # varlen through position ids
    assert padding_free_unsupported(model) is None
    model.config._attn_implementation = "flex_attention"
    assert "attention 'flex_attention'" in padding_free_unsupported(model)

    class OwnMasks(nn.Module):  # a model whose masks would not separate packed sequences
        config = SimpleNamespace(_attn_implementation="sdpa")

        def forward(self, input_ids, logits_to_keep=0):
            return None

    assert "create_causal_mask" in padding_free_unsupported(OwnMasks())


def test_budget_batches_keep_pairs_whole(tokenized):
    examples = PairExamples(np.arange(6))
    tokens = [2 * p + c + r for p, c, r in zip(PROMPTS, CHOSEN, REJECTED, strict=True)]  # 15..20, 22
    batches = BudgetBatches(examples, tokenized, budget=40, seed=3)
    seen = sorted(i for group in batches.batches for i in group)
    assert seen == list(range(6))  # nothing dropped, nothing twice
    for group in batches.batches:
        assert sum(tokens[i] for i in group) <= 40 or len(group) == 1
    alone = BudgetBatches(examples, tokenized, budget=5)
    assert [len(g) for g in alone.batches] == [1] * 6  # every pair is over the budget: one per batch
    assert alone[0] == [examples[alone.batches[0][0]]]


def test_config_refuses_prefix_sharing_and_reward_models():
    base = ["data.path=x.jsonl", "training.padding_free=true"]
    with pytest.raises(ConfigError, match="cannot be combined"):
        load_config(TrainConfig, None, [*base, "training.prefix_sharing=true"]).validate()
    with pytest.raises(ConfigError, match="applies to policies"):
        load_config(TrainConfig, None, [*base, "objective=reward-model", "method=bt"]).validate()
    with pytest.raises(ConfigError, match="max_tokens_per_batch"):
        load_config(TrainConfig, None, ["data.path=x.jsonl", "training.max_tokens_per_batch=0"]).validate()


def test_a_scored_first_token_is_refused(tokenizer):
    model = tiny_causal_lm(tokenizer, seed=0)
    batch = pack_rows([[7, 8, 9], [10, 11]], [1, 1], pad_id=tokenizer.pad_token_id)
    batch["completion_mask"][1, 0] = 1  # the second row's first token: a sequence start
    args = [batch[k] for k in ("input_ids", "position_ids", "completion_mask", "sequence_index")]
    with pytest.raises(ValueError, match="first token"):
        packed_logps(model, *args, 2)
