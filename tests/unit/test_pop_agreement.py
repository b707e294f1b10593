"""Agreement of PoP labels with scores, with other labels and between orders: hand-worked values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from popalign.data.schema import PreferenceTable
from popalign.errors import DataError
from popalign.pop.agreement import (
    answer_agreement,
    cohen_kappa,
    label_agreement,
    load_judgements,
    position_consistency,
    score_agreement,
)
from popalign.pop.build import PoPSpec
from popalign.pop.judge_pairs import random_questions

# Margins 0, 1, 2, 3, 3 (p3 and p4 equal: no score label between them).
MARGINS = [0.0, 1.0, 2.0, 3.0, 3.0]


def table(scores: bool = True) -> PreferenceTable:
    n = len(MARGINS)
    return PreferenceTable(
        ids=[f"p{i}" for i in range(n)],
        prompts=[f"P{i}" for i in range(n)],
        chosen=["c"] * n,
        rejected=["r"] * n,
        score_chosen=np.array(MARGINS) + 5 if scores else None,
        score_rejected=np.full(n, 5.0) if scores else None,
    )


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_score_agreement_by_gap_counts_ties_apart_and_leaves_equal_margins_out(tmp_path):
    rows = [
        {"id_a": "p1", "id_b": "p0", "stronger": "a"},  # gap 1, agrees
        {"id_a": "p2", "id_b": "p1", "stronger": "b"},  # gap 1, disagrees
        {"id_a": "p0", "id_b": "p2", "stronger": "p2"},  # gap 2, agrees (by id)
        {"id_a": "p3", "id_b": "p0", "stronger": "same"},  # gap 3, a tie
        {"id_a": "p3", "id_b": "p4", "stronger": "a"},  # equal margins: no score label
        {"id_a": "p4", "id_b": "p2", "stronger": None},  # no verdict
    ]
    j = load_judgements(write(tmp_path / "l.jsonl", rows), table())
    assert j.no_verdict == 1 and len(j.verdicts) == 5
    got = score_agreement(j, table().margins)
    assert got["equal_margins"] == 1
    overall = got["overall"]
    assert (overall["decided"], overall["agree"], overall["ties"]) == (3, 2, 1)
    assert overall["share"] == pytest.approx(2 / 3) and overall["call"] == "unresolved"
    by_gap = {b["gap"][0]: (b["decided"], b["agree"], b["ties"]) for b in got["by_gap"]}
    assert by_gap == {1.0: (2, 1, 0), 2.0: (1, 1, 0), 3.0: (0, 0, 1)}
    assert got["bucket_level"] == pytest.approx(1 - 0.05 / 3)


def test_a_large_agreeing_sample_is_called_agrees():
    from popalign.pop.agreement import _call, _interval

    low, high = _interval(90, 100, 0.95)
    assert 0.8 < low < 0.9 < high < 0.96 and _call(low, high) == "agrees"
    assert _call(*_interval(10, 100, 0.95)) == "disagrees"


def test_cohen_kappa_by_hand():
    # p_o = 3/4; rater 1: x 2, y 2; rater 2: x 3, y 1 -> p_e = (2*3 + 2*1) / 16 = 1/2; kappa = 1/2.
    assert math.isclose(cohen_kappa([("x", "x"), ("x", "x"), ("y", "y"), ("y", "x")]), 0.5)
    assert cohen_kappa([("x", "x")]) is None and cohen_kappa([]) is None


def test_label_agreement_matches_pairs_in_either_order(tmp_path):
    a = write(
        tmp_path / "a.jsonl",
        [{"id_a": "p0", "id_b": "p1", "stronger": "b"}, {"id_a": "p2", "id_b": "p0", "stronger": "a"}],
    )
    b = write(tmp_path / "b.csv", [])
    b.write_text("id_a,id_b,stronger\np1,p0,a\np0,p2,a\np3,p4,a\n")
    got = label_agreement(load_judgements(a, table()), load_judgements(b, table()))
    # Shared (p0,p1): both p1; (p0,p2): p2 vs p0. Answers (high, high), (high, low): p_o 1/2,
    # p_e = (2*1 + 0*1) / 4 = 1/2 -> kappa 0.
    assert (got["shared_pairs"], got["only_first"], got["only_second"]) == (2, 0, 1)
    assert got["agree"] == 0.5 and got["kappa"] == 0.0


def test_position_consistency_from_records(tmp_path):
    rows = [
        {"id_a": "p0", "id_b": "p1", "stronger": "b", "first": "b", "second": "b"},
        {"id_a": "p0", "id_b": "p2", "stronger": "same", "first": "a", "second": "b"},  # first shown twice
        {"id_a": "p1", "id_b": "p2", "stronger": None, "first": None, "second": "a"},
    ]
    j = load_judgements(write(tmp_path / "r.jsonl", rows), table())
    got = position_consistency(j.orders)
    # Picks of the first shown: pair 1: first "b" no, second "b" yes; pair 2: both yes -> 3 of 4.
    assert got["pairs"] == 2 and got["consistent"] == 0.5 and got["picked_first_shown"] == 0.75
    # Single answers against the margins (p0 0, p1 1, p2 2): pair 1 both p1 (agree, agree; gap 1);
    # pair 2 p0 then p2 (disagree, agree; gap 2); pair 3 only its second order, p1 (disagree; gap 1).
    single = answer_agreement(j, table().margins)
    assert (single["overall"]["decided"], single["overall"]["agree"]) == (5, 3)
    assert {b["gap"][0]: (b["decided"], b["agree"]) for b in single["by_gap"]} == {1.0: (3, 2), 2.0: (2, 1)}


def test_a_bad_row_names_file_row_and_field(tmp_path):
    path = write(tmp_path / "l.jsonl", [{"id_a": "p0", "id_b": "p9", "stronger": "a"}])
    with pytest.raises(DataError, match=r"l.jsonl, row 1, field 'id_b'"):
        load_judgements(path, table())


def test_random_pairs_without_scores_are_distinct_pairs_of_any_preferences():
    questions, counts = random_questions(None, 5, PoPSpec(strategy="random", k=2, min_gap=3.0, seed=1))
    pairs = {frozenset((q.first, q.second)) for q in questions}
    assert len(questions) == len(pairs) == 10 == counts["valid_pairs"]  # all C(5, 2) pairs
    assert all(q.first != q.second for q in questions)
