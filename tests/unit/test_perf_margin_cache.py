"""The weak-pair margin cache (loss.margin_refresh_steps): freshness rule, row selection, trainer wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import TrainingArguments

from popalign.config import ConfigError, load_config
from popalign.data.tokenize import TokenizedPreferences
from popalign.methods import get_method
from popalign.modeling.pair_batch import WEAK, PairBatch, select_pairs
from popalign.modeling.tiny import tiny_causal_lm
from popalign.modeling.tokenizer import build_local_tokenizer
from popalign.train.collate import PairExamples, PreferenceCollator
from popalign.train.config import LossSpec, TrainConfig
from popalign.train.margin_cache import WeakRewardCache
from popalign.train.trainer import PreferenceTrainer


def test_entries_serve_refresh_steps_steps():
    cache = WeakRewardCache(refresh_steps=3)
    cache.store([4, 9], torch.tensor([1.0, 2.0]), torch.tensor([-1.0, -2.0]), step=10)
    fresh, chosen, rejected = cache.lookup([9, 4, 5], step=12)  # age 2 < 3: fresh; 5 never stored
    assert fresh == [True, True, False]
    assert (chosen, rejected) == ([2.0, 1.0, 0.0], [-2.0, -1.0, 0.0])
    assert cache.lookup([4], step=13)[0] == [False]  # age 3: stale
    assert (cache.hits, cache.misses, len(cache)) == (2, 2, 2)
    cache.store([4], torch.tensor([5.0]), torch.tensor([6.0]), step=13)
    assert cache.lookup([4], step=13) == ([True], [5.0], [6.0])
    with pytest.raises(ValueError, match="refresh_steps"):
        WeakRewardCache(0)


def test_cache_states_of_several_processes_merge_keeping_the_newer_entry():
    one, two = WeakRewardCache(refresh_steps=3), WeakRewardCache(refresh_steps=3)
    one.store([1, 2], torch.tensor([0.25, 0.5]), torch.tensor([-0.25, -0.5]), step=4)
    two.store([2, 3], torch.tensor([0.75, 1.0]), torch.tensor([-0.75, -1.0]), step=5)
    two.store([1], torch.tensor([9.0]), torch.tensor([9.0]), step=3)  # older than one's entry for row 1
    merged = WeakRewardCache(refresh_steps=3)
    for state in (torch_round_trip(one.state_dict()), torch_round_trip(two.state_dict())):
        merged.merge_state_dict(state)
    assert merged.lookup([1, 2, 3], step=5) == ([True, True, True], [0.25, 0.75, 1.0], [-0.25, -0.75, -1.0])


def torch_round_trip(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_select_pairs_keeps_chosen_and_rejected_rows_of_the_plain_layout():
    batch = PairBatch.build(
        {"input_ids": torch.arange(6)[:, None], "attention_mask": torch.ones(6, 1)},  # strong: untouched
        weak={
            "input_ids": torch.tensor([[10], [11], [12], [20], [21], [22]]),  # B = 3: chosen, rejected
            "attention_mask": torch.ones(6, 1),
            "reference_chosen_logps": torch.tensor([0.0, 1.0, 2.0]),
        },
        weak_index=torch.tensor([7, 8, 9]),
    )
    sub = select_pairs(batch.pair(WEAK), torch.tensor([0, 2]))
    assert sub["input_ids"].squeeze(-1).tolist() == [10, 12, 20, 22]
    assert sub["reference_chosen_logps"].tolist() == [0.0, 2.0]
    assert set(sub) == {"input_ids", "attention_mask", "reference_chosen_logps"}
    shared = {"input_ids": torch.tensor([[1], [2], [3]]), "prompt_lengths": torch.tensor([4, 5, 6])}
    sub = select_pairs(shared, torch.tensor([1]))
    assert sub["input_ids"].tolist() == [[2]] and sub["prompt_lengths"].tolist() == [5]


def test_config_refuses_a_refresh_below_one():
    with pytest.raises(ConfigError, match="margin_refresh_steps"):
        load_config(TrainConfig, None, ["data.path=x.jsonl", "loss.margin_refresh_steps=0"]).validate()


@pytest.fixture(scope="module")
def setup():
    tokenizer = build_local_tokenizer()
    gen = torch.Generator().manual_seed(0)

    def draw(n):
        return torch.randint(5, len(tokenizer), (n,), generator=gen).tolist()

    n = 6
    tokenized = TokenizedPreferences(
        [draw(3 + i % 3) for i in range(n)],
        [draw(4 + i % 2) for i in range(n)],
        [draw(2 + i) for i in range(n)],
    )
    ref = np.linspace(-30.0, -20.0, n)
    return tokenizer, tokenized, ref


def make_trainer(setup, tmp_path, refresh: int):
    tokenizer, tokenized, ref = setup
    model = tiny_causal_lm(tokenizer, seed=0)
    collator = PreferenceCollator(
        tokenized,
        tokenizer.pad_token_id,
        reference_chosen_logps=ref,
        reference_rejected_logps=ref - 1.0,
        with_weak=True,
    )
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = PreferenceTrainer(
        model=model,
        args=args,
        train_dataset=PairExamples(np.arange(6), np.arange(6)[::-1].copy()),
        data_collator=collator,
        method=get_method("dpo-pop"),
        loss=LossSpec(margin_refresh_steps=refresh),
    )
    # Move the policy away from the target, so target rewards differ from the policy's and from 0.
    with torch.no_grad():
        for p in trainer.target.copy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return trainer, collator


def weak_rewards(trainer, collator, strong, weak):
    batch = collator([{"strong": s, "weak": w} for s, w in zip(strong, weak, strict=True)])
    return trainer._weak_rewards(trainer.model, batch, {})


def test_trainer_recomputes_only_stale_rows_and_matches_the_uncached_rewards(setup, tmp_path):
    exact, collator = make_trainer(setup, tmp_path / "a", refresh=1)
    cached, _ = make_trainer(setup, tmp_path / "b", refresh=5)
    assert exact.margin_cache is None and cached.margin_cache.refresh_steps == 5

    want_c, want_r = weak_rewards(exact, collator, [0, 1, 2], [3, 4, 5])
    got_c, got_r = weak_rewards(cached, collator, [0, 1, 2], [3, 4, 5])
    assert cached.weak_forward_rows == 3
    torch.testing.assert_close((got_c, got_r), (want_c, want_r), atol=1e-5, rtol=0)
    assert not torch.equal(want_c, want_r)

    cached.state.global_step = 4  # age 4 < 5: all three served from the cache, no forward
    again = weak_rewards(cached, collator, [1, 0, 2], [5, 3, 4])
    assert cached.weak_forward_rows == 3
    torch.testing.assert_close(again, (got_c[[2, 0, 1]], got_r[[2, 0, 1]]))

    # Weak 0 is new and 3 is stale at step 8 (computed at step 0): only those two rows run.
    cached.state.global_step = 8
    mixed_c, mixed_r = weak_rewards(cached, collator, [1, 2], [0, 3])
    assert cached.weak_forward_rows == 5
    want_c, want_r = weak_rewards(exact, collator, [1, 2], [0, 3])
    torch.testing.assert_close((mixed_c, mixed_r), (want_c, want_r), atol=1e-5, rtol=0)
