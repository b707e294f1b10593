"""The testbed's annotator model: miscalibrated scores, Thurstone PoP judgements, their label files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import norm

from popalign.config import ConfigError
from popalign.data.load import load_preferences
from popalign.pop.build import PoPSpec
from popalign.pop.labels import load_pop_labels
from popalign.testbed.annotators import (
    AnnotatorPool,
    judge,
    judgement_error,
    observed_scores,
    oracle_scale,
    pop_label_errors,
    score_margins,
    true_margins,
    write_judged_labels,
)
from popalign.testbed.make_data import TaskSpec, make_dataset, read_split

SMALL = TaskSpec(train_prompts=300, test_prompts=60, seed=3)
CALIBRATED = replace(SMALL, annotator_scale_sd=0.0, annotator_offset_sd=0.0)
# sha256 of the training rows' texts, scores and rewards written by the single calibrated annotator the
# testbed had before the annotator model (format 1), for SMALL.
BEFORE_THE_POOL = "95d787c684c2600453ebcbf074b4ddbbf74d71a01e1746fce971976132aea69c"
KEYS = [
    "id",
    "prompt",
    "chosen",
    "rejected",
    "score_chosen",
    "score_rejected",
    "true_chosen",
    "true_rejected",
]


def _digest(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps([[r[k] for k in KEYS] for r in rows]).encode()).hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("annotated")
    record = make_dataset(SMALL, out)
    return out, record


def test_calibrated_annotators_are_the_old_single_annotator(tmp_path):
    for annotators in (1, 20):
        make_dataset(replace(CALIBRATED, annotators=annotators), tmp_path / str(annotators))
        assert _digest(read_split(tmp_path / str(annotators), "train")) == BEFORE_THE_POOL


def test_an_annotator_stretches_around_the_midpoint_and_shifts():
    spec = TaskSpec(noise=0.0, score_step=0.01)
    true = np.array([5.5, 6.5, 4.0])
    got = observed_scores(true, spec, np.random.default_rng(0), scale=2.0, offset=0.5)
    assert got == pytest.approx([6.0, 8.0, 3.0])  # 5.5 + 0.5 + 2 (r* - 5.5)


def test_margin_correlation_matches_the_scale_model_analytically():
    # One annotator per preference, no noise, no rounding, margins small enough never to be clipped:
    # the observed margin is s * d, so corr = E[s] Var(d) / sqrt(Var(d) Var(s d)).
    sd, n = 0.8, 200_000
    rng = np.random.default_rng(0)
    d = rng.uniform(0.0, 0.2, n)
    s = np.exp(rng.normal(0.0, sd, n))
    spec = TaskSpec(noise=0.0, score_step=1e-9)
    chosen = observed_scores(5.5 + d / 2, spec, rng, scale=s)
    rejected = observed_scores(5.5 - d / 2, spec, rng, scale=s)
    assert chosen - rejected == pytest.approx(s * d, abs=1e-8)
    es, es2 = np.exp(sd**2 / 2), np.exp(2 * sd**2)
    var_d, mean_d = 0.2**2 / 12, 0.1
    analytic = es * var_d / np.sqrt(var_d * (es2 * (var_d + mean_d**2) - es**2 * mean_d**2))
    assert np.corrcoef(chosen - rejected, d)[0, 1] == pytest.approx(analytic, abs=0.01)


def test_default_annotators_miscalibrate_margins(small, tmp_path):
    out, record = small
    stats = record["annotators"]
    rows = read_split(out, "train")
    observed, true = score_margins(rows), true_margins(rows)
    assert stats["margin_correlation"] == pytest.approx(np.corrcoef(observed, true)[0, 1])
    calibrated = make_dataset(CALIBRATED, tmp_path)["annotators"]
    # The premise bites: miscalibrated scores track the true margins clearly worse than calibrated ones.
    assert stats["margin_correlation"] < calibrated["margin_correlation"] - 0.1
    assert stats["pop_label_error"]["scores"] > calibrated["pop_label_error"]["scores"]
    # At the defaults, comparative judgements order pairs better than labels derived from the scores.
    assert stats["pop_label_error"]["judged"] < stats["pop_label_error"]["scores"]
    pool = AnnotatorPool.draw(SMALL)
    assert {r["annotator"] for r in rows} <= set(range(SMALL.annotators)) and pool.scales.shape == (20,)
    assert (
        stats["pool"]["scales"] == pool.scales.tolist() and stats["pool"]["offsets"] == pool.offsets.tolist()
    )
    # Without noise, each score is the recorded annotator's reading of r*, up to rounding and clipping.
    quiet = replace(SMALL, noise=0.0)
    make_dataset(quiet, tmp_path / "quiet")
    for r in read_split(tmp_path / "quiet", "train"):
        a = r["annotator"]
        for side in ("chosen", "rejected"):
            reading = 5.5 + pool.offsets[a] + pool.scales[a] * (r[f"true_{side}"] - 5.5)
            assert abs(r[f"score_{side}"] - np.clip(reading, 1, 10)) <= 0.25 + 1e-9


def test_oracle_margins_are_the_true_margins_at_the_score_margins_size(small):
    out, record = small
    rows = read_split(out, "train")
    true, observed = true_margins(rows), score_margins(rows)
    scale = record["annotators"]["oracle_scale"]
    assert scale == pytest.approx(oracle_scale(true, observed))
    column = load_preferences(str(out))[0].margin_column
    assert column == pytest.approx(scale * true)
    assert np.sqrt(np.mean(column**2)) == pytest.approx(np.sqrt(np.mean(observed**2)))
    # The test split carries the training split's scale, never its own.
    test = read_split(out, "test")
    assert [r["margin"] for r in test] == pytest.approx(scale * true_margins(test))


def test_judgement_error_is_thurstones():
    assert judgement_error(np.array([1.0]), 0.5)[0] == pytest.approx(0.158655, abs=1e-6)  # Phi(-1)
    assert judgement_error(np.array([1.0, -1.0, 0.0]), 0.0).tolist() == [0.0, 0.0, 0.5]
    n = 40_000
    right = judge(np.ones(n), np.zeros(n), 0.5, np.random.default_rng(0))
    se = np.sqrt(0.158655 * (1 - 0.158655) / n)
    assert abs((~right).mean() - 0.158655) < 4 * se
    assert judge(np.ones(n), np.zeros(n), 0.0, np.random.default_rng(0)).all()


def test_pop_label_errors_by_hand():
    true = np.array([0.0, 1.0, 3.0])
    got = pop_label_errors(true, np.array([0.0, 2.0, 1.0]), 0.5, 1.0)
    # True pairs with gap >= 1: gaps 1, 3, 2. Score pairs with gap >= 1: (1>0), (2>0) right, (1>2) wrong.
    assert got["judged_pairs"] == 3 and got["scores_pairs"] == 3
    assert got["judged"] == pytest.approx(norm.sf([1.0, 3.0, 2.0]).mean())
    assert got["scores"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("strategy", ["iterative", "random"])
def test_judged_labels_round_trip_through_the_label_reader(small, tmp_path, strategy):
    out, _ = small
    rows = read_split(out, "train")
    true = true_margins(rows)
    table = load_preferences(str(out), tie_policy="keep")[0]
    pop = PoPSpec(strategy=strategy, k=2.0, min_gap=1.0, seed=5)
    path = tmp_path / "labels.jsonl"
    summary = write_judged_labels(rows, pop, 0.5, path)
    pairs = load_pop_labels(path, table)
    assert len(pairs) == summary["pairs"] > 0
    wrong = true[pairs.strong_idx] <= true[pairs.weak_idx]
    assert int(wrong.sum()) == summary["label_errors"] == summary["judge_errors"]
    # The realised error rate is the model's, within binomial error.
    rate, expected = summary["judge_errors"] / summary["pairs"], summary["expected_judge_error"]
    assert abs(rate - expected) < 4 * np.sqrt(expected * (1 - expected) / summary["pairs"])
    # Deterministic, and drawn on the true margins: a perfect judge agrees with them everywhere.
    write_judged_labels(rows, pop, 0.5, tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == path.read_bytes()
    perfect = write_judged_labels(rows, pop, 0.0, tmp_path / "perfect.jsonl")
    strong = load_pop_labels(tmp_path / "perfect.jsonl", table)
    assert perfect["label_errors"] == 0
    assert (true[strong.strong_idx] - true[strong.weak_idx] >= 1.0).all()


def test_injected_noise_flips_judged_labels(small, tmp_path):
    out, _ = small
    rows = read_split(out, "train")
    pop = PoPSpec(strategy="random", k=1.0, min_gap=1.0, seed=0, noise=1.0)
    summary = write_judged_labels(rows, pop, 0.0, tmp_path / "flipped.jsonl")
    assert summary["flipped"] == summary["pairs"] == summary["label_errors"]


def test_the_task_record_follows_the_samplers_gap_without_remaking_the_data(tmp_path):
    from popalign.config import load_config
    from popalign.testbed.plan import Layout
    from popalign.testbed.reproduce import ensure_data
    from popalign.testbed.settings import ReproduceConfig

    def cfg(gap: float) -> ReproduceConfig:
        sizes = ["task.train_prompts=120", "task.test_prompts=10"]
        return load_config(ReproduceConfig, None, [f"output_dir={tmp_path}", *sizes, f"pop.min_gap={gap}"])

    layout = Layout.of(cfg(1.0))
    first = ensure_data(cfg(1.0), layout)["annotators"]["pop_label_error"]
    train = (layout.data / "train.jsonl").read_bytes()
    wider = ensure_data(cfg(2.0), layout)["annotators"]["pop_label_error"]
    assert (first["min_gap"], wider["min_gap"]) == (1.0, 2.0)
    assert wider["judged_pairs"] < first["judged_pairs"] and wider["judged"] < first["judged"]
    assert (layout.data / "train.jsonl").read_bytes() == train
    record = json.loads((layout.data / "task.json").read_text())
    assert record["annotators"]["pop_label_error"] == wider


def test_the_oracle_factor_scales_the_oracle_margins_and_nothing_else(small, tmp_path):
    out, record = small
    assert replace(SMALL, oracle_factor=1.0).fingerprint() == SMALL.fingerprint()  # older data stays valid
    doubled = replace(SMALL, oracle_factor=2.0)
    assert doubled.fingerprint() != SMALL.fingerprint()
    twice = make_dataset(doubled, tmp_path / "twice")
    assert twice["oracle_margin_scale"] == pytest.approx(2 * record["oracle_margin_scale"])
    for split in ("train", "test"):
        base, scaled = read_split(out, split), read_split(tmp_path / "twice", split)
        assert [r["margin"] for r in scaled] == pytest.approx([2 * r["margin"] for r in base])
        strip = [{k: v for k, v in r.items() if k != "margin"} for r in base]
        assert strip == [{k: v for k, v in r.items() if k != "margin"} for r in scaled]
    with pytest.raises(ConfigError, match="oracle_factor"):
        replace(SMALL, oracle_factor=-1.0).validate()
