"""Judgements to PoP label rows (majority, iterative wins), agreement, and files `pop` can read."""

from __future__ import annotations

import math

import pytest

from popalign.data.schema import PreferenceTable
from popalign.errors import PopalignError
from popalign.label.export import Judgement, agreement, label_rows, majority, write_labels
from popalign.label.project import Project
from popalign.pop.labels import load_pop_labels


def judged(pair_id: int, choices: str, id_a: str = "x", id_b: str = "y", anchor: str | None = None):
    return [
        Judgement(pair_id, id_a, id_b, anchor, f"ann{i}", c, float(i)) for i, c in enumerate(choices.split())
    ]


def project(strategy: str) -> Project:
    return Project(strategy, 2.0, 10, 1.0, 8, 1, 600.0, 0, "d.jsonl", "fp", 5, 0.0)


@pytest.mark.parametrize(
    "choices, expected",
    [
        ("a", "a"),
        ("b", "b"),
        ("same", None),
        ("a a b", "a"),
        ("a b", None),  # a tie between the sides
        ("a same same", None),  # most judges saw no difference
        ("a a same same", None),
        ("b b a same", "b"),
    ],
)
def test_majority(choices, expected):
    assert majority(choices.split()) == expected


def test_rows_one_per_pair_in_first_judged_order_without_same():
    items = judged(1, "a", "p1", "p2") + judged(2, "same", "p3", "p4") + judged(3, "b", "p2", "p3")
    assert label_rows(items, project("random")) == [
        {"id_a": "p1", "id_b": "p2", "stronger": "a"},
        {"id_a": "p2", "id_b": "p3", "stronger": "b"},
    ]


def test_iterative_exports_the_anchors_wins_unless_all_pairs_is_asked():
    won = judged(1, "a", "p1", "p2", anchor="p1")
    lost = judged(2, "a", "p3", "p1", anchor="p1")  # the candidate p3 was stronger
    won_on_b = judged(3, "b", "p4", "p1", anchor="p1")
    items = won + lost + won_on_b
    assert [r["stronger"] for r in label_rows(items, project("iterative"))] == ["a", "b"]
    assert len(label_rows(items, project("iterative"), all_pairs=True)) == 3
    assert len(label_rows(items, project("random"))) == 3


def test_agreement_worked_by_hand():
    items = judged(1, "a a") + judged(2, "a b") + judged(3, "a a b") + judged(4, "b")
    got = agreement(items)
    # Judge pairs agreeing: pair 1 1/1, pair 2 0/1, pair 3 1/3 -> 2/5. Pair 4 has one judge: left out.
    assert got["pairs"] == 3 and got["judgements"] == 7
    assert math.isclose(got["pairwise"], 2 / 5)
    # Fleiss: P_i = 1, 0, 1/3 -> P_bar = 4/9; shares a 5/7, b 2/7 -> P_e = 29/49; kappa = -13/36.
    assert math.isclose(got["fleiss_kappa"], -13 / 36)


def test_agreement_when_everyone_agrees_on_one_answer():
    got = agreement(judged(1, "a a") + judged(2, "a a a"))
    assert got["pairwise"] == 1.0 and got["fleiss_kappa"] is None  # chance agreement is 1: undefined


def test_agreement_without_repeated_pairs():
    assert agreement(judged(1, "a") + judged(2, "b")) == {
        "pairs": 0,
        "judgements": 0,
        "pairwise": None,
        "fleiss_kappa": None,
    }


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_written_files_load_as_pop_labels(tmp_path, suffix):
    table = PreferenceTable(
        ids=["p1", "p2", "p3"], prompts=["q"] * 3, chosen=["c"] * 3, rejected=["r"] * 3, source="t"
    )
    rows = [{"id_a": "p1", "id_b": "p2", "stronger": "a"}, {"id_a": "p3", "id_b": "p2", "stronger": "b"}]
    path = write_labels(rows, tmp_path / f"labels{suffix}")
    pairs = load_pop_labels(path, table)
    assert pairs.strong_idx.tolist() == [0, 1] and pairs.weak_idx.tolist() == [1, 2]


def test_an_empty_export_is_still_a_valid_file(tmp_path):
    table = PreferenceTable(ids=["p1", "p2"], prompts=["q"] * 2, chosen=["c"] * 2, rejected=["r"] * 2)
    assert len(load_pop_labels(write_labels([], tmp_path / "none.jsonl"), table)) == 0


def test_unknown_suffix_is_refused(tmp_path):
    with pytest.raises(PopalignError, match="must end in"):
        write_labels([], tmp_path / "labels.txt")
