"""Verdict rules and the seed-and-item bootstrap, on synthetic runs whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from popalign.testbed import claims as cl
from popalign.testbed.plan import RunSpec
from popalign.testbed.results import RunResult, metric

N = 200
TRUTH = np.random.default_rng(0).choice([0.0, 0.5, 1.0, 2.0, 3.0, 5.0], size=N)


def run(name: str, predicted, seed: int = 0, advantages=None, rewards=None) -> RunResult:
    return RunResult(
        spec=RunSpec(name, name, "paper", 2.0, 0.0),
        seed=seed,
        done={"steps": 1, "seconds": 0.0},
        ids=[str(i) for i in range(N)],
        predicted=np.asarray(predicted, dtype=np.float64),
        truth=TRUTH,
        rewards=np.zeros(N) if rewards is None else rewards,
        advantages=advantages,
        discriminative={},
        judge=None,
    )


def noisy(scale: float, seed: int) -> np.ndarray:
    return TRUTH + np.random.default_rng(seed).normal(0, scale, N)


def test_metric_worked_example():
    r = run("x", np.zeros(N))
    r.predicted = np.array([1.0, -1.0, 0.0, 2.0])
    r.truth = np.array([1.0, 1.0, 1.0, 0.0])
    r.credit = np.array([1.0, 0.0, 0.5, np.nan])
    assert metric(r, "accuracy") == pytest.approx(0.5)  # the tie is left out, the zero counts half
    assert metric(r, "accuracy_low", split=1.0) == pytest.approx(0.5)
    assert np.isnan(metric(r, "accuracy_high", split=1.0))


def test_baseline_against_itself_wins_half():
    assert metric(run("dpo", TRUTH), "win_rate") == 0.5
    assert metric(run("dpo", TRUTH), "median_advantage") == 0.0


def test_identical_runs_differ_by_exactly_zero():
    a = [run("a", noisy(1.0, 1))]
    assert cl.bootstrap_difference(a, a, "spearman", n_resamples=50) == (0.0, 0.0, 0.0)


def test_one_seed_interval_brackets_the_value():
    value, low, high = cl.bootstrap_value([run("a", noisy(1.0, 1))], "accuracy", n_resamples=200)
    assert low <= value <= high
    assert value == pytest.approx(metric(run("a", noisy(1.0, 1)), "accuracy"))


def paper_results(best: str, spread: float = 3.0) -> dict[str, list[RunResult]]:
    """Every paper method on two seeds; ``best`` predicts the margins well, the rest poorly."""
    out = {}
    for m in cl.PAPER_METHODS:
        scale = 0.2 if m == best else spread
        out[m] = [run(m, noisy(scale, 10 * s + len(m)), seed=s) for s in (0, 1)]
    return out


def claim(claim_id: str) -> cl.Claim:
    return next(c for c in cl.CLAIMS if c.id == claim_id)


def test_clear_winner_is_reproduced():
    v = cl.judge_claim(claim("acc-best"), paper_results("dpo-pop-iter"), n_resamples=200)
    assert v.verdict == cl.REPRODUCED and v.low > 0
    assert v.subject_value > v.against_value


def test_clear_loser_is_not_reproduced():
    v = cl.judge_claim(claim("acc-best"), paper_results("dpo-sbt"), n_resamples=200)
    assert v.verdict == cl.NOT_REPRODUCED and v.against == "dpo-sbt" and v.high < 0


def test_lowest_claim_mirrors_highest():
    v = cl.judge_claim(claim("iter-pearson-lowest"), paper_results("dpo-pop-iter"), n_resamples=200)
    assert v.verdict == cl.NOT_REPRODUCED  # it has the highest Pearson, far from the lowest


def test_ties_are_inconclusive_and_equivalent():
    same = {m: [run(m, noisy(1.0, 5))] for m in cl.PAPER_METHODS}
    assert cl.judge_claim(claim("acc-best"), same, n_resamples=100).verdict == cl.INCONCLUSIVE
    assert cl.judge_claim(claim("margin1-acc"), same, n_resamples=100).verdict == cl.REPRODUCED


def test_opposite_seeds_make_a_comparison_inconclusive():
    # Each seed alone shows a large difference, in opposite directions: only the seed resampling sees it.
    good, bad = noisy(0.1, 1), noisy(5.0, 2)
    results = {
        "dpo-pop-iter": [run("dpo-pop-iter", good, 0), run("dpo-pop-iter", bad, 1)],
        "dpo-pop-random": [run("dpo-pop-random", bad, 0), run("dpo-pop-random", good, 1)],
    }
    single = {k: v[:1] for k, v in results.items()}
    c = claim("tradeoff-acc")
    assert cl.judge_claim(c, single, n_resamples=200).verdict == cl.REPRODUCED
    assert cl.judge_claim(c, results, n_resamples=200).verdict == cl.INCONCLUSIVE


def test_win_rate_above_half():
    adv = np.where(np.arange(N) % 4 == 0, -1.0, 1.0)  # 75% wins
    results = {"dpo-pop-random": [run("dpo-pop-random", TRUTH, advantages=adv)]}
    v = cl.judge_claim(claim("random-beats-dpo"), results, n_resamples=200)
    assert v.verdict == cl.REPRODUCED
    assert v.subject_value == pytest.approx(0.75) and v.difference == pytest.approx(0.25)


def test_missing_methods_are_not_run():
    v = cl.judge_claim(claim("steps-acc"), {"dpo-pop-iter": [run("dpo-pop-iter", TRUTH)]})
    assert v.verdict == cl.NOT_RUN


def test_every_claim_names_known_runs_and_metrics():
    known = set(cl.PAPER_METHODS) | {cl.STEPS_MATCHED, cl.NOMARGIN}
    for c in cl.CLAIMS:
        assert c.subject in known and (c.other is None or c.other in known)
        assert c.metric in cl.METRIC_NAMES
    assert len({c.id for c in cl.CLAIMS}) == len(cl.CLAIMS)
