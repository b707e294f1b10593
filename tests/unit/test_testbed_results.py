"""Reading finished runs back: on the testbed, discriminative figures are judged against r*'s margins."""

from __future__ import annotations

import json

import pytest

from popalign.testbed.plan import Layout, RunSpec
from popalign.testbed.results import load_run, metric

# Two test preferences: the annotators ordered the first one wrongly (its true margin is negative).
TEST = [
    {
        "id": "t0",
        "prompt": "p",
        "chosen": "a",
        "rejected": "b",
        "score_chosen": 6.0,
        "score_rejected": 5.0,
        "true_chosen": 7.0,
        "true_rejected": 7.5,
    },
    {
        "id": "t1",
        "prompt": "q",
        "chosen": "c",
        "rejected": "d",
        "score_chosen": 8.0,
        "score_rejected": 4.0,
        "true_chosen": 8.0,
        "true_rejected": 6.0,
    },
]


def _finished_run(root, data):
    data.mkdir(parents=True, exist_ok=True)
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TEST))
    folder = Layout(root).run("dpo", 0)
    (folder / "eval").mkdir(parents=True)
    (folder / "done.json").write_text(json.dumps({"steps": 10}))
    (folder / "eval" / "discriminative.json").write_text(json.dumps({"metrics": {}}))
    preds = [
        {"id": "t0", "predicted_margin": 0.5, "gt_margin": 1.0},
        {"id": "t1", "predicted_margin": 2.0, "gt_margin": 4.0},
    ]
    (folder / "eval" / "discriminative_predictions.jsonl").write_text(
        "".join(json.dumps(p) + "\n" for p in preds)
    )


def test_testbed_runs_are_judged_against_the_true_margins(tmp_path):
    _finished_run(tmp_path, tmp_path / "data")
    run = load_run(Layout(tmp_path), RunSpec("dpo", "dpo", "paper", 2.0, 0.0), 0)
    assert run.truth.tolist() == pytest.approx([-0.5, 2.0])
    # The model agrees with the annotators on t0, which r* says they got wrong: half right, not all.
    assert metric(run, "accuracy") == pytest.approx(0.5)


def test_real_data_keeps_the_score_margins(tmp_path):
    _finished_run(tmp_path, tmp_path / "real")
    run = load_run(Layout(tmp_path, tmp_path / "real"), RunSpec("dpo", "dpo", "paper", 2.0, 0.0), 0)
    assert run.truth.tolist() == [1.0, 4.0]
    assert metric(run, "accuracy") == 1.0
