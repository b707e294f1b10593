"""Completion-only log-probs against a naive reference and hand-worked values; tiny models; reward scores."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from popalign.modeling.logps import completion_logps, sequence_scores
from popalign.modeling.tiny import tiny_causal_lm, tiny_llama_config, tiny_reward_model
from popalign.modeling.tokenizer import build_local_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_local_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_causal_lm(tokenizer, seed=0).eval()


def make_batch(prompt_lens, completion_lens, vocab, pad_id, seed=0):
    """Right-padded (input_ids, attention_mask, completion_mask) from random ids, lengths per row."""
    gen = torch.Generator().manual_seed(seed)
    seq_len = max(p + c for p, c in zip(prompt_lens, completion_lens, strict=True))
    rows = len(prompt_lens)
    input_ids = torch.full((rows, seq_len), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(rows, seq_len, dtype=torch.long)
    completion_mask = torch.zeros(rows, seq_len, dtype=torch.long)
    for b, (p, c) in enumerate(zip(prompt_lens, completion_lens, strict=True)):
        input_ids[b, : p + c] = torch.randint(5, vocab, (p + c,), generator=gen)
        attention_mask[b, : p + c] = 1
        completion_mask[b, p : p + c] = 1
    return input_ids, attention_mask, completion_mask


def naive_logps(model, input_ids, attention_mask, completion_mask, average=False):
    """Full logits, full log_softmax, gather, mask, sum: the definition, with no shortcut."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    token = logprobs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = completion_mask[:, 1:].float()
    total = (token * mask).sum(-1)
    return total / mask.sum(-1) if average else total


SHAPES = [
    ([3], [4]),  # one row, no padding
    ([2, 5, 9], [6, 3, 1]),  # prompts of different lengths, right padding
    ([7, 1, 4, 4], [1, 8, 2, 5]),  # first completion token at position 1
    ([12, 12], [3, 3]),  # long common prompt: logits_to_keep much smaller than T
]


@pytest.mark.parametrize("prompt_lens,completion_lens", SHAPES)
@pytest.mark.parametrize("average", [False, True])
def test_equals_naive_reference(model, tokenizer, prompt_lens, completion_lens, average):
    batch = make_batch(prompt_lens, completion_lens, len(tokenizer), tokenizer.pad_token_id)
    with torch.no_grad():
        got = completion_logps(model, *batch, average=average)
        want = naive_logps(model, *batch, average=average)
    assert got.shape == (len(prompt_lens),)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got < 0).all()


def test_average_is_sum_over_token_count(model, tokenizer):
    batch = make_batch([2, 4], [5, 2], len(tokenizer), tokenizer.pad_token_id)
    with torch.no_grad():
        total = completion_logps(model, *batch)
        mean = completion_logps(model, *batch, average=True)
    torch.testing.assert_close(mean, total / torch.tensor([5.0, 2.0]))


def test_concatenated_batch_equals_separate_batches(model, tokenizer):
    vocab, pad = len(tokenizer), tokenizer.pad_token_id
    chosen = make_batch([3, 6], [5, 2], vocab, pad, seed=1)  # T = 8
    rejected = make_batch([3, 6], [9, 1], vocab, pad, seed=2)  # T = 12
    width = max(chosen[0].shape[1], rejected[0].shape[1])

    def pad_to(t, value):
        return nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    joint = [
        torch.cat([pad_to(c, pad if i == 0 else 0), pad_to(r, pad if i == 0 else 0)])
        for i, (c, r) in enumerate(zip(chosen, rejected, strict=True))
    ]
    with torch.no_grad():
        separate = torch.cat([completion_logps(model, *chosen), completion_logps(model, *rejected)])
        together = completion_logps(model, *joint)
    torch.testing.assert_close(together, separate, atol=1e-5, rtol=0)


def test_tokens_outside_the_completion_do_not_matter(model, tokenizer):
    input_ids, attention_mask, completion_mask = make_batch([3, 5], [4, 2], len(tokenizer), 2)
    changed = input_ids.clone()
    changed[1, 7:] = 9  # padding of row 1 (its sequence ends at position 7)
    with torch.no_grad():
        before = completion_logps(model, input_ids, attention_mask, completion_mask)
        after = completion_logps(model, changed, attention_mask, completion_mask)
    torch.testing.assert_close(before, after, atol=1e-6, rtol=0)


def test_gradient_reaches_the_model(tokenizer):
    model = tiny_causal_lm(tokenizer, seed=3)
    batch = make_batch([2, 4], [3, 3], len(tokenizer), tokenizer.pad_token_id)
    completion_logps(model, *batch).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert model.lm_head.weight.grad.abs().sum() > 0
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


class FixedLM(nn.Module):
    """Logits ``row_logits`` at every position; records the ``logits_to_keep`` it was asked for."""

    def __init__(self, row_logits):
        super().__init__()
        self.row_logits = torch.tensor(row_logits)
        self.kept = []

    def forward(self, input_ids, attention_mask=None, use_cache=None, logits_to_keep=0):
        self.kept.append(logits_to_keep)
        positions = input_ids.shape[1] if logits_to_keep == 0 else logits_to_keep
        return SimpleNamespace(logits=self.row_logits.expand(input_ids.shape[0], positions, -1).clone())


class FixedLMWithoutKeep(FixedLM):
    """An older-style model whose forward has no ``logits_to_keep``: it always returns every position."""

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return super().forward(input_ids, attention_mask, use_cache)


def test_hand_worked_values_and_logits_to_keep():
    # Two-token vocabulary with logits [0, ln 3]: p(1) = 3/4, p(0) = 1/4 at every position.
    model = FixedLM([0.0, math.log(3.0)])
    input_ids = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 0, 1]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    completion_mask = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]])
    got = completion_logps(model, input_ids, attention_mask, completion_mask)
    want = torch.tensor([math.log(3 / 4) + math.log(1 / 4), math.log(1 / 4) + math.log(3 / 4)])
    torch.testing.assert_close(got, want)
    # The first completion token over the batch is at position 2: logits from position 1 on, T - 2 + 1 = 4.
    assert model.kept == [4]
    mean = completion_logps(model, input_ids, attention_mask, completion_mask, average=True)
    torch.testing.assert_close(mean, want / 2)


def test_model_without_logits_to_keep_gets_full_logits():
    # Uniform logits over 4 tokens: every completion token costs log(1/4).
    model = FixedLMWithoutKeep([0.0, 0.0, 0.0, 0.0])
    input_ids = torch.tensor([[1, 2, 3, 0, 1, 2]])
    completion_mask = torch.tensor([[0, 0, 1, 1, 1, 0]])
    got = completion_logps(model, input_ids, torch.ones_like(input_ids), completion_mask)
    torch.testing.assert_close(got, torch.tensor([3 * math.log(1 / 4)]))
    assert model.kept == [0]  # the model's default: every position


def test_padding_marked_as_completion_is_ignored():
    model = FixedLM([0.0, 0.0])
    input_ids = torch.tensor([[1, 0, 1, 1]])
    completion_mask = torch.tensor([[0, 1, 1, 1]])
    attention_mask = torch.tensor([[1, 1, 1, 0]])
    got = completion_logps(model, input_ids, attention_mask, completion_mask)
    torch.testing.assert_close(got, torch.tensor([2 * math.log(1 / 2)]))


def test_scoring_token_zero_is_rejected():
    model = FixedLM([0.0, 0.0])
    ids = torch.tensor([[1, 0, 1]])
    with pytest.raises(ValueError, match="token 0"):
        completion_logps(model, ids, torch.ones_like(ids), torch.tensor([[1, 1, 0]]))
    one = torch.tensor([[1]])
    with pytest.raises(ValueError, match="two tokens"):
        completion_logps(model, one, one, torch.zeros_like(one))


def test_tiny_models_are_deterministic_per_seed(tokenizer):
    state = torch.random.get_rng_state()
    a, b, c = (tiny_causal_lm(tokenizer, seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert a.config.vocab_size == len(tokenizer)
    assert (a.config.pad_token_id, a.config.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert a.generation_config.eos_token_id == tokenizer.eos_token_id


def test_tiny_config_passes_extra_keywords():
    config = tiny_llama_config(
        100, hidden_size=32, num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=1e-5
    )
    assert (config.vocab_size, config.hidden_size, config.head_dim, config.rms_norm_eps) == (
        100,
        32,
        16,
        1e-5,
    )


def test_sequence_scores_handle_right_padding(tokenizer):
    reward_model = tiny_reward_model(tokenizer, seed=0).eval()
    assert reward_model.config.num_labels == 1
    input_ids, attention_mask, _ = make_batch([2, 4, 1], [3, 4, 2], len(tokenizer), tokenizer.pad_token_id)
    with torch.no_grad():
        scores = sequence_scores(reward_model, input_ids, attention_mask)
        alone = [
            reward_model(input_ids=input_ids[b : b + 1, : int(attention_mask[b].sum())]).logits[0, 0]
            for b in range(3)
        ]
    assert scores.shape == (3,)
    torch.testing.assert_close(scores, torch.stack(alone), atol=1e-5, rtol=0)


def test_reference_precompute_refuses_weights_this_process_never_loaded(tokenizer, tmp_path):
    # What FSDP's cpu_ram_efficient_loading leaves on every process but the first.
    from popalign.errors import PopalignError
    from popalign.modeling.reference import cached_reference_logps

    with torch.device("meta"):
        empty = tiny_causal_lm(tokenizer)
    with pytest.raises(PopalignError, match="not loaded in this process.*fsdp_cpu_ram_efficient_loading"):
        cached_reference_logps(empty, SimpleNamespace(fingerprint="x"), 0, tmp_path)
