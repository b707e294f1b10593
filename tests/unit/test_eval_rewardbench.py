"""RewardBench-format reading and scoring, against section scores worked out by hand.

The fixture's rows are written so that "the longer reply wins" is right or wrong on a known pattern:
alpacaeval-easy 2/2, mt-bench-easy 1/2, mt-bench-hard 0/1, llmbar-natural 2/2, xstest-should-refuse 2/2,
xstest-should-respond 0/1, donotanswer 1/2, math-prm 1/2, hep-python 2/3 (one equal-length pair),
anthropic_helpful 1/2 (a prior set) and my-subset 1/1 (not RewardBench's).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from popalign.errors import DataError
from popalign.eval.rewardbench import (
    EXAMPLE_COUNTS,
    PRIOR_SECTION,
    SUBSET_MAPPING,
    overall_score,
    read_rewardbench,
    rewardbench_scores,
    section_scores,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "rewardbench_small.jsonl"


@pytest.fixture(scope="module")
def bench():
    return read_rewardbench(FIXTURE)


def length_margins(bench) -> np.ndarray:
    return np.array(
        [len(c) - len(r) for c, r in zip(bench.table.chosen, bench.table.rejected, strict=True)], float
    )


def test_reads_the_layout(bench):
    assert len(bench.table) == len(bench.subsets) == 20
    assert bench.table.ids[0] == "1000"
    assert bench.subsets.count("hep-python") == 3
    assert bench.table.score_chosen is None


def test_mapping_follows_rewardbench():
    assert sum(len(v) for v in SUBSET_MAPPING.values()) == len(EXAMPLE_COUNTS) == 23
    assert all(s in EXAMPLE_COUNTS for subsets in SUBSET_MAPPING.values() for s in subsets)
    # math-prm is up-weighted to weigh as much as the six code subsets together.
    assert EXAMPLE_COUNTS["math-prm"] == 6 * EXAMPLE_COUNTS["hep-python"]


def test_section_scores_by_hand(bench):
    s = rewardbench_scores(length_margins(bench), bench.subsets)
    sub = {k: v["accuracy"] for k, v in s["subsets"].items()}
    assert sub["hep-python"] == pytest.approx(2 / 3)  # the equal-length pair counts as wrong
    assert s["subsets"]["mt-bench-easy"] == {"accuracy": 0.5, "correct": 1, "n": 2}
    chat = (100 * 1.0 + 28 * 0.5) / (100 + 28)
    chat_hard = (37 * 0.0 + 100 * 1.0) / (37 + 100)
    safety = (250 * 1.0 + 154 * 0.0 + 136 * 0.5) / (250 + 154 + 136)
    reasoning = (984 * 0.5 + 164 * (2 / 3)) / (984 + 164)
    sections = s["sections"]
    assert sections["Chat"] == pytest.approx(chat)
    assert sections["Chat Hard"] == pytest.approx(chat_hard)
    assert sections["Safety"] == pytest.approx(safety)
    assert sections["Reasoning"] == pytest.approx(reasoning)
    assert sections[PRIOR_SECTION] == pytest.approx(0.5)
    assert s["overall"] == pytest.approx((chat + chat_hard + safety + reasoning) / 4)
    assert s["unmapped_subsets"] == ["my-subset"]
    assert s["accuracy"] == pytest.approx(13 / 20)  # 2+1+0+2+2+0+1+1+2+1+1 right
    with_prior = rewardbench_scores(length_margins(bench), bench.subsets, include_prior=True)
    assert with_prior["overall"] == pytest.approx((2 * (chat + chat_hard + safety + reasoning) + 0.5) / 9)


def test_perfect_and_reversed_models(bench):
    ones = rewardbench_scores(np.ones(len(bench.subsets)), bench.subsets, include_prior=True)
    assert ones["overall"] == 1.0 and all(v == 1.0 for v in ones["sections"].values())
    zeros = rewardbench_scores(-np.ones(len(bench.subsets)), bench.subsets)
    assert zeros["overall"] == 0.0 and all(v == 0.0 for v in zeros["sections"].values())
    # A tie in reward is never a win (RewardBench compares with a strict >).
    assert rewardbench_scores(np.zeros(len(bench.subsets)), bench.subsets)["overall"] == 0.0


def test_missing_sections_are_none_and_skipped_in_overall():
    scores = section_scores({"alpacaeval-easy": 0.8, "hep-go": 0.4})
    assert scores["Chat Hard"] is None and scores["Safety"] is None
    assert scores["Chat"] == 0.8 and scores["Reasoning"] == pytest.approx(0.4)
    assert overall_score(scores) == pytest.approx(0.6)
    assert overall_score({k: None for k in SUBSET_MAPPING}) is None


def test_bad_rows_name_file_row_and_field(tmp_path):
    path = tmp_path / "rb.jsonl"
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "subset": "shp"},
        {"prompt": "p", "chosen": "a", "rejected": "b"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"row 2.*subset"):
        read_rewardbench(path)
    path.write_text(json.dumps({"prompt": "", "chosen": "a", "rejected": "b", "subset": "shp"}) + "\n")
    with pytest.raises(DataError, match="prompt"):
        read_rewardbench(path)


def test_limit_and_multi_turn_prompts(tmp_path):
    path = tmp_path / "rb.jsonl"
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "?"},
    ]
    rows = [{"prompt": turns, "chosen": "a", "rejected": "b", "subset": "shp"}] * 3
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    bench = read_rewardbench(path, limit=2)
    assert len(bench.table) == 2 and bench.table.prompts[0] == turns and bench.table.ids == ["0", "1"]
