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


SEEDS = (0, 1, 2, 3, 4)


def paper_results(best: str, spread: float = 3.0) -> dict[str, list[RunResult]]:
    """Every paper method on five seeds; ``best`` predicts the margins well, the rest poorly."""
    out = {}
    for m in cl.PAPER_METHODS:
        scale = 0.2 if m == best else spread
        out[m] = [run(m, noisy(scale, 10 * s + len(m)), seed=s) for s in SEEDS]
    return out


def claim(claim_id: str) -> cl.Claim:
    return next(c for c in cl.CLAIMS if c.id == claim_id)


def judged(claim_id: str, results, primary=()) -> cl.Verdict:
    return cl.decide([cl.judge_claim(claim(claim_id), results)], primary)[0]


def test_clear_winner_is_reproduced():
    v = judged("acc-best", paper_results("dpo-pop-iter"))
    assert v.verdict == cl.REPRODUCED and v.low > 0 and len(v.per_seed) == 5
    assert v.subject_value > v.against_value


def test_clear_loser_is_not_reproduced():
    v = judged("acc-best", paper_results("dpo-sbt"))
    assert v.verdict == cl.NOT_REPRODUCED and v.against == "dpo-sbt" and v.high < 0


def test_lowest_claim_mirrors_highest():
    v = judged("iter-pearson-lowest", paper_results("dpo-pop-iter"))
    assert v.verdict == cl.NOT_REPRODUCED  # it has the highest Pearson, far from the lowest


def accuracy_run(name: str, seed: int, accuracy: float) -> RunResult:
    """A run whose test accuracy is exactly ``accuracy`` (every test margin positive)."""
    r = run(name, np.where(np.arange(N) < round(accuracy * N), 1.0, -1.0), seed)
    r.truth = np.ones(N)
    r.credit = (r.predicted > 0).astype(float)
    return r


def test_best_reselects_the_rival_in_each_seed():
    # Subject 0.80 in every seed; rival A leads the others in seeds 0-2 (0.85), rival B in seeds 3-4
    # (0.85). On the point estimates A (mean 0.79) would be the runner-up and the subject would look
    # +0.01 ahead; against the best other of each seed it is 0.05 behind in every seed.
    a = [0.85, 0.85, 0.85, 0.70, 0.70]
    b = [0.70, 0.70, 0.70, 0.85, 0.85]
    results = {"dpo-pop-iter": [accuracy_run("dpo-pop-iter", s, 0.80) for s in SEEDS]}
    results["dpo"] = [accuracy_run("dpo", s, a[s]) for s in SEEDS]
    results["dpo-sbt"] = [accuracy_run("dpo-sbt", s, b[s]) for s in SEEDS]
    v = judged("acc-best", results)
    np.testing.assert_allclose(v.per_seed, [-0.05] * 5)
    assert v.verdict == cl.NOT_REPRODUCED
    assert v.against == "best other per seed (dpo, dpo-sbt)" and v.against_value == pytest.approx(0.85)


def test_identical_runs_are_equivalent_not_inconclusive():
    same = {m: [run(m, noisy(1.0, 5 + s), s) for s in SEEDS] for m in cl.PAPER_METHODS}
    v = judged("acc-best", same)
    assert v.difference == 0.0 and v.verdict == cl.EQUIVALENT
    assert judged("margin1-acc", same).verdict == cl.REPRODUCED


def test_one_seed_never_gives_a_verdict():
    # Each seed alone shows a large difference: one seed is one replication, nothing can be inferred.
    good, bad = noisy(0.1, 1), noisy(5.0, 2)
    single = {
        "dpo-pop-iter": [run("dpo-pop-iter", good, 0)],
        "dpo-pop-random": [run("dpo-pop-random", bad, 0)],
    }
    v = judged("tradeoff-acc", single)
    assert v.verdict == cl.INCONCLUSIVE and np.isnan(v.p_difference)


def test_opposite_seeds_make_a_comparison_inconclusive():
    good, bad = noisy(0.1, 1), noisy(5.0, 2)
    results = {
        "dpo-pop-iter": [run("dpo-pop-iter", good if s % 2 else bad, s) for s in SEEDS],
        "dpo-pop-random": [run("dpo-pop-random", bad if s % 2 else good, s) for s in SEEDS],
    }
    assert judged("tradeoff-acc", results).verdict == cl.INCONCLUSIVE


def test_win_rate_above_half():
    results = {"dpo-pop-random": []}
    for s in SEEDS:
        adv = np.where(np.arange(N) % 4 == s % 2, -1.0, 1.0)  # 75% wins in every seed
        results["dpo-pop-random"].append(run("dpo-pop-random", TRUTH, seed=s, advantages=adv))
    v = judged("random-beats-dpo", results)
    assert v.verdict == cl.REPRODUCED
    assert v.subject_value == pytest.approx(0.75) and v.difference == pytest.approx(0.25)


def _verdict(claim_id: str, differences) -> cl.Verdict:
    return cl.measured(claim(claim_id), differences, float("nan"), "x", float("nan"))


def test_holm_within_the_primary_family_can_withdraw_a_verdict():
    # Mean 0.1, sd 0.03, se 0.03 / sqrt(3): t(2) = 10 / sqrt(3), t^2 = 100 / 3, so by the closed form of
    # t(2) the raw p = 1 - sqrt(100 / 106) = 0.0287. Alone it is reproduced; in a primary family of three
    # with two null contrasts Holm multiplies it by 3 (0.086) and it is not.
    hit = [0.1, 0.13, 0.07]
    assert _verdict("tradeoff-acc", hit).p_difference == pytest.approx(1 - np.sqrt(100 / 106))
    alone = cl.decide([_verdict("tradeoff-acc", hit)])[0]
    assert alone.verdict == cl.REPRODUCED and alone.family == cl.SECONDARY
    family = [
        _verdict("tradeoff-acc", hit),
        _verdict("fig2-low", [0.1, -0.2, 0.1]),
        _verdict("fig2-high", [0.3, -0.1, -0.2]),
    ]
    cl.decide(family, ["tradeoff-acc", "fig2-low", "fig2-high"])
    assert family[0].family == cl.PRIMARY
    assert family[0].p_difference_adjusted == pytest.approx(3 * family[0].p_difference)
    assert family[0].verdict == cl.INCONCLUSIVE
    # The same three in the exploratory family, with a fourth primary one: families are adjusted apart.
    other = _verdict("steps-acc", hit)
    cl.decide([*family, other], ["steps-acc"])
    assert other.p_difference_adjusted == pytest.approx(other.p_difference) and other.verdict == cl.REPRODUCED


def test_equivalence_needs_the_bound():
    # Mean 0.001, sd 0.002 over 5 seeds: well inside the accuracy bound 0.02 -> equivalent.
    tight = cl.decide([_verdict("tradeoff-acc", [0.001, 0.003, -0.001, 0.0, 0.002])])[0]
    assert tight.bound == 0.02 and tight.verdict == cl.EQUIVALENT
    # The same mean with a spread too wide to exclude +-0.02: inconclusive, never "no difference".
    wide = cl.decide([_verdict("tradeoff-acc", [0.05, -0.04, 0.03, -0.05, 0.015])])[0]
    assert wide.verdict == cl.INCONCLUSIVE


def test_missing_methods_are_not_run():
    v = cl.judge_claim(claim("steps-acc"), {"dpo-pop-iter": [run("dpo-pop-iter", TRUTH)]})
    assert v.verdict == cl.NOT_RUN


def test_every_claim_names_known_runs_and_metrics():
    from popalign.testbed.frontier import FRONTIER_CLAIMS
    from popalign.testbed.settings import CONTROLS, PREREGISTERED

    known = set(cl.PAPER_METHODS) | set(CONTROLS)
    every = [*cl.CLAIMS, *FRONTIER_CLAIMS]
    for c in every:
        assert c.subject in known and (c.other is None or c.other in known)
        assert c.metric in cl.METRIC_NAMES
        assert not c.control or c.control in {x.id for x in every}
    assert len({c.id for c in every}) == len(every)
    # Every pre-registered contrast names a claim (at a budget key for matched-KL claims).
    ids = {c.id for c in cl.CLAIMS} | {f"{c.id}@final" for c in FRONTIER_CLAIMS}
    assert set(PREREGISTERED) <= ids


def test_a_margin_claim_waits_for_its_positive_control():
    # PoP-random clearly beats the no-margin control in Spearman in every seed...
    good = {s: noisy(0.2, s) for s in SEEDS}
    results = {
        "dpo-pop-random": [run("dpo-pop-random", good[s], s) for s in SEEDS],
        cl.NOMARGIN: [run(cl.NOMARGIN, noisy(3.0, 50 + s), s) for s in SEEDS],
        "dpo": [run("dpo", noisy(3.0, 70 + s), s) for s in SEEDS],
    }
    margin = claim("nomargin-spearman")
    # ...but without the oracle arm the testbed has not shown it can see a margin: no verdict.
    (alone,) = cl.decide([cl.judge_claim(margin, results)])
    assert alone.verdict == cl.UNRESOLVED and "oracle-spearman not run" in alone.note
    assert alone.p_difference_adjusted < cl.ALPHA  # its own test stays on record
    # With an oracle arm whose effect is detected, the claim gets its verdict.
    results[cl.ORACLE] = [run(cl.ORACLE, noisy(0.2, 90 + s), s) for s in SEEDS]
    verdicts = cl.decide([cl.judge_claim(margin, results), cl.judge_claim(claim("oracle-spearman"), results)])
    assert [v.verdict for v in verdicts] == [cl.REPRODUCED, cl.REPRODUCED]
    # An oracle no better than vanilla DPO: the positive control fails and the margin claim is withdrawn.
    results[cl.ORACLE] = [run(cl.ORACLE, noisy(3.0, 70 + s), s) for s in SEEDS]
    verdicts = cl.decide([cl.judge_claim(margin, results), cl.judge_claim(claim("oracle-spearman"), results)])
    assert verdicts[1].verdict != cl.REPRODUCED and verdicts[0].verdict == cl.UNRESOLVED


def test_an_unknown_preregistered_contrast_is_a_config_error():
    from popalign.config import ConfigError
    from popalign.testbed.verdict_report import check_preregistered

    check_preregistered(["acc-best", "kl-margin@final", "kl-oracle@range50"], [0.25, 0.5])
    with pytest.raises(ConfigError, match="'kl-margin@range90' is not a claim"):
        check_preregistered(["kl-margin@range90"], [0.25, 0.5])
    with pytest.raises(ConfigError, match="'acc-best@final'"):
        check_preregistered(["acc-best@final"], [0.25])
