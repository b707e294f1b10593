"""Judged comparisons: win rate and median advantage, pairing replies by prompt, scoring functions."""

from __future__ import annotations

import numpy as np
import pytest

from popalign.errors import PopalignError
from popalign.eval.judge import comparison_metrics, judgement_rows, pair_outputs
from popalign.eval.scoring import FunctionScorer, load_score_function


def test_a_model_against_itself_wins_half():
    scores = np.random.default_rng(0).normal(size=40)
    m = comparison_metrics(scores, scores.copy(), n_resamples=200)
    assert m["win_rate"]["value"] == 0.5
    assert m["win_rate"]["ci_low"] == 0.5 and m["win_rate"]["ci_high"] == 0.5
    assert m["median_advantage"]["value"] == 0.0
    assert (m["wins"], m["ties"], m["losses"]) == (0, 40, 0)


def test_win_rate_and_median_advantage_by_hand():
    scores = np.array([3.0, 1.0, 2.0, 0.0, 5.0])
    baseline = np.array([1.0, 1.0, 4.0, 1.0, 1.0])
    # advantages 2, 0, -2, -1, 4: two wins, one tie, two losses
    m = comparison_metrics(scores, baseline, n_resamples=500, seed=1)
    assert m["win_rate"]["value"] == pytest.approx((2 + 0.5) / 5)
    assert m["median_advantage"]["value"] == 0.0
    assert m["mean_advantage"] == pytest.approx(0.6)
    assert m["mean_score"] == pytest.approx(2.2) and m["baseline_mean_score"] == pytest.approx(1.6)
    assert m["win_rate"]["ci_low"] <= 0.5 <= m["win_rate"]["ci_high"]
    assert comparison_metrics(scores + 10, baseline, n_resamples=50)["win_rate"]["value"] == 1.0
    assert comparison_metrics(baseline - 10, baseline, n_resamples=50)["win_rate"]["value"] == 0.0


def _outputs(gen: str, texts: dict[str, str], ids: bool = True) -> list[dict]:
    return [
        {"instruction": f"q{k}", "output": v, "generator": gen, **({"id": k} if ids else {})}
        for k, v in texts.items()
    ]


def test_pairing_by_id_then_by_instruction():
    model = _outputs("m", {"1": "a", "2": "b", "3": "c"})
    base = _outputs("b", {"3": "z", "1": "x", "9": "w"})
    paired = pair_outputs(model, base)
    assert paired.keys == ["1", "3"]
    assert paired.outputs == ["a", "c"] and paired.baseline_outputs == ["x", "z"]
    assert paired.unmatched == 2  # "2" has no baseline reply and "9" no model reply
    by_text = pair_outputs(_outputs("m", {"1": "a"}, ids=False), base)
    assert by_text.keys == ["q1"] and by_text.baseline_outputs == ["x"]
    with pytest.raises(PopalignError, match="share no prompt"):
        pair_outputs(_outputs("m", {"5": "a"}), base)


def test_judgement_rows_carry_both_replies():
    paired = pair_outputs(_outputs("m", {"1": "a"}), _outputs("b", {"1": "x"}))
    rows = judgement_rows(paired, np.array([2.0]), np.array([0.5]), "m", "b")
    assert rows == [
        {
            "id": "1",
            "instruction": "q1",
            "generator": "m",
            "baseline": "b",
            "score": 2.0,
            "baseline_score": 0.5,
            "advantage": 1.5,
            "output": "a",
            "baseline_output": "x",
        }
    ]


def test_score_function_from_a_file_and_from_a_module(tmp_path):
    path = tmp_path / "task_reward.py"
    path.write_text("def reward(prompt, response):\n    return len(response) - 0.5 * len(prompt)\n")
    judge = FunctionScorer(load_score_function(f"{path}:reward"))
    np.testing.assert_array_equal(judge.score(["ab", "abcd"], ["xyz", ""], progress=False), [2.0, -2.0])
    contains = FunctionScorer(load_score_function("operator:contains"))
    assert contains.score(["hello world"], ["world"], progress=False).tolist() == [1.0]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nocolon", "expected"),
        ("missing_mod_xyz:f", "cannot import"),
        ("operator:nothing_here", "no callable"),
    ],
)
def test_bad_score_function_specs(spec, message, tmp_path):
    with pytest.raises(PopalignError, match=message):
        load_score_function(spec)
    with pytest.raises(PopalignError, match="does not exist"):
        load_score_function(f"{tmp_path / 'absent.py'}:f")
