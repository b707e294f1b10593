"""Real-world layouts: HH transcripts, multi-turn messages, graded pairs, extreme scores, splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from popalign.config import load_config
from popalign.data.load import DataSpec, load_preferences
from popalign.data.overlap import overlap_warning, record_training_rows, training_overlap
from popalign.data.split import split_table, write_split
from popalign.data.validate import parse_transcript
from popalign.errors import DataError
from popalign.train.config import TrainConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
HH = FIXTURES / "hh_transcripts.jsonl"
H, A = "\n\nHuman: ", "\n\nAssistant: "


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_transcript_parsing_into_turns():
    assert parse_transcript(H + "q" + A + "a" + H + "q2" + A + "a2") == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    assert parse_transcript("Human: q\n\nAssistant: a")[1] == {"role": "assistant", "content": "a"}
    assert parse_transcript("no turns here") is None
    assert parse_transcript("preamble" + H + "q" + A + "a") is None


def test_hh_transcripts_give_prompt_and_final_replies():
    table, report = load_preferences(HH, skip_bad_rows=True)
    assert report.schema == "implicit-prompt"
    assert table.ids == ["0", "1", "3"]
    assert table.prompts[0] == "What is the capital of France?"
    assert (table.chosen[0], table.rejected[0]) == (
        "Paris is the capital of France.",
        "I would rather not say.",
    )
    # Multi-turn: the common turns become a message list (rendered with the chat template).
    assert table.prompts[1] == [
        {"role": "user", "content": "I want to bake bread."},
        {"role": "assistant", "content": "Great! What kind of bread?"},
        {"role": "user", "content": "Sourdough."},
    ]
    assert table.rejected[1] == "Buy some from a shop."
    assert report.skipped == {"prompt mismatch": 1}
    assert "row 3" in report.examples[0] and "first difference at message 1" in report.examples[0]


def test_transcripts_that_differ_before_the_last_turn_stop_the_load_by_default():
    with pytest.raises(DataError, match=r"hh_transcripts.jsonl, row 3, field 'rejected'.*differ"):
        load_preferences(HH)


def test_non_transcript_row_in_an_implicit_prompt_file(tmp_path):
    path = write_jsonl(
        tmp_path / "hh.jsonl",
        [
            {"chosen": H + "q" + A + "good", "rejected": H + "q" + A + "bad"},
            {"chosen": "just text", "rejected": H + "q" + A + "bad"},
        ],
    )
    with pytest.raises(DataError, match=r"row 2, field 'chosen': not a transcript"):
        load_preferences(path)
    table, report = load_preferences(path, skip_bad_rows=True)
    assert len(table) == 1 and report.skipped == {"bad transcript": 1}


def test_multi_turn_message_lists_without_prompt_column(tmp_path):
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3+3?"},
    ]
    path = write_jsonl(
        tmp_path / "msgs.jsonl",
        [
            {
                "chosen": [*turns, {"role": "assistant", "content": "6"}],
                "rejected": [*turns, {"role": "assistant", "content": "7"}],
            }
        ],
    )
    table, report = load_preferences(path)
    assert report.schema == "ultrafeedback-messages"
    assert table.prompts[0] == turns and (table.chosen[0], table.rejected[0]) == ("6", "7")


def test_prompt_mapped_to_a_reply_column_is_an_error_naming_the_row(tmp_path):
    # The mistake the old advice led to: --columns prompt=chosen on transcripts.
    with pytest.raises(DataError, match=r"row 1, field 'chosen'.*prompt equals the chosen reply"):
        load_preferences(HH, columns="prompt=chosen")
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "Hi", "chosen": "Hi there, how can I help?", "rejected": "Bye"},
            {
                "prompt": "Write a poem about the sea",
                "chosen": "Write a poem about the sea: waves",
                "rejected": "x",
            },
        ],
    )
    with pytest.raises(
        DataError, match=r"row 2, field 'prompt': the prompt is the beginning of the chosen reply"
    ):
        load_preferences(path)
    table, report = load_preferences(path, skip_bad_rows=True)
    assert table.ids == ["0"] and report.skipped == {
        "prompt in reply": 1
    }  # a short greeting may open a reply


def test_missing_prompt_advice_mentions_conversations_not_prompt_equals_chosen(tmp_path):
    path = write_jsonl(tmp_path / "noprompt.jsonl", [{"chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match="Human:/Assistant: turns"):
        load_preferences(path)


def test_graded_unordered_pairs_with_ties():
    path = FIXTURES / "graded_pairs.jsonl"
    with pytest.raises(DataError, match=r"row 6, field 'score_b'.*--tie-policy"):
        load_preferences(path)
    table, report = load_preferences(path, tie_policy="skip")
    assert report.schema == "unordered-pair" and report.skipped == {"tie (tie_policy=skip)": 12}
    assert len(table) == 60 and np.all(table.margins > 0)
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    first = raw[0]
    high = "response_a" if first["score_a"] > first["score_b"] else "response_b"
    assert table.chosen[0] == first[high] and table.prompts[0] == first["prompt"]


def test_extreme_scores_are_an_error_naming_the_row():
    path = FIXTURES / "extreme_scores.jsonl"
    with pytest.raises(
        DataError, match=r"row 2, field 'score_chosen': score 1e\+300 is outside the sane range"
    ):
        load_preferences(path)
    table, report = load_preferences(path, skip_bad_rows=True)
    assert table.ids == ["e1", "e3"] and report.skipped == {"bad score": 1}
    assert np.isfinite(table.margins.std())


def test_split_on_a_single_file_is_an_error_unless_it_holds_that_split(tmp_path):
    path = FIXTURES / "graded_pairs.jsonl"
    with pytest.raises(DataError, match="--split test: a single file has no splits"):
        load_preferences(path, split="test", tie_policy="skip")
    assert len(load_preferences(path, tie_policy="skip")[0]) == 60  # no split asked: the file
    named = write_jsonl(tmp_path / "test.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    assert len(load_preferences(named, split="test")[0]) == 1
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"train": [{"prompt": "p", "chosen": "a", "rejected": "b"}]}))
    with pytest.raises(DataError, match="no split 'test'.*splits here: train"):
        load_preferences(both, split="test")


def test_data_columns_entry_in_key_value_form(tmp_path):
    cfg = load_config(
        TrainConfig,
        None,
        [
            "data.path=x.jsonl",
            "data.columns.prompt=question",
            "data.columns.chosen=good",
            "data.skip_bad_rows=true",
        ],
    )
    assert cfg.data.columns == {"prompt": "question", "chosen": "good"} and cfg.data.skip_bad_rows is True
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("data:\n  path: x.jsonl\n  columns:\n    prompt: question\n")
    cfg = load_config(TrainConfig, yaml_file, ["data.columns.rejected=bad"])
    assert cfg.data.columns == {"prompt": "question", "rejected": "bad"}


def test_split_is_grouped_reproducible_and_recorded(tmp_path):
    table, _ = load_preferences(FIXTURES / "graded_pairs.jsonl", tie_policy="skip")
    a, b = split_table(table, 0.25, seed=3), split_table(table, 0.25, seed=3)
    assert np.array_equal(a.test, b.test) and not np.array_equal(
        a.test, split_table(table, 0.25, seed=4).test
    )
    train_prompts = {table.prompts[i] for i in a.train}
    assert train_prompts.isdisjoint(table.prompts[i] for i in a.test)
    assert len(a.train) + len(a.test) == len(table) and len(a.test) >= 15
    info = write_split(table, a, tmp_path / "split")
    test, _ = load_preferences(tmp_path / "split", split="test")
    assert len(test) == info["rows"]["test"] == len(a.test) and info["seed"] == 3
    assert (
        json.loads((tmp_path / "split" / "split.json").read_text())["fingerprints"]["test"]
        == test.fingerprint()
    )
    rows = split_table(table, 0.25, by="row", seed=3)
    assert len(rows.test) == 15


def test_split_of_a_scored_file_never_invents_a_margin_column(tmp_path, capsys):
    """The score difference is not the data's margin column: a round trip through ``popalign data split``
    must not write one as the other, or ``margin_source=column`` would silently train on score
    differences."""
    from popalign.cli.main import main
    from popalign.losses.sources import MARGIN_SOURCES

    scored = write_jsonl(
        tmp_path / "scored.jsonl",
        [
            {"prompt": f"q{i}", "chosen": "a", "rejected": "b", "score_chosen": 4.0, "score_rejected": i}
            for i in range(4)
        ],
    )
    out = tmp_path / "split"
    assert main(["data", "split", str(scored), "-o", str(out), "--test-fraction", "0.5"]) == 0
    capsys.readouterr()
    for side in ("train", "test"):
        rows = [json.loads(line) for line in (out / f"{side}.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all("margin" not in r and r["score_chosen"] == 4.0 for r in rows)
        part, _ = load_preferences(out / f"{side}.jsonl")
        assert part.margin_column is None and part.has_scores
        assert part.margins.tolist() == [4.0 - float(r["score_rejected"]) for r in rows]
        with pytest.raises(ValueError, match="needs a per-row 'margin' column"):
            MARGIN_SOURCES["column"].check_table(part)

    # A margin column of the data's own goes through unchanged, never replaced by the score difference.
    given = write_jsonl(
        tmp_path / "given.jsonl",
        [
            {
                "prompt": f"q{i}",
                "chosen": "a",
                "rejected": "b",
                "score_chosen": 4.0,
                "score_rejected": 1.0,
                "margin": m,
            }
            for i, m in enumerate((0.5, 2.5))
        ],
    )
    assert main(["data", "split", str(given), "-o", str(tmp_path / "given"), "--test-fraction", "0.5"]) == 0
    parts = [load_preferences(tmp_path / "given" / f"{side}.jsonl")[0] for side in ("train", "test")]
    assert {p.prompts[0]: p.margin_column.tolist() for p in parts} == {"q0": [0.5], "q1": [2.5]}
    assert all(p.margins.tolist() == [3.0] for p in parts)


def test_overlap_with_training_rows_is_counted_and_warned(tmp_path):
    table, _ = load_preferences(FIXTURES / "graded_pairs.jsonl", tie_policy="skip")
    cut = split_table(table, 0.2, seed=0)
    train, test = table.select(cut.train), table.select(cut.test)
    record_training_rows(train, tmp_path)
    clean = training_overlap(test, tmp_path)
    assert clean["rows"] == clean["prompts"] == 0 and overlap_warning(clean) is None
    leaked = training_overlap(table, tmp_path)
    assert leaked["rows"] == len(train) and leaked["of"] == len(table)
    assert "WARNING" in overlap_warning(leaked) and "do not measure generalisation" in overlap_warning(leaked)
    assert training_overlap(table, tmp_path / "elsewhere") is None


def test_dataspec_fields_are_the_flag_names():
    names = {f for f in DataSpec.__dataclass_fields__}
    assert {"split", "columns", "tie_policy", "skip_bad_rows", "empty_replies", "limit"} <= names
