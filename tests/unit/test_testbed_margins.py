"""The margin during training: training-log means read at each curve checkpoint, then averaged over seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from popalign.testbed.plan import RunSpec
from popalign.testbed.results import RunResult, margin_trace, summarise_margins


def _state(tmp_path, logs):
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps({"log_history": logs}))
    return path


def test_margin_trace_reads_the_log_at_or_before_each_checkpoint(tmp_path):
    logs = [
        {"step": 5, "loss": 0.7, "margin/used": 0.1, "rewards/margins": 0.5, "pop/clipped_low": 0.4},
        {"step": 10, "loss": 0.6, "margin/used": 0.3, "rewards/margins": 1.5, "pop/clipped_low": 0.2},
        {"step": 12, "train_loss": 0.65},  # the end-of-training summary has no "loss": not a log of margins
    ]
    trace = margin_trace(_state(tmp_path, logs), [5, 10, 12])
    np.testing.assert_allclose(trace["margin"], [0.1, 0.3, 0.3])
    np.testing.assert_allclose(trace["reward_margin"], [0.5, 1.5, 1.5])
    assert np.isnan(trace["clipped_high"]).all()  # never logged: no PoP clip at M_max in this run
    assert np.isnan(margin_trace(_state(tmp_path, logs), [3])["margin"]).all()  # nothing logged yet


def _run(name, seed, margin, reward_margin, steps=(5, 10)):
    n = len(margin)
    margins = {
        "step": np.array(steps, dtype=float),
        "kl": np.arange(1.0, n + 1),
        "margin": np.array(margin, dtype=float),
        "reward_margin": np.array(reward_margin, dtype=float),
        "clipped_low": np.full(n, 0.25),
        "clipped_high": np.zeros(n),
    }
    return RunResult(
        RunSpec(name, name, "paper", 2.0, 0.0), seed, {"steps": n}, ["a", "b", "c", "d"], np.zeros(4),
        np.ones(4), None, None, {}, None, margins=margins,
    )  # fmt: skip


def test_summary_averages_seeds_on_common_steps_and_leaves_out_runs_without_a_margin():
    results = {
        "dpo-pop-random": [
            _run("dpo-pop-random", 0, [0.1, 0.4], [1.0, 2.0]),
            # Seed 1 screened step 7 too (bisection): only the steps both seeds screened are read.
            _run("dpo-pop-random", 1, [0.3, 9.0, 0.6], [1.0, 9.0, 2.0], steps=(5, 7, 10)),
        ],
        "dpo": [_run("dpo", 0, [0.0, 0.0], [1.0, 2.0])],
    }
    trace = summarise_margins(results)
    assert list(trace) == ["dpo-pop-random"]
    first, second = trace["dpo-pop-random"]
    # By hand: seed means 0.2 and 0.5 against reward margins 1 and 2: ratios 0.2 and 0.25; the screened
    # KL of step 10 is 2 in seed 0 and 3 in seed 1.
    assert (first["step"], first["kl"], first["margin"], first["ratio"]) == pytest.approx((5, 1.0, 0.2, 0.2))
    assert (second["step"], second["kl"]) == pytest.approx((10, 2.5))
    assert (second["margin"], second["ratio"], second["clipped_low"]) == pytest.approx((0.5, 0.25, 0.25))
