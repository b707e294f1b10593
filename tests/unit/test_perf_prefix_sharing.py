"""Prefix sharing: one row prompt+chosen+rejected gives the plain rows' log-probs and gradients."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from popalign.data.tokenize import TokenizedPreferences
from popalign.modeling.batching import pad_rows
from popalign.modeling.logps import completion_logps
from popalign.modeling.prefix_sharing import (
    _positions,
    _segments,
    block_attention_mask,
    prefix_sharing_supported,
    shared_prefix_logps,
    shared_rows,
)
from popalign.modeling.tiny import tiny_causal_lm
from popalign.modeling.tokenizer import build_local_tokenizer
from popalign.train.collate import PreferenceCollator

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

# Different prompt, chosen and rejected lengths per row; row 2 has a one-token prompt.
PROMPTS, CHOSEN, REJECTED = [3, 7, 1, 5], [4, 2, 6, 1], [5, 1, 2, 6]


@pytest.fixture(scope="module")
def tokenizer():
    return build_local_tokenizer()


def preferences(vocab: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)

    def draw(n):
        return torch.randint(5, vocab, (n,), generator=gen).tolist()

    return [draw(n) for n in PROMPTS], [draw(n) for n in CHOSEN], [draw(n) for n in REJECTED]


def plain_batch(prompts, chosen, rejected, pad):
    rows = [p + c for p, c in zip(prompts, chosen, strict=True)]
    rows += [p + r for p, r in zip(prompts, rejected, strict=True)]
    ids, mask = pad_rows(rows, pad)
    completion = mask.clone()
    for i, p in enumerate(prompts + prompts):
        completion[i, : len(p)] = 0
    return ids, mask, completion


def both(model, tokenizer, average=False):
    prompts, chosen, rejected = preferences(len(tokenizer))
    pad = tokenizer.pad_token_id
    shared = shared_rows(prompts, chosen, rejected, pad)
    got = shared_prefix_logps(
        model,
        shared["input_ids"],
        shared["prompt_lengths"],
        shared["chosen_lengths"],
        shared["rejected_lengths"],
        average=average,
    )
    want = completion_logps(model, *plain_batch(prompts, chosen, rejected, pad), average=average)
    return got, want


@pytest.mark.parametrize("average", [False, True])
def test_equal_to_plain_rows_in_float64(tokenizer, average):
    model = tiny_causal_lm(tokenizer, seed=0).double().eval()
    with torch.no_grad():
        got, want = both(model, tokenizer, average)
    assert got.shape == (2 * len(PROMPTS),)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_equal_to_plain_rows_in_float32_and_eager_attention(tokenizer):
    model = tiny_causal_lm(tokenizer, seed=1).eval()
    with torch.no_grad():
        got, want = both(model, tokenizer)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)
    model.set_attn_implementation("eager")
    assert prefix_sharing_supported(model)
    with torch.no_grad():
        got_eager, _ = both(model, tokenizer)
    torch.testing.assert_close(got_eager, want, atol=1e-5, rtol=1e-6)


def test_gradients_equal_the_plain_rows(tokenizer):
    model = tiny_causal_lm(tokenizer, seed=2).double()
    twin = copy.deepcopy(model)
    got, _ = both(model, tokenizer)
    _, want = both(twin, tokenizer)
    # Different weights per row, so every row's log-prob must route its own gradient.
    weights = torch.linspace(-1.0, 2.0, got.shape[0], dtype=got.dtype)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        # Llama's RMSNorm computes in float32 even in a float64 model, and the shared prompt's gradient is
        # summed in another order: agreement to float32 rounding.
        assert (a.grad - b.grad).norm() <= 1e-5 * b.grad.norm(), name
        assert b.grad.norm() > 0, name


def test_through_a_lora_adapter(tokenizer):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(tiny_causal_lm(tokenizer, seed=3).double(), config).eval()
    assert prefix_sharing_supported(model)
    with torch.no_grad():
        got, want = both(model, tokenizer)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_block_mask_and_positions_by_hand():
    # One row: prompt 2, chosen 2, rejected 1, one padding column (L = 6).
    seg = _segments(torch.tensor([2]), torch.tensor([2]), torch.tensor([1]), 6)
    assert seg.tolist() == [[0, 0, 1, 1, 2, 3]]
    allowed = block_attention_mask(seg, torch.float32)[0, 0] == 0
    want = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],  # prompt token 0
            [1, 1, 0, 0, 0, 0],  # prompt token 1
            [1, 1, 1, 0, 0, 0],  # chosen 0: the prompt and itself
            [1, 1, 1, 1, 0, 0],  # chosen 1
            [1, 1, 0, 0, 1, 0],  # rejected 0: the prompt and itself, never the chosen tokens
            [0, 0, 0, 0, 0, 1],  # padding sees itself only, so softmax has a term
        ],
        dtype=torch.bool,
    )
    assert torch.equal(allowed, want)
    masked = block_attention_mask(seg, torch.float32)[0, 0][~want]
    assert (masked == torch.finfo(torch.float32).min).all()
    # Rejected restarts after the prompt: it sits where chosen token 0 sits in its own plain row.
    assert _positions(seg, torch.tensor([2])).tolist() == [[0, 1, 2, 3, 2, 0]]


def test_shared_rows_layout():
    batch = shared_rows([[7, 8]], [[1, 2, 3]], [[4]], pad_id=0, multiple_of=4)
    assert batch["input_ids"].tolist() == [[7, 8, 1, 2, 3, 4, 0, 0]]
    lengths = [batch[k].tolist() for k in ("prompt_lengths", "chosen_lengths", "rejected_lengths")]
    assert lengths == [[2], [3], [1]]


def test_collator_emits_the_shared_layout_and_the_same_logps(tokenizer):
    prompts, chosen, rejected = preferences(len(tokenizer), seed=5)
    tokenized = TokenizedPreferences(prompts, chosen, rejected)
    ref = np.arange(4, dtype=np.float64)
    kwargs = {"reference_chosen_logps": ref, "reference_rejected_logps": -ref}
    plain = PreferenceCollator(tokenized, tokenizer.pad_token_id, **kwargs)
    shared = PreferenceCollator(tokenized, tokenizer.pad_token_id, prefix_sharing=True, **kwargs)
    items = [{"strong": i, "weak": -1} for i in (2, 0, 3)]
    a, b = plain(items), shared(items)
    assert b["input_ids"].shape[0] == 3 and a["input_ids"].shape[0] == 6
    assert b["prompt_lengths"].tolist() == [PROMPTS[2], PROMPTS[0], PROMPTS[3]]
    torch.testing.assert_close(a["reference_chosen_logps"], b["reference_chosen_logps"])
    model = tiny_causal_lm(tokenizer, seed=4).double().eval()
    with torch.no_grad():
        want = completion_logps(model, a["input_ids"], a["attention_mask"], a["completion_mask"])
        got = shared_prefix_logps(
            model, b["input_ids"], b["prompt_lengths"], b["chosen_lengths"], b["rejected_lengths"]
        )
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_support_check(tokenizer):
    model = tiny_causal_lm(tokenizer, seed=0)
    assert prefix_sharing_supported(model)
    model.config._attn_implementation = "flash_attention_2"  # ignores custom 4D masks
    assert not prefix_sharing_supported(model)

    class NoKeep(nn.Module):
        config = SimpleNamespace(_attn_implementation="sdpa")

        def forward(self, input_ids, attention_mask=None):
            return None

    assert not prefix_sharing_supported(NoKeep())


def test_empty_prompt_is_refused(tokenizer):
    model = tiny_causal_lm(tokenizer, seed=0)
    batch = shared_rows([[]], [[5, 6]], [[7]], pad_id=tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="prompt of at least one token"):
        shared_prefix_logps(
            model,
            batch["input_ids"],
            batch["prompt_lengths"],
            batch["chosen_lengths"],
            batch["rejected_lengths"],
        )
