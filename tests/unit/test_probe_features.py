"""The probe's feature cache: pooling, length batches, and resuming after a kill without recomputing."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from popalign.data.load import load_preferences
from popalign.probe.features import FeatureSpec, length_batches, pool_batch, table_features


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from popalign.modeling.tiny import tiny_causal_lm
    from popalign.modeling.tokenizer import build_local_tokenizer

    folder = tmp_path_factory.mktemp("probe_model")
    tokenizer = build_local_tokenizer()
    tiny_causal_lm(tokenizer, seed=0, hidden_size=32, intermediate_size=64).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def table(ultrafeedback_dir):
    return load_preferences(str(ultrafeedback_dir / "test.jsonl"), limit=10)[0]


def _spec(cache) -> FeatureSpec:
    return FeatureSpec(
        max_length=64, max_prompt_length=32, batch_tokens=128, shard_size=4, cache_dir=str(cache),
        dtype="float32", progress=False,
    )  # fmt: skip


class Killed(Exception):
    pass


def test_extraction_resumes_after_a_kill_without_recomputing_finished_shards(tiny_model_dir, table, tmp_path):
    spec = _spec(tmp_path / "cache")

    def kill_after_two(done: int) -> None:
        if done == 2:
            raise Killed

    with pytest.raises(Killed):
        table_features(table, tiny_model_dir, spec, on_shard=kill_after_two)
    shards = list((tmp_path / "cache" / "probe").glob("*/*.npz"))
    assert len(shards) == 2
    written = {p: p.stat().st_mtime_ns for p in shards}

    computed: list[int] = []
    resumed = table_features(table, tiny_model_dir, spec, on_shard=computed.append)
    n = resumed.info["sequences"]
    assert n > 12  # 10 preferences, two replies each (identical replies are stored once)
    assert resumed.info["sequences_cached"] == 8 and resumed.info["sequences_computed"] == n - 8
    assert resumed.info["shards_computed"] == len(computed) == math.ceil((n - 8) / 4)
    assert all(p.stat().st_mtime_ns == t for p, t in written.items())  # finished shards untouched

    fresh = table_features(table, tiny_model_dir, _spec(tmp_path / "fresh"))
    np.testing.assert_allclose(resumed.chosen, fresh.chosen, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(resumed.rejected, fresh.rejected, rtol=1e-5, atol=1e-6)
    assert resumed.chosen.shape == (10, 2 * 32)

    again = table_features(table, tiny_model_dir, spec)
    assert again.info["sequences_cached"] == n and again.info["shards_computed"] == 0


def test_a_new_max_length_recomputes_only_the_rows_it_changes(tiny_model_dir, tmp_path):
    from popalign.data.schema import PreferenceTable

    long = " ".join(["word"] * 300)
    table = PreferenceTable(
        ids=["0", "1", "2", "3"],
        prompts=["hi", "hello", "question", "tell me"],
        chosen=["yes", "fine", long, long + " more"],
        rejected=["no", "bad", long + " less", long + " other"],
    )
    table_features(table, tiny_model_dir, _spec(tmp_path))
    longer = dataclasses.replace(_spec(tmp_path), max_length=96, max_prompt_length=48)
    second = table_features(table, tiny_model_dir, longer)
    # The short rows were not cut at 64 tokens: same token rows, read from the cache. The long ones are cut
    # elsewhere now; cut, each row's two replies are the same tokens, stored once.
    assert second.info["sequences_cached"] == 4 and second.info["sequences_computed"] == 2


def test_pooling_is_the_last_token_and_the_reply_mean(tiny_model_dir):
    """Padding changes nothing, and the two halves are the last token's and the reply's mean state."""
    import torch

    from popalign.modeling.load import load_causal_lm

    model = load_causal_lm(tiny_model_dir, dtype="float32").eval()
    rows, starts = [[5, 6, 7, 8, 9], [5, 6, 7]], [2, 1]
    batch = pool_batch(model, rows, starts, pad_id=0)
    for b, (row, start) in enumerate(zip(rows, starts, strict=True)):
        with torch.no_grad():
            hidden = model.base_model(input_ids=torch.tensor([row])).last_hidden_state[0]
        np.testing.assert_allclose(batch[b, :32], hidden[-1].numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(batch[b, 32:], hidden[start:].mean(0).numpy(), rtol=1e-4, atol=1e-5)


def test_length_batches_respect_the_token_budget():
    lengths = [3, 3, 4, 5, 9, 10]
    batches = length_batches(lengths, batch_tokens=12)
    assert [p for b in batches for p in b] == list(range(len(lengths)))
    assert all(len(b) * max(lengths[p] for p in b) <= 12 for b in batches)
    assert batches == [[0, 1, 2], [3], [4], [5]]
