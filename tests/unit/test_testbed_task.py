"""The testbed's ground-truth reward r*: worked examples, bounds and the prompt grammar."""

from __future__ import annotations

import numpy as np
import pytest

from popalign.testbed import task
from popalign.testbed.task import TaskPrompt, parse_prompt, reward, reward_parts

BRIEF = "Briefly describe rose, soil and bee."
DETAILED = "Describe in detail tide, reef and gull."


def test_prompt_text_parses_back():
    p = TaskPrompt("ocean", ("tide", "reef", "gull"), "detailed")
    assert p.text == DETAILED
    assert parse_prompt(DETAILED) == p
    assert parse_prompt([{"role": "user", "content": BRIEF}]).keywords == ("rose", "soil", "bee")


@pytest.mark.parametrize(
    "bad",
    [
        "Tell me about rose, soil and bee.",
        "Briefly describe rose, soil and tide.",
        "Briefly describe x, y and z.",
    ],
)
def test_prompts_outside_the_task_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_prompt(bad)


def test_perfect_reply_scores_ten():
    # 6 words (brief asks for 5-8), every content word on topic, all keywords, no repeat.
    assert reward(BRIEF, "rose soil bee the seed leaf.") == pytest.approx(10.0)


def test_worked_example_short_reply():
    # 3 words: relevance 1, coverage 1, length 1 - 0.2 * (5 - 3) = 0.6, diversity 1.
    parts = reward_parts(BRIEF, "rose soil bee.")
    assert parts == pytest.approx({"relevance": 1.0, "coverage": 1.0, "length": 0.6, "diversity": 1.0})
    assert reward(BRIEF, "rose soil bee.") == pytest.approx(1 + 9 * (0.35 + 0.30 + 0.20 * 0.6 + 0.15))


def test_worked_example_filler_and_other_topics():
    # Content words: um (filler), whale (ocean), rose (garden), rose (repeat); "the" is glue.
    # relevance 2/4, coverage 1/3, 5 words -> length 1, diversity 3/4.
    parts = reward_parts(BRIEF, "um whale the rose rose")
    assert parts == pytest.approx({"relevance": 0.5, "coverage": 1 / 3, "length": 1.0, "diversity": 0.75})
    expected = 1 + 9 * (0.35 * 0.5 + 0.30 / 3 + 0.20 + 0.15 * 0.75)
    assert reward(BRIEF, "um whale the rose rose") == pytest.approx(expected)


def test_empty_reply_scores_one():
    assert reward(BRIEF, "") == pytest.approx(1.0)
    assert reward(DETAILED, "...") == pytest.approx(1.0)


def test_style_sets_the_length_range():
    ten = "tide reef gull wave shell whale sand salt boat coral"
    assert reward_parts(DETAILED, ten)["length"] == 1.0
    assert reward_parts(BRIEF.replace("rose, soil and bee", "tide, reef and gull"), ten)[
        "length"
    ] == pytest.approx(1 - 0.2 * 2)


def test_reward_stays_in_one_to_ten_on_random_text():
    rng = np.random.default_rng(0)
    words = task.vocabulary() + ["xyz", "42"]
    for _ in range(300):
        reply = " ".join(rng.choice(words, size=rng.integers(0, 30)))
        assert 1.0 <= reward(DETAILED, reply) <= 10.0


def test_case_and_punctuation_do_not_matter():
    assert reward(BRIEF, "Rose, soil; BEE! seed leaf.") == reward(BRIEF, "rose soil bee seed leaf")


def test_topics_do_not_share_words():
    words = [w for ws in task.TOPICS.values() for w in ws]
    assert len(words) == len(set(words))
    assert not set(words) & (set(task.GLUE) | set(task.FILLER))
