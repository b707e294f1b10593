"""Loaders, layouts, column mapping and validation of popalign.data.load."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from popalign.config import ConfigError, describe_config, load_config
from popalign.data.load import DataSpec, LoadReport, load_preferences, parse_column_map, save_preferences
from popalign.data.schema import PreferenceTable
from popalign.errors import DataError, PopalignError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


def rec(pref_id: str, prompt: str, chosen: str, rejected: str, sc: float, sr: float) -> dict:
    return {
        "id": pref_id,
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "score_chosen": sc,
        "score_rejected": sr,
    }


RECORDS = [
    rec("r1", "Add 2 and 3.", "5", "6", 9.0, 2.5),
    rec("r2", "Capital of Italy?", "Rome", "Milan", 8.0, 8.0),
    rec("r3", "Opposite of hot?", "cold", "warm", 7.5, 4.0),
]


def write_jsonl(path: Path, rows: list, raw_lines: dict[int, str] | None = None) -> Path:
    """Rows as JSON lines; ``raw_lines`` replaces (1-based) lines with literal text."""
    lines = [json.dumps(r) for r in rows]
    for lineno, text in (raw_lines or {}).items():
        lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def assert_matches_records(table: PreferenceTable, records: list[dict] = RECORDS) -> None:
    assert table.ids == [r["id"] for r in records]
    assert table.prompts == [r["prompt"] for r in records]
    assert table.chosen == [r["chosen"] for r in records]
    assert table.rejected == [r["rejected"] for r in records]
    np.testing.assert_array_equal(table.score_chosen, [r["score_chosen"] for r in records])
    np.testing.assert_array_equal(table.score_rejected, [r["score_rejected"] for r in records])


def assert_names(err: pytest.ExceptionInfo, file: Path | str, row: int | None, field: str | None) -> None:
    """The message (what the user sees) names the file, the 1-based row and the field."""
    msg = str(err.value)
    assert str(file) in msg
    assert err.value.row == row
    assert err.value.field == field
    if row is not None:
        assert f"row {row}" in msg
    if field is not None:
        assert repr(field) in msg


# ---------------------------------------------------------------- the shared sample


def test_shared_sample_loads_with_scores_from_metadata(ultrafeedback_dir):
    table, report = load_preferences(str(ultrafeedback_dir))
    raw = [json.loads(line) for line in (ultrafeedback_dir / "train.jsonl").read_text().splitlines()]
    assert len(table) == report.rows_kept == report.rows_read == 1000
    assert report.schema == "plain" and report.skipped == {}
    assert report.columns["score_chosen"] == "metadata.score_chosen"
    assert report.columns["id"] == "source_index"
    np.testing.assert_array_equal(table.score_chosen, [r["metadata"]["score_chosen"] for r in raw])
    np.testing.assert_array_equal(table.score_rejected, [r["metadata"]["score_rejected"] for r in raw])
    assert int((table.margins == 0).sum()) == 111
    assert (table.margins >= 0).all()
    assert table.ids == [str(r["source_index"]) for r in raw]
    assert table.prompts[0] == raw[0]["prompt"] and table.chosen[-1] == raw[-1]["chosen"]
    # The sample has two empty replies; they are kept by default and named in the report.
    assert any("2 kept rows have an empty" in note for note in report.notes)


def test_shared_sample_test_split_and_file_path_agree(ultrafeedback_dir):
    by_folder, _ = load_preferences(str(ultrafeedback_dir), split="test")
    by_file, _ = load_preferences(ultrafeedback_dir / "test.jsonl")
    assert len(by_folder) == 200
    assert int((by_folder.margins == 0).sum()) == 25
    assert by_folder.fingerprint() == by_file.fingerprint()


# ---------------------------------------------------------------- formats


def _save_dataset(path: Path, dict_split: str | None = None) -> Path:
    import datasets

    ds = datasets.Dataset.from_list(RECORDS)
    if dict_split:
        ds = datasets.DatasetDict({dict_split: ds, "other": ds.select([0])})
    ds.save_to_disk(str(path))
    return path


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda d: write_jsonl(d / "p.jsonl", RECORDS), id="jsonl"),
        pytest.param(lambda d: _write_text(d / "p.json", json.dumps(RECORDS)), id="json-list"),
        pytest.param(lambda d: _write_text(d / "p.json", json.dumps({"data": RECORDS})), id="json-data"),
        pytest.param(lambda d: write_jsonl(d / "lines.json", RECORDS), id="json-holding-json-lines"),
        pytest.param(lambda d: _write_parquet(d / "p.parquet"), id="parquet"),
        pytest.param(lambda d: write_csv(d / "p.csv", RECORDS), id="csv"),
        pytest.param(lambda d: _save_dataset(d / "saved"), id="save_to_disk"),
        pytest.param(lambda d: _save_dataset(d / "saved_dict", dict_split="train"), id="save_to_disk-dict"),
        pytest.param(lambda d: (write_jsonl(d / "train.jsonl", RECORDS), d)[1], id="folder-with-split-file"),
    ],
)
def test_every_format_gives_the_same_table(tmp_path, make):
    table, report = load_preferences(make(tmp_path))
    assert_matches_records(table)
    assert report.rows_read == 3 and report.rows_kept == 3 and report.schema == "plain"


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _write_parquet(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(RECORDS), path)
    return path


def test_folder_picks_the_requested_split_file(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", RECORDS)
    write_csv(tmp_path / "test.csv", RECORDS[:1])
    assert len(load_preferences(str(tmp_path))[0]) == 3
    assert load_preferences(str(tmp_path), split="test")[0].ids == ["r1"]


def test_save_to_disk_dict_picks_split_and_names_the_others(tmp_path):
    path = _save_dataset(tmp_path / "dd", dict_split="train")
    assert load_preferences(path, split="other")[0].ids == ["r1"]
    with pytest.raises(DataError, match="available splits: train, other"):
        load_preferences(path, split="validation")


def test_json_with_split_keys(tmp_path):
    path = _write_text(tmp_path / "s.json", json.dumps({"train": RECORDS, "test": RECORDS[2:]}))
    assert load_preferences(path, split="test")[0].ids == ["r3"]


# ---------------------------------------------------------------- layouts


def test_ultrafeedback_messages_single_and_multi_turn():
    table, report = load_preferences(FIXTURES / "messages.jsonl", columns={"id": "prompt_id"})
    assert report.schema == "ultrafeedback-messages"
    assert table.ids == ["m1", "m2"]
    assert table.prompts[0] == "Write a haiku about rain."  # a lone user turn becomes plain text
    assert table.prompts[1] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 6 x 7?"},
        {"role": "assistant", "content": "42"},
        {"role": "user", "content": "And 6 x 8?"},
    ]
    assert table.chosen == [
        "Soft rain on the roof\nthe gutters hum their old song\nthe street shines like glass",
        "48",
    ]
    assert table.rejected[1] == "Let me think about that at length. It is 46."
    np.testing.assert_array_equal(table.margins, [5.5, 7.0])


def _conv(user: str, reply: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def test_messages_with_different_prompt_turns_are_an_error(tmp_path):
    rows = [
        {"chosen": _conv("Hi", "Hello"), "rejected": _conv("Hi", "Go away")},
        {"chosen": _conv("Hi", "Hello"), "rejected": _conv("Bye", "Go away")},
    ]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(DataError, match="prompt turns of rejected differ") as err:
        load_preferences(path)
    assert_names(err, path, 2, "rejected")


def test_messages_must_end_with_the_assistant(tmp_path):
    rows = [
        {
            "chosen": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "?"}],
            "rejected": _conv("Hi", "no"),
        }
    ]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(DataError, match="last message must be the assistant") as err:
        load_preferences(path)
    assert_names(err, path, 1, "chosen")


def test_reply_only_messages_take_the_prompt_column(tmp_path):
    reply = [{"role": "assistant", "content": "Paris"}]
    rows = [
        {
            "prompt": [{"role": "user", "content": "Capital of France?"}],
            "chosen": reply,
            "rejected": [{"role": "assistant", "content": "Nice"}],
        }
    ]
    table, report = load_preferences(write_jsonl(tmp_path / "c.jsonl", rows))
    assert report.schema == "ultrafeedback-messages"
    assert (table.prompts, table.chosen, table.rejected) == (["Capital of France?"], ["Paris"], ["Nice"])


def test_plain_text_without_scores(tmp_path):
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in RECORDS]
    table, report = load_preferences(write_jsonl(tmp_path / "p.jsonl", rows))
    assert report.schema == "plain" and not table.has_scores
    assert table.score_chosen is None and table.score_rejected is None
    assert table.ids == ["0", "1", "2"]  # no id column: the 0-based row number
    with pytest.raises(ValueError, match="no scores"):
        _ = table.margins


def test_nested_scores_found_at_one_level_and_as_dotted_csv_columns(tmp_path):
    nested = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "meta": {"score_chosen": 4, "score_rejected": 1}}
    ]
    table, report = load_preferences(write_jsonl(tmp_path / "n.jsonl", nested))
    assert report.columns["score_chosen"] == "meta.score_chosen"
    np.testing.assert_array_equal(table.margins, [3.0])
    flat = [
        {
            "prompt": "p",
            "chosen": "a",
            "rejected": "b",
            "metadata.score_chosen": "6.5",
            "metadata.score_rejected": "6",
        }
    ]
    table, _ = load_preferences(write_csv(tmp_path / "n.csv", flat))
    np.testing.assert_array_equal(table.margins, [0.5])


# ---------------------------------------------------------------- unordered pairs


def test_unordered_pairs_are_ordered_by_score_and_ties_follow_the_policy():
    path = FIXTURES / "unordered_pairs.csv"
    with pytest.raises(DataError, match="tie_policy") as err:
        load_preferences(path)
    assert_names(err, path, 3, "score_b")
    with pytest.raises(DataError, match="tie_policy"):  # skipping bad rows is not a tie decision
        load_preferences(path, skip_bad_rows=True)

    table, report = load_preferences(path, tie_policy="skip")
    assert report.schema == "unordered-pair"
    assert table.ids == ["p1", "p2", "p4"]
    assert report.skipped == {"tie (tie_policy=skip)": 1} and report.rows_read == 4
    assert table.chosen[1] == "Red" and table.rejected[1] == "Green"  # score_b 8.5 > score_a 3
    np.testing.assert_array_equal(table.margins, [7.0, 5.5, 6.5])

    kept, report = load_preferences(path, tie_policy="keep")
    assert len(kept) == 4 and report.skipped == {}
    i = kept.index_of("p3")
    assert (kept.chosen[i], kept.rejected[i], kept.margins[i]) == ("Hello!", "Good day to you, friend.", 0.0)


def test_ordered_ties_are_kept_unless_the_tie_policy_skips_them(tmp_path):
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 7, "score_rejected": 7},
        {"prompt": "q", "chosen": "c", "rejected": "d", "score_chosen": 8, "score_rejected": 5.5},
    ]
    path = write_jsonl(tmp_path / "ordered.jsonl", rows)
    for policy in ("error", "keep"):  # an ordered row names its chosen reply: the data has decided
        table, report = load_preferences(path, tie_policy=policy)
        assert table.margins.tolist() == [0.0, 2.5] and report.skipped == {}
    table, report = load_preferences(path, tie_policy="skip")
    assert table.chosen == ["c"] and table.margins.tolist() == [2.5]
    assert report.skipped == {"tie (tie_policy=skip)": 1} and report.rows_read == 2
    assert "skipped 1: tie (tie_policy=skip)" in report.summary()


def test_ultrafeedback_ties_left_out_for_odpo_with_the_tie_policy(ultrafeedback_dir):
    """The sample's ordered rows hold 111 ties in 1,000; ODPO's log needs them gone and names the option."""
    from popalign.losses.sources import MARGIN_SOURCES

    odpo = MARGIN_SOURCES["odpo"]
    kept, report = load_preferences(ultrafeedback_dir)
    assert len(kept) == 1000 and int((kept.margins == 0).sum()) == 111 and report.skipped == {}
    with pytest.raises(ValueError, match=r"111 rows do not.*data.tie_policy=skip \(--tie-policy skip\)"):
        odpo.check_table(kept)
    untied, report = load_preferences(ultrafeedback_dir, tie_policy="skip")
    assert len(untied) == 889 and report.skipped == {"tie (tie_policy=skip)": 111}
    assert (untied.margins > 0).all()
    odpo.check_table(untied)  # accepted


def test_unordered_pairs_of_conversations(tmp_path):
    rows = [
        {
            "response_a": _conv("Hi", "Go away"),
            "response_b": _conv("Hi", "Hello!"),
            "score_a": 1,
            "score_b": 7,
        }
    ]
    table, report = load_preferences(write_jsonl(tmp_path / "u.jsonl", rows))
    assert report.schema == "unordered-pair"
    assert (table.prompts, table.chosen, table.rejected) == (["Hi"], ["Hello!"], ["Go away"])


def test_unordered_pairs_need_both_scores(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"prompt": "p", "response_a": "a", "response_b": "b"}])
    with pytest.raises(DataError, match="need score_a and score_b") as err:
        load_preferences(path)
    assert_names(err, path, 1, "score_a")


# ---------------------------------------------------------------- column mapping


RENAMED = "prompt=question,chosen=good,rejected=bad,score_chosen=rating.good,score_rejected=rating.bad,id=uid"


def test_column_map_as_dict_string_and_yaml_agree(tmp_path):
    path = FIXTURES / "renamed_columns.jsonl"
    by_string, report = load_preferences(path, columns=RENAMED)
    by_dict, _ = load_preferences(DataSpec(path=str(path), columns=parse_column_map(RENAMED)))

    @dataclass
    class Run:
        data: DataSpec = field(default_factory=DataSpec)

    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(
        f"data:\n  path: {path}\n  columns:\n"
        + "".join(f"    {t}: {s}\n" for t, s in parse_column_map(RENAMED).items())
    )
    by_yaml, _ = load_preferences(load_config(Run, yaml_file).data)
    assert by_string.ids == ["q-1", "q-2", "q-3"]
    assert by_string.prompts[1] == "What is the capital of France?" and by_string.rejected[1] == "Lyon"
    np.testing.assert_array_equal(by_string.margins, [5.5, 7.0, 0.0])
    assert by_string.fingerprint() == by_dict.fingerprint() == by_yaml.fingerprint()
    assert report.columns["score_chosen"] == "rating.good"


def test_parse_column_map():
    assert parse_column_map(" prompt = q , chosen=a.b ,") == {"prompt": "q", "chosen": "a.b"}
    assert parse_column_map("") == {}
    for bad, match in [
        ("prompt", "is not TARGET=SOURCE"),
        ("prompt=", "is not TARGET=SOURCE"),
        ("=q", "is not TARGET=SOURCE"),
        ("prompt=a,prompt=b", "given twice"),
        ("promt=q", "Did you mean prompt"),
        ("chosen=a,response_a=b", "not both"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_column_map(bad)


def test_mapped_column_that_is_missing_names_the_available_ones(tmp_path):
    path = FIXTURES / "renamed_columns.jsonl"
    with pytest.raises(DataError) as err:
        load_preferences(path, columns=RENAMED.replace("prompt=question", "prompt=query"))
    assert_names(err, path, 1, "query")
    assert "available columns: uid, question, good, bad, rating, rating.good, rating.bad" in str(err.value)


# ---------------------------------------------------------------- ids


def test_ids_from_id_source_index_or_row_number(tmp_path):
    base = {"prompt": "p", "chosen": "a", "rejected": "b"}
    with_id = [{**base, "id": 7, "source_index": 100}, {**base, "id": "x", "source_index": 101}]
    assert load_preferences(write_jsonl(tmp_path / "a.jsonl", with_id))[0].ids == ["7", "x"]
    with_index = [{**base, "source_index": 100}, {**base, "source_index": 101}]
    assert load_preferences(write_jsonl(tmp_path / "b.jsonl", with_index))[0].ids == ["100", "101"]
    mapped = [{**base, "key": "k1"}, {**base, "key": "k2"}]
    assert load_preferences(write_jsonl(tmp_path / "c.jsonl", mapped), columns="id=key")[0].ids == [
        "k1",
        "k2",
    ]
    # Without an id column, the 0-based row number; for JSONL it follows the line, blank lines included.
    (tmp_path / "d.jsonl").write_text(json.dumps(base) + "\n\n" + json.dumps(base) + "\n")
    assert load_preferences(tmp_path / "d.jsonl")[0].ids == ["0", "2"]


def test_duplicate_ids_name_both_rows(tmp_path):
    rows = [RECORDS[0], RECORDS[1], {**RECORDS[2], "id": "r1"}]
    path = write_jsonl(tmp_path / "dup.jsonl", rows)
    with pytest.raises(DataError, match=r"duplicate id 'r1' \(also row 1\)") as err:
        load_preferences(path)
    assert_names(err, path, 3, "id")


# ---------------------------------------------------------------- bad input


def _one_bad(tmp_path: Path, row2: dict, name: str = "bad.jsonl") -> Path:
    """Three rows whose second is ``row2`` laid over a good record."""
    return write_jsonl(tmp_path / name, [RECORDS[0], {**RECORDS[1], **row2}, RECORDS[2]])


@pytest.mark.parametrize(
    "row2, field, match",
    [
        ({"prompt": ""}, "prompt", "empty text"),
        ({"prompt": "  \n "}, "prompt", "empty text"),
        ({"prompt": None}, "prompt", "null"),
        ({"chosen": 5}, "chosen", "expected text, got int"),
        ({"score_chosen": "high"}, "score_chosen", "must be a number, got 'high'"),
        ({"score_rejected": float("nan")}, "score_rejected", "finite number"),
        ({"score_rejected": None}, "score_rejected", "missing score"),
        ({"score_chosen": True}, "score_chosen", "must be a number, got bool"),
        ({"score_chosen": 1.0, "score_rejected": 4.0}, "score_chosen", "chosen is scored below rejected"),
        ({"id": ""}, "id", "empty id"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, row2, field, match):
    path = _one_bad(tmp_path, row2)
    with pytest.raises(DataError, match=match) as err:
        load_preferences(path)
    assert_names(err, path, 2, field)


def test_a_field_missing_from_a_later_row(tmp_path):
    rows = [RECORDS[0], {k: v for k, v in RECORDS[1].items() if k != "rejected"}]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(DataError, match="missing field") as err:
        load_preferences(path)
    assert_names(err, path, 2, "rejected")


def test_missing_column_names_the_available_columns(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match="available columns: question, chosen, rejected") as err:
        load_preferences(path)
    assert_names(err, path, 1, "prompt")
    assert "--columns prompt=NAME" in str(err.value)


def test_only_one_score_column_is_an_error(tmp_path):
    path = write_jsonl(
        tmp_path / "s.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 3}]
    )
    with pytest.raises(DataError, match="give both scores or neither") as err:
        load_preferences(path)
    assert_names(err, path, 1, "score_rejected")


def test_empty_replies_kept_by_default_or_errors_when_asked(tmp_path):
    path = _one_bad(tmp_path, {"rejected": " "})
    table, report = load_preferences(path)
    assert table.rejected[1] == " " and report.rows_kept == 3
    assert report.notes == [
        "note: 1 kept rows have an empty chosen or rejected reply (rows 2; empty_replies=keep)"
    ]
    with pytest.raises(DataError, match="empty text") as err:
        load_preferences(path, empty_replies="error")
    assert_names(err, path, 2, "rejected")


def test_bad_json_line_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "j.jsonl", RECORDS + [RECORDS[0]], raw_lines={3: '{"prompt": "x",'})
    with pytest.raises(DataError, match="line 3 is not valid JSON") as err:
        load_preferences(path)
    assert_names(err, path, 3, None)
    (tmp_path / "arr.jsonl").write_text(json.dumps(RECORDS[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError, match="expected a JSON object, got list") as err:
        load_preferences(tmp_path / "arr.jsonl")
    assert_names(err, tmp_path / "arr.jsonl", 2, None)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("x.txt", b"hello", "unknown file extension '.txt'"),
        ("x.parquet", b"this is not parquet", "cannot read as Parquet"),
        ("x.jsonl", b'{"prompt": "caf\xe9"}\n', "not UTF-8"),
        ("x.json", b'[{"prompt": 1},', "not valid JSON"),
        ("x.json", b'{"rows": []}', "expected a list of objects"),
        ("x.jsonl", b"\n\n", "no rows"),
    ],
)
def test_unreadable_files_are_data_errors(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as err:
        load_preferences(path)
    assert str(path) in str(err.value)


def test_missing_paths_and_folders_without_the_split(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_preferences(str(tmp_path / "nowhere.jsonl"))
    write_jsonl(tmp_path / "train.jsonl", RECORDS)
    with pytest.raises(DataError, match="no test.jsonl.*found: train.jsonl"):
        load_preferences(str(tmp_path), split="test")


def test_hub_only_when_asked_and_failures_wrapped(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        if name == "owner/broken":
            raise ConnectionError("offline")
        return datasets.Dataset.from_list(RECORDS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    table, report = load_preferences("hub:owner/prefs", split="test")
    assert_matches_records(table)
    assert report.source == "hub:owner/prefs[test]"
    load_preferences("owner/prefs")  # a non-existent local path that looks like owner/name
    assert calls == [("owner/prefs", "test"), ("owner/prefs", "train")]
    with pytest.raises(DataError, match="ConnectionError: offline"):
        load_preferences("hub:owner/broken")


# ---------------------------------------------------------------- skipping, limits, options


def test_skip_reports_counts_per_reason_and_examples():
    path = FIXTURES / "with_bad_rows.jsonl"
    with pytest.raises(DataError):
        load_preferences(path)
    table, report = load_preferences(path, skip_bad_rows=True)
    assert table.ids == ["a", "f"]
    assert report.rows_read == 7 and report.rows_kept == 2 and report.rows_skipped == 5
    assert report.skipped == {
        "unreadable row": 1,
        "empty text": 1,
        "bad score": 1,
        "chosen scored below rejected": 1,
        "duplicate id": 1,
    }
    assert [e.split(": ", 1)[0] for e in report.examples] == [
        f"{path}, row 5",
        f"{path}, row 2, field 'prompt'",
        f"{path}, row 3, field 'score_chosen'",
        f"{path}, row 4, field 'score_chosen'",
        f"{path}, row 6, field 'id'",
    ]
    summary = report.summary()
    assert "7 read, 2 kept, 5 skipped" in summary and "skipped 1: duplicate id" in summary
    np.testing.assert_array_equal(table.margins, [7.0, 0.0])  # ties in ordered data are kept


def test_every_row_bad_is_an_error_with_the_report(tmp_path):
    path = write_jsonl(tmp_path / "b.jsonl", [{**r, "prompt": ""} for r in RECORDS])
    with pytest.raises(DataError, match="no valid rows left(.|\n)*skipped 3: empty text"):
        load_preferences(path, skip_bad_rows=True)


def test_limit_keeps_the_first_valid_rows_and_says_so():
    table, report = load_preferences(FIXTURES / "with_bad_rows.jsonl", skip_bad_rows=True, limit=1)
    assert table.ids == ["a"] and report.rows_read == 2  # the unreadable line 5 was read with the file
    assert report.notes == ["limit: kept the first 1 valid rows; stopped before row 2"]


def test_options_are_validated():
    with pytest.raises(PopalignError, match="unknown option"):
        load_preferences(str(FIXTURES / "messages.jsonl"), colums="id=prompt_id")
    with pytest.raises(ConfigError, match="limit"):
        load_preferences(str(FIXTURES / "messages.jsonl"), limit=0)
    assert "tie_policy" in describe_config(DataSpec) and "skip_bad_rows" in describe_config(DataSpec)


# ---------------------------------------------------------------- saving


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_save_and_load_round_trip(tmp_path, suffix):
    table, _ = load_preferences(FIXTURES / "messages.jsonl", columns="id=prompt_id")
    path = tmp_path / f"out{suffix}"
    save_preferences(table, path)
    again, report = load_preferences(path)
    assert again.fingerprint() == table.fingerprint()
    assert isinstance(again.prompts[0], str) and isinstance(again.prompts[1], list)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    assert report.columns["id"] == "id"


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip_without_scores(tmp_path, suffix):
    table = PreferenceTable(ids=["a", "b"], prompts=["p", "q"], chosen=["x", "y"], rejected=["z", "w"])
    save_preferences(table, tmp_path / f"t{suffix}")
    again, _ = load_preferences(tmp_path / f"t{suffix}")
    assert again.fingerprint() == table.fingerprint() and not again.has_scores


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("scores", [True, False])
def test_round_trip_keeps_the_margin_column(tmp_path, suffix, scores):
    # The margin column is data of its own (the ``margin`` source reads it), not the scores' difference.
    extra = {"score_chosen": [3.0, 5.0], "score_rejected": [1.0, 4.0]} if scores else {}
    table = PreferenceTable(
        ids=["a", "b"],
        prompts=["p", "q"],
        chosen=["x", "y"],
        rejected=["z", "w"],
        margin_column=[0.25, 7.5],
        **extra,
    )
    save_preferences(table, tmp_path / f"t{suffix}")
    again, _ = load_preferences(tmp_path / f"t{suffix}")
    assert again.margin_column is not None and again.margin_column.tolist() == [0.25, 7.5]
    assert again.has_scores is scores


def test_save_rejects_other_extensions(tmp_path):
    table = PreferenceTable(ids=["a"], prompts=["p"], chosen=["x"], rejected=["z"])
    with pytest.raises(DataError, match="use .jsonl or .parquet"):
        save_preferences(table, tmp_path / "t.csv")


def test_report_summary_lists_columns():
    report = LoadReport(
        source="s", rows_read=2, rows_kept=2, skipped={}, examples=[], schema="plain", columns={"prompt": "q"}
    )
    assert report.summary().splitlines() == [
        "source: s",
        "schema: plain",
        "rows: 2 read, 2 kept, 0 skipped",
        "columns: prompt <- q",
    ]
