"""The chunked LM head: log-probs and gradients equal to the full-logits path; its fallbacks."""

from __future__ import annotations

import copy
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from popalign.modeling import chunked_head
from popalign.modeling.chunked_head import (
    chunk_size_setting,
    chunk_tokens,
    linear_token_logps,
    select_kernel,
    set_chunk_size,
)
from popalign.modeling.logps import completion_logps
from popalign.modeling.prefix_sharing import shared_prefix_logps, shared_rows
from popalign.modeling.tiny import tiny_causal_lm
from popalign.modeling.tokenizer import build_local_tokenizer
from tests.unit.test_perf_logps import batch as rows

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


@contextmanager
def chunk_size(tokens: int | None) -> Iterator[None]:
    """:func:`set_chunk_size` for the duration of a ``with`` block."""
    before = chunk_size_setting()
    set_chunk_size(tokens)
    try:
        yield
    finally:
        set_chunk_size(before)


@pytest.fixture(scope="module")
def tokenizer():
    return build_local_tokenizer()


# Prompts of different lengths take the per-row positions path; equal prompts the batch-wide slice.
PER_ROW = ([2, 9, 5], [7, 3, 4])
BATCH_WIDE = ([4, 4], [6, 3])


def logps_and_grads(model, batch, tokens):
    """Summed log-probs and every trainable parameter's gradient with chunk size ``tokens``."""
    model.zero_grad(set_to_none=True)
    with chunk_size(tokens):
        logps = completion_logps(model, *batch)
    # Per-row weights, as a DPO loss gives each sequence its own coefficient.
    weights = torch.linspace(0.5, 2.0, logps.shape[0])
    (logps * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), grads


def assert_same(model, batch, chunk, *, atol=2e-5):
    want, want_grads = logps_and_grads(model, batch, 0)  # 0: today's full-logits path
    got, got_grads = logps_and_grads(model, batch, chunk)
    torch.testing.assert_close(got, want, atol=atol, rtol=0)
    assert got_grads.keys() == want_grads.keys() and want_grads
    for name, grad in want_grads.items():
        # float32 rounding, relative to each gradient's size
        assert (got_grads[name] - grad).norm() <= 1e-5 * grad.norm() + 1e-7, name


def count_chunked_calls(monkeypatch):
    calls = []
    real = chunked_head.linear_token_logps

    def spy(hidden, weight, bias, targets, chunk, valid=None):
        calls.append((int(valid.sum()), chunk))
        return real(hidden, weight, bias, targets, chunk, valid)

    monkeypatch.setattr(chunked_head, "linear_token_logps", spy)
    return calls


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("shape", [PER_ROW, BATCH_WIDE], ids=["per-row", "batch-wide"])
def test_equals_full_logits_path(tokenizer, tied, shape, monkeypatch):
    model = tiny_causal_lm(tokenizer, seed=3, tie_word_embeddings=tied)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    batch = rows(*shape, len(tokenizer), tokenizer.pad_token_id)
    calls = count_chunked_calls(monkeypatch)
    # 3 tokens per chunk divides none of the token counts (14 and 9 completion tokens).
    assert_same(model, batch, 3)
    n_tokens = int((batch[2][:, 1:]).sum())
    assert calls == [(n_tokens, 3)]


def test_one_chunk_and_one_token_chunks_agree(tokenizer):
    model = tiny_causal_lm(tokenizer, seed=4)
    batch = rows(*PER_ROW, len(tokenizer), tokenizer.pad_token_id)
    assert_same(model, batch, 1)
    assert_same(model, batch, 10_000)


def test_lora_adapter_gradients(tokenizer):
    base = tiny_causal_lm(tokenizer, seed=5)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    # B starts at zero; a non-zero B makes the adapters' gradients and outputs non-trivial.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    batch = rows(*PER_ROW, len(tokenizer), tokenizer.pad_token_id)
    _, grads = logps_and_grads(model, batch, 3)
    assert grads and all("lora_" in name for name in grads)  # the frozen head gets no gradient
    assert_same(model, batch, 3)


def test_gradient_checkpointing_same_gradients(tokenizer):
    model = tiny_causal_lm(tokenizer, seed=6)
    twin = copy.deepcopy(model)
    twin.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train(), twin.train()
    batch = rows(*PER_ROW, len(tokenizer), tokenizer.pad_token_id)
    want, want_grads = logps_and_grads(model, batch, 0)
    got, got_grads = logps_and_grads(twin, batch, 3)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
    for name, grad in want_grads.items():
        assert (got_grads[name] - grad).norm() <= 1e-5 * grad.norm() + 1e-7, name


def test_prefix_sharing(tokenizer):
    model = tiny_causal_lm(tokenizer, seed=7)
    gen = torch.Generator().manual_seed(1)

    def draw(n):
        return torch.randint(5, len(tokenizer), (n,), generator=gen).tolist()

    shared = shared_rows([draw(3), draw(6)], [draw(4), draw(2)], [draw(5), draw(1)], tokenizer.pad_token_id)
    keys = ("input_ids", "prompt_lengths", "chosen_lengths", "rejected_lengths")
    args = tuple(shared[k] for k in keys)

    def run(tokens):
        model.zero_grad(set_to_none=True)
        with chunk_size(tokens):
            out = shared_prefix_logps(model, *args)
        (out * torch.tensor([1.0, 2.0, -1.0, 0.5])).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    want, want_grads = run(0)
    got, got_grads = run(5)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
    for name, grad in want_grads.items():
        assert (got_grads[name] - grad).norm() <= 1e-5 * grad.norm() + 1e-7, name


def test_no_grad_forward(tokenizer):
    """The reference precompute and DPO-PoP's weak forward run under no_grad: same values, no graph."""
    model = tiny_causal_lm(tokenizer, seed=8).eval()
    batch = rows(*PER_ROW, len(tokenizer), tokenizer.pad_token_id)
    with torch.no_grad(), chunk_size(0):
        want = completion_logps(model, *batch)
    with torch.no_grad(), chunk_size(2):
        got = completion_logps(model, *batch)
    assert not got.requires_grad
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


def test_no_completion_token_scores_zero(tokenizer):
    model = tiny_causal_lm(tokenizer, seed=8)
    ids, mask, completion = rows(*BATCH_WIDE, len(tokenizer), tokenizer.pad_token_id)
    with chunk_size(2):
        got = completion_logps(model, ids, mask, torch.zeros_like(completion))
    assert got.tolist() == [0.0, 0.0]
    got.sum().backward()  # an empty chunk loop still has a backward
    assert model.lm_head.weight.grad.abs().sum() == 0


class ScaledHead(nn.Linear):
    """A head the chunked path cannot see through (it is not a plain Linear): doubled logits."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_unknown_head_falls_back_and_says_so_once(tokenizer, monkeypatch, capsys):
    monkeypatch.setattr(chunked_head, "_reported", set())
    model = tiny_causal_lm(tokenizer, seed=9).eval()
    head = ScaledHead(model.config.hidden_size, model.config.vocab_size, bias=False)
    head.weight = model.lm_head.weight
    model.lm_head = head
    calls = count_chunked_calls(monkeypatch)
    batch = rows(*PER_ROW, len(tokenizer), tokenizer.pad_token_id)
    with torch.no_grad(), chunk_size(3):
        first = completion_logps(model, *batch)
        completion_logps(model, *batch)
    assert calls == []
    err = capsys.readouterr().err
    assert err.count("log-probs from full logits") == 1 and "ScaledHead" in err
    # The fallback is the full-logits path, doubled logits included.
    logits = 2 * (model.model(input_ids=batch[0], attention_mask=batch[1]).last_hidden_state @ head.weight.T)
    token = torch.log_softmax(logits[:, :-1].detach(), -1).gather(-1, batch[0][:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(first, (token * batch[2][:, 1:]).sum(-1), atol=2e-5, rtol=0)


def test_logit_softcapping_falls_back(tokenizer, monkeypatch, capsys):
    monkeypatch.setattr(chunked_head, "_reported", set())
    model = tiny_causal_lm(tokenizer, seed=9).eval()
    model.config.final_logit_softcapping = 30.0
    calls = count_chunked_calls(monkeypatch)
    with torch.no_grad(), chunk_size(3):
        completion_logps(model, *rows(*PER_ROW, len(tokenizer), tokenizer.pad_token_id))
    assert calls == [] and "final_logit_softcapping=30.0" in capsys.readouterr().err


def test_linear_token_logps_by_hand():
    # h = [1, 0] and W rows [0, 0], [ln 3, 0]: logits [0, ln 3], p = [1/4, 3/4].
    hidden = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    weight = torch.tensor([[0.0, 0.0], [1.0986122887, 0.0]], requires_grad=True)
    got = linear_token_logps(hidden, weight, None, torch.tensor([1, 0]), chunk=1)
    torch.testing.assert_close(got, torch.tensor([0.75, 0.25]).log())
    got.sum().backward()
    # d/dW_v sum_i logp_i = sum_i (onehot(t_i) - p)_v h_i with h_i = [1, 0]:
    # row 0 gets -1/4 + 3/4, row 1 gets 1/4 - 3/4.
    torch.testing.assert_close(weight.grad, torch.tensor([[0.5, 0.0], [-0.5, 0.0]]))


@pytest.mark.parametrize("chunk", [3, 7])  # recomputed chunks; one chunk kept for the backward
def test_linear_token_logps_with_bias_against_autograd(chunk):
    gen = torch.Generator().manual_seed(0)
    leaves = [
        torch.randn(7, 5, dtype=torch.float64, generator=gen),
        torch.randn(11, 5, dtype=torch.float64, generator=gen),
        torch.randn(11, dtype=torch.float64, generator=gen),
    ]
    targets = torch.randint(0, 11, (7,), generator=gen)
    upstream = torch.randn(7, dtype=torch.float64, generator=gen)

    def grads(fn):
        inputs = [t.clone().requires_grad_() for t in leaves]
        out = fn(*inputs)
        (out.double() * upstream).sum().backward()
        return out.detach().double(), [t.grad for t in inputs]

    got, got_grads = grads(lambda h, w, b: linear_token_logps(h, w, b, targets, chunk=chunk))
    want, want_grads = grads(
        lambda h, w, b: torch.log_softmax(h @ w.T + b, -1).gather(1, targets[:, None]).squeeze(1)
    )
    # The log-probs are float32 (as on the full path); their gradients float64 here.
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)


def test_autocast_matches_the_full_path_in_bfloat16(tokenizer):
    model = tiny_causal_lm(tokenizer, seed=10).eval()
    batch = rows(*PER_ROW, len(tokenizer), tokenizer.pad_token_id)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with chunk_size(0):
            want = completion_logps(model, *batch)
        with chunk_size(3):
            got = completion_logps(model, *batch)
    # Both round the head's matmul to bfloat16; sums of ~14 tokens agree to that rounding.
    torch.testing.assert_close(got, want, atol=0.1, rtol=0.01)


def test_chunk_size_setting():
    assert chunk_tokens(128_256, None) == 2**24 // 128_256 == 130
    assert chunk_tokens(4096, None) == 4096
    assert chunk_tokens(4096, 7) == 7
    with pytest.raises(ValueError, match="logps_chunk_size"):
        set_chunk_size(-1)


def test_kernel_selection_falls_back_to_the_torch_loop_on_cpu(monkeypatch):
    hidden, weight = torch.zeros(2, 4), torch.zeros(8, 4)
    kernel, why = select_kernel(hidden, weight, None)
    assert kernel == "chunked" and "CUDA" in why
    # A Liger-Kernel whose reduction="none" backward lacks per-token gradients is not used.
    ops = types.ModuleType("liger_kernel.ops")
    flce = types.ModuleType("liger_kernel.ops.fused_linear_cross_entropy")

    def fused_linear_cross_entropy_forward(_input, weight, target, reduction="mean"):
        raise AssertionError("never called")

    flce.fused_linear_cross_entropy_forward = fused_linear_cross_entropy_forward
    flce.LigerFusedLinearCrossEntropyFunction = object
    ops.fused_linear_cross_entropy = flce
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.ops", ops)
    monkeypatch.setitem(sys.modules, "liger_kernel.ops.fused_linear_cross_entropy", flce)
    assert chunked_head._liger_function() is None
