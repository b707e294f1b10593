"""The reward-KL frontier on hand-made curves: interpolation at a budget, ranges, budgets and verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from popalign.testbed import claims as cl
from popalign.testbed import frontier as fr
from popalign.testbed.curves import Curve, curve_steps, select_points
from popalign.testbed.plan import RunSpec
from popalign.testbed.results import RunResult
from popalign.testbed.settings import NOMARGIN

N = 40


def test_value_at_budget_interpolates_where_the_curve_first_reaches_it():
    # Checkpoints in training order: KL 0, 1, 3, 2.5, 6 with r* 7, 8, 9, 5, 4.
    kl = np.array([0.0, 1.0, 3.0, 2.5, 6.0])[:, None]
    r = np.array([7.0, 8.0, 9.0, 5.0, 4.0])[:, None]
    # By hand: 2.0 lies between KL 1 (r* 8) and KL 3 (r* 9): 8 + (2 - 1) / (3 - 1) * (9 - 8) = 8.5; the later
    # return to KL 2.5 (r* 5) is not used, the curve had already spent that budget.
    assert fr.value_at_budget(kl, r, 2.0)[0] == pytest.approx(8.5)
    assert fr.value_at_budget(kl, r, 1.0)[0] == pytest.approx(8.0)  # exactly on a checkpoint
    assert fr.value_at_budget(kl, r, 0.0)[0] == pytest.approx(7.0)  # the start
    # 4.5 lies between KL 2.5 (the previous checkpoint, r* 5) and KL 6 (r* 4): 5 - 2 / 3.5.
    assert fr.value_at_budget(kl, r, 4.5)[0] == pytest.approx(5 - 2 / 3.5)
    # Beyond the last checkpoint: never extrapolated.
    assert np.isnan(fr.value_at_budget(kl, r, 6.5)[0])


def test_value_at_budget_per_column_and_per_column_budgets():
    kl = np.array([[0.0, 0.0], [2.0, 1.0], [4.0, 2.0]])
    r = np.array([[1.0, 1.0], [3.0, 2.0], [5.0, 3.0]])
    np.testing.assert_allclose(fr.value_at_budget(kl, r, 1.0), [2.0, 2.0])
    out = fr.value_at_budget(kl, r, np.array([3.0, 3.0]))
    assert out[0] == pytest.approx(4.0) and np.isnan(out[1])


def _run(name: str, seed: int, kl_means, reward_means, spread: float = 0.3) -> RunResult:
    rng = np.random.default_rng(seed * 7 + len(name))
    noise = rng.normal(0.0, spread, size=(len(kl_means), N))
    noise -= noise.mean(axis=1, keepdims=True)  # per-checkpoint means exactly as given
    kl = np.asarray(kl_means, dtype=float)[:, None] + noise * (np.asarray(kl_means)[:, None] > 0)
    reward = np.asarray(reward_means, dtype=float)[:, None] + noise
    curve = Curve(np.arange(len(kl_means)), kl, reward, np.zeros_like(kl))
    return RunResult(
        spec=RunSpec(name, name, "paper", 2.0, 0.0),
        seed=seed,
        done={"steps": len(kl_means) - 1, "seconds": 0.0},
        ids=[str(i) for i in range(N)],
        predicted=np.zeros(N),
        truth=np.ones(N),
        rewards=reward[-1],
        advantages=None,
        discriminative={},
        judge=None,
        curve=curve,
    )


def _results(shift: float) -> dict[str, list[RunResult]]:
    """Vanilla DPO ends at KL 2; DPO-PoP-random goes to KL 6, ``shift`` r* above DPO at equal KL."""
    dpo = [_run("dpo", s, [0, 1, 2], [7, 8, 8.5]) for s in (0, 1)]
    pop = [_run("dpo-pop-random", s, [0, 2, 4, 6], [7, 8.5 + shift, 7, 6]) for s in (0, 1)]
    short = [_run(NOMARGIN, s, [0, 0.5, 1.0], [7, 7.5, 8]) for s in (0, 1)]
    return {"dpo": dpo, "dpo-pop-random": pop, NOMARGIN: short}


BOOT = {"n_resamples": 300, "seed": 0}


def test_budgets_follow_the_rule_on_kl_alone():
    b = fr.budgets(_results(0.5), [0.25, 0.5])
    assert [x.label for x in b] == [
        "vanilla DPO's final KL",
        "25% of the common range",
        "50% of the common range",
    ]
    assert b[0].value == pytest.approx(2.0)
    # The common range is the smallest largest-KL of any curve: the no-margin control's 1.0.
    assert [x.value for x in b[1:]] == pytest.approx([0.25, 0.5])


def judged(claim_id: str, results, budget) -> cl.Verdict:
    claim = next(c for c in fr.FRONTIER_CLAIMS if c.id == claim_id)
    return cl.decide([fr.judge_matched(claim, results, budget)])[0]


def test_matched_kl_verdicts_and_a_budget_outside_a_curve():
    results = _results(0.5)
    final, quarter, half = fr.budgets(results, [0.25, 0.5])
    v = judged("kl-random", results, final)
    # At KL 2 (DPO's final, a checkpoint of both curves), DPO-PoP-random scores 8.5 + 0.5 against 8.5.
    assert v.subject_value == pytest.approx(9.0) and v.against_value == pytest.approx(8.5)
    assert v.difference == pytest.approx(0.5) and v.verdict == cl.REPRODUCED
    assert v.per_seed == pytest.approx((0.5, 0.5))
    assert judged("kl-random", _results(-0.5), final).verdict == cl.NOT_REPRODUCED
    # The no-margin control never reaches KL 2: reported as outside its range, never extrapolated.
    outside = judged("kl-nomargin", results, final)
    assert outside.verdict == fr.OUTSIDE and np.isnan(outside.difference)
    assert np.isnan(fr.at_budget(results[NOMARGIN], None, final, BOOT)).all()
    # At KL 0.5 and 0.25, DPO's and DPO-PoP-random's values would be read off the straight line from the
    # start (KL 0) to their first checkpoints (KL 1 and 2): unresolved, no test is run.
    for budget in (quarter, half):
        for claim_id in ("kl-nomargin", "kl-random"):
            v = judged(claim_id, results, budget)
            assert v.verdict == cl.UNRESOLVED and "KL 0-" in v.note and not v.tested


def test_a_missing_method_is_not_run():
    results = _results(0.5)
    del results["dpo-pop-random"]
    claim = next(c for c in fr.FRONTIER_CLAIMS if c.id == "kl-random")
    assert fr.judge_matched(claim, results, fr.budgets(results, [])[0]).verdict == cl.NOT_RUN


def test_resolution_rule_by_hand():
    assert fr.resolved((1.0, 2.0), 2.0)  # on a checkpoint
    assert fr.resolved((1.0, 2.0), 1.5)
    assert not fr.resolved((0.0, 0.9), 0.5)  # the start
    assert not fr.resolved((1.0, 3.5), 1.5)  # beyond twice the budget
    assert not fr.resolved((0.6, 2.0), 1.5)  # below half of it
    # The parabola through (0, 0), (1, 1), (2, 4) at 1.5 is 2.25; the line from (1, 1) to (2, 4) gives 2.5.
    assert fr.bend(np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 4.0]), 1.5)[0] == pytest.approx(0.25)
    assert fr.bend(np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0]), 1.5)[0] == pytest.approx(0.0)
    # Its standard error: the weights (parabola minus line) at 1.5 are -1/8, 1/4, -1/8, so with every
    # checkpoint's se 0.1 it is 0.1 * sqrt(1/64 + 1/16 + 1/64).
    _, se = fr.bend(np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 4.0]), 1.5, np.full(3, 0.1))
    assert se == pytest.approx(0.1 * np.sqrt(3 / 32))
    # Only two checkpoints: no third to estimate the bend from.
    assert fr.bend(np.array([0.0, 1.0]), np.array([0.0, 1.0]), 0.5)[0] == float("inf")


def _concave(name: str, seed: int, kls) -> RunResult:
    """A run on the concave r* = 7 + 1.2 sqrt(KL), sampled at ``kls``, with seed noise of sd 0.01 in r*."""
    kls = np.asarray(kls, dtype=float)
    wobble = np.random.default_rng(100 * seed + len(name)).normal(0.0, 0.01, len(kls))
    return _run(name, seed, kls, 7 + 1.2 * np.sqrt(kls) + wobble * (kls > 0), spread=0.0)


def test_six_and_twelve_checkpoints_of_one_curve_never_differ_in_direction():
    # Two methods with the same r*-vs-KL curve; one sampled at 6 checkpoints, the other at 12 (the
    # spacing of a run twice as long). Along straight lines the sparse one sits below the curve; no
    # budget may turn that into a directional verdict.
    seeds = range(5)
    results = {
        "dpo": [_concave("dpo", s, np.linspace(0, 4, 13)) for s in seeds],
        "dpo-pop-random": [_concave("dpo-pop-random", s, np.linspace(0, 4, 7)) for s in seeds],
    }
    for budget in fr.budgets(results, [0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9]):
        for a, b in (("dpo-pop-random", "dpo"), ("dpo", "dpo-pop-random")):
            claim = cl.Claim("x", "same curve", "test", "better", "reward_at_kl", a, b)
            v = cl.decide([fr.judge_matched(claim, results, budget)])[0]
            assert v.verdict in (cl.UNRESOLVED, cl.EQUIVALENT, cl.INCONCLUSIVE), (budget.label, a, v)


def test_summary_holds_curves_table_and_verdicts():
    s = fr.summarise_frontier(_results(0.5), [0.5], BOOT)
    assert [b["label"] for b in s["budgets"]] == ["vanilla DPO's final KL", "50% of the common range"]
    assert [p["kl"][0] for p in s["curves"]["dpo"]["0"]] == pytest.approx([0.0, 1.0, 2.0])
    assert set(s["curves"]["dpo"]) == {"0", "1"}  # one curve per seed: seeds keep their own checkpoints
    assert s["table"][NOMARGIN]["vanilla DPO's final KL"]["in_range"] is False
    assert s["table"]["dpo-pop-random"]["max_kl"] == pytest.approx(6.0)
    # KL 2 is first reached at the checkpoint with KL 2, after the start (KL 0): the bracket it leans on,
    # resolved since the budget falls on the checkpoint itself.
    cell = s["table"]["dpo-pop-random"]["vanilla DPO's final KL"]
    assert cell["between_kl"] == pytest.approx((0.0, 2.0)) and cell["unresolved"] == []
    assert len(s["verdicts"]) == 2 * len(fr.FRONTIER_CLAIMS)


def test_snapshots_share_one_spacing_and_end_at_the_last_step():
    # The same spacing in every run: a run with twice the steps has twice the snapshots.
    assert curve_steps(12, 5) == [5, 10, 12]
    assert len(curve_steps(250, 5)) == 2 * len(curve_steps(125, 5)) == 50
    assert curve_steps(4, 5) == [4]
    assert curve_steps(10, 0) == []


def test_select_points_spaces_checkpoints_by_kl():
    # By hand, ratio 1.5 and gap 0.1 from the start (KL 0): 0.1 is kept because 0.2 > 0.1; 0.2 because
    # 0.3 > max(0.15, 0.2); 0.3 and 0.4 likewise; 0.5 is skipped (0.6 is not above max(0.6, 0.5)); 0.6 is
    # kept (0.7 > 0.6); 0.7 skipped (0.8 <= max(0.9, 0.7)); the final model always.
    slow = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert select_points(slow, 1.5, 0.1) == [0, 1, 2, 3, 5, 7]
    # A jump keeps every snapshot before it, so the jump itself is the only wide bracket; after it the
    # flat tail is sampled sparsely.
    jump = [0.3, 0.6, 0.9, 30.0, 31.0, 32.0, 33.0]
    assert select_points(jump, 1.5, 0.1) == [0, 1, 2, 3, 6]
    assert select_points([2.0], 1.5, 0.1) == [0]
    # Beyond max_kl only the final model: 30 and 31 are skipped.
    assert select_points(jump, 1.5, 0.1, max_kl=10.0) == [0, 1, 2, 6]


def _snapshots(tmp_path, steps):
    from popalign.testbed.curves import point_dir

    for s in steps:
        point_dir(tmp_path, s).mkdir(parents=True)
        (point_dir(tmp_path, s) / "config.json").write_text("{}")


def test_screen_bisects_only_where_kl_grows_fast(tmp_path):
    from popalign.testbed.curves import screen_curve

    # KL 0.05 per step up to step 10, a jump to 4 by step 13, then flat again.
    kl = {s: 0.05 * s for s in range(1, 11)} | {11: 0.6, 12: 2.0, 13: 4.0}
    kl |= {s: 4.0 + 0.05 * (s - 13) for s in range(14, 21)}
    _snapshots(tmp_path, range(1, 20))
    asked = []

    def screen(folder):
        step = int(folder.name.split("-")[1])
        asked.append(step)
        return kl[step]

    settings = {"every": 5, "max_ratio": 1.5, "min_gap": 0.1}
    out = screen_curve(tmp_path, list(range(1, 21)), 20, kl[20], screen, **settings)
    # By hand (module doc): steps 5, 10, 15 first; then the middles of the gaps that grow too fast,
    # 3, 8, 13; then 2, 7, 12; then 11. The flat stretches (14-19, and 1) are never screened.
    assert sorted(asked) == [2, 3, 5, 7, 8, 10, 11, 12, 13, 15]
    assert list(out) == [2, 3, 5, 7, 8, 10, 11, 12, 13, 15, 20] and out[20] == kl[20]
    # A rerun reads screen.json and asks nothing again.
    asked.clear()
    assert screen_curve(tmp_path, list(range(1, 21)), 20, kl[20], screen, **settings) == out
    assert asked == []
