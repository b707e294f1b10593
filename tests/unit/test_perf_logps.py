"""Completion-only logits per row: only each row's completion positions reach the LM head, same values."""

from __future__ import annotations

import functools

import pytest
import torch

from popalign.modeling.logps import completion_logps, masked_token_logps
from popalign.modeling.tiny import tiny_causal_lm
from popalign.modeling.tokenizer import build_local_tokenizer


@pytest.fixture(scope="module")
def model():
    return tiny_causal_lm(build_local_tokenizer(), seed=0).double().eval()


def batch(prompt_lens, completion_lens, vocab=200, pad=2):
    gen = torch.Generator().manual_seed(0)
    width = max(p + c for p, c in zip(prompt_lens, completion_lens, strict=True))
    ids = torch.full((len(prompt_lens), width), pad)
    mask = torch.zeros_like(ids)
    completion = torch.zeros_like(ids)
    for b, (p, c) in enumerate(zip(prompt_lens, completion_lens, strict=True)):
        ids[b, : p + c] = torch.randint(5, vocab, (p + c,), generator=gen)
        mask[b, : p + c] = 1
        completion[b, p : p + c] = 1
    return ids, mask, completion


def naive(model, ids, mask, completion):
    logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1], dim=-1)
    token = logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (token * completion[:, 1:]).sum(-1)


def kept_arguments(model, monkeypatch):
    seen = []
    forward = model.forward

    @functools.wraps(forward)  # keeps the signature the logits_to_keep check reads
    def spy(*args, **kwargs):
        seen.append(kwargs.get("logits_to_keep"))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    return seen


def test_rows_with_different_prompts_get_per_row_positions(model, monkeypatch):
    # Row 1 starts late and is short: its window of `span` positions runs past the end of the row, and
    # the clamped duplicates of the last column must not be counted twice.
    ids, mask, completion = batch([1, 10, 4], [9, 2, 3])
    seen = kept_arguments(model, monkeypatch)
    with torch.no_grad():
        got = completion_logps(model, ids, mask, completion)
    kept = seen[0]
    assert torch.is_tensor(kept) and kept.shape == (3, 9)  # the widest completion span, not T - 1 = 11
    assert kept[0].tolist() == list(range(0, 9))
    monkeypatch.undo()
    with torch.no_grad():
        want = naive(model, ids, mask, completion).float()  # completion_logps returns float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_equal_prompts_keep_the_batch_wide_slice(model, monkeypatch):
    ids, mask, completion = batch([4, 4], [5, 3])
    seen = kept_arguments(model, monkeypatch)
    with torch.no_grad():
        completion_logps(model, ids, mask, completion)
    assert seen == [ids.shape[1] - 4 + 1]


def test_per_row_gradient_matches_the_naive_one():
    model = tiny_causal_lm(build_local_tokenizer(), seed=1).double()
    twin = tiny_causal_lm(build_local_tokenizer(), seed=1).double()
    ids, mask, completion = batch([2, 8], [6, 2])
    completion_logps(model, ids, mask, completion).sum().backward()
    naive(twin, ids, mask, completion).sum().backward()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        # Llama's RMSNorm computes in float32 even in a float64 model: agreement to float32 rounding.
        assert (a.grad - b.grad).norm() <= 1e-5 * b.grad.norm()


def test_masked_token_logps_by_hand():
    # Logits [0, ln 3]: p(1) = 3/4, p(0) = 1/4. Masked places give 0 whatever their target (-100 here).
    logits = torch.tensor([[[0.0, 1.0986122887], [0.0, 1.0986122887]]], dtype=torch.float64)
    got = masked_token_logps(logits, torch.tensor([[1, -100]]), torch.tensor([[True, False]]))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor([[torch.log(torch.tensor(0.75)).item(), 0.0]]))
