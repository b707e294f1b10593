"""The testbed's preference files: determinism, UltraFeedback's binarising and scale, margin shape."""

from __future__ import annotations

import json

import numpy as np
import pytest

from popalign.config import ConfigError
from popalign.data.load import load_preferences
from popalign.testbed.annotators import observed_scores
from popalign.testbed.make_data import (
    TaskSpec,
    binarise,
    draw_prompts,
    make_dataset,
    read_split,
)
from popalign.testbed.task import reward

SMALL = TaskSpec(train_prompts=300, test_prompts=60, seed=3)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("testbed")
    make_dataset(SMALL, out)
    return out


def test_same_spec_writes_the_same_bytes(small, tmp_path):
    make_dataset(SMALL, tmp_path)
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_bytes() == (small / name).read_bytes()
    other = TaskSpec(train_prompts=300, test_prompts=60, seed=4)
    assert other.fingerprint() != SMALL.fingerprint()


def test_files_load_as_ordinary_preferences(small):
    train, report = load_preferences(str(small))
    test, _ = load_preferences(str(small), split="test")
    assert (len(train), len(test)) == (300, 60)
    assert report.rows_skipped == 0
    assert (train.margins >= 0).all()
    assert json.loads((small / "task.json").read_text())["score_fn"] == "popalign.testbed.task:reward"


def test_scores_follow_ultrafeedback_scale_and_truth(small):
    for split in ("train", "test"):
        for row in read_split(small, split):
            for side in ("chosen", "rejected"):
                score = row[f"score_{side}"]
                assert 1.0 <= score <= 10.0 and score * 2 == int(score * 2)
                assert row[f"true_{side}"] == pytest.approx(reward(row["prompt"], row[side]))


def test_test_prompts_never_occur_in_training(small):
    train = {r["prompt"] for r in read_split(small, "train")}
    assert not train & {r["prompt"] for r in read_split(small, "test")}


def test_prompts_are_distinct():
    prompts = draw_prompts(500, np.random.default_rng(0))
    assert len({p.text for p in prompts}) == 500


def test_binarise_takes_the_best_and_another():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = rng.choice([5.0, 6.5, 8.0], size=4)
        chosen, rejected = binarise(scores, rng)
        assert scores[chosen] == scores.max() and rejected != chosen


def test_binarise_tie_gives_zero_margin():
    chosen, rejected = binarise(np.array([7.0, 7.0]), np.random.default_rng(0))
    assert {chosen, rejected} == {0, 1}


def test_noiseless_scores_are_rounded_truth():
    spec = TaskSpec(noise=0.0)
    got = observed_scores(np.array([0.2, 3.26, 7.74, 9.9, 12.0]), spec, np.random.default_rng(0))
    assert got.tolist() == [1.0, 3.5, 7.5, 10.0, 10.0]


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError):
        TaskSpec(candidates=1).validate()
    with pytest.raises(ConfigError):
        TaskSpec(train_prompts=10**6).validate()


def test_default_margins_resemble_ultrafeedback(tmp_path, ultrafeedback_dir):
    make_dataset(TaskSpec(), tmp_path)
    ours = load_preferences(str(tmp_path))[0].margins
    real = load_preferences(str(ultrafeedback_dir))[0].margins
    # The design target (docs/testbed.md): mean margin, tie share and quartiles near UltraFeedback's.
    assert abs(ours.mean() - real.mean()) < 0.3
    assert abs((ours == 0).mean() - (real == 0).mean()) < 0.05
    assert np.abs(np.percentile(ours, [25, 50, 75]) - np.percentile(real, [25, 50, 75])).max() <= 0.5


def test_a_validation_split_leaves_train_and_test_as_they_were(small, tmp_path):
    from dataclasses import replace

    spec = replace(SMALL, validation_prompts=40)
    record = make_dataset(spec, tmp_path)
    assert record["splits"] == {"train": 300, "test": 60, "validation": 40}
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_bytes() == (small / name).read_bytes()
    prompts = {split: {r["prompt"] for r in read_split(tmp_path, split)} for split in ("train", "test")}
    held_out = {r["prompt"] for r in read_split(tmp_path, "validation")}
    assert len(held_out) == 40 and not held_out & (prompts["train"] | prompts["test"])
    table, _ = load_preferences(str(tmp_path), split="validation", tie_policy="keep")
    assert len(table) == 40 and table.has_scores
    # Data made before the split existed keeps its fingerprint; a validation split changes it.
    assert spec.fingerprint() != SMALL.fingerprint()
    assert replace(SMALL, validation_prompts=0).fingerprint() == SMALL.fingerprint()
