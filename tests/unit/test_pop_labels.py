"""PoP labels from people or a judge: (id_a, id_b, stronger) rows into PoPPairs, with row-level errors."""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from popalign.data.schema import PreferenceTable
from popalign.errors import DataError
from popalign.pop.labels import load_pop_labels
from popalign.pop.pairs import PoPPairs, sidecar_path

ROWS = [
    {"id_a": "p0", "id_b": "p1", "stronger": "a"},
    {"id_a": "p2", "id_b": "p0", "stronger": "B"},
    {"id_a": "p3", "id_b": "p4", "stronger": "p4"},
    {"id_a": "p1", "id_b": "p4", "stronger": "p1"},
]
# (strong, weak) positions the rows above mean.
EXPECTED = [(0, 1), (0, 2), (4, 3), (1, 4)]


def make_table(scores: bool = False) -> PreferenceTable:
    n = 5
    return PreferenceTable(
        ids=[f"p{i}" for i in range(n)],
        prompts=[f"prompt {i}" for i in range(n)],
        chosen=[f"good {i}" for i in range(n)],
        rejected=[f"bad {i}" for i in range(n)],
        # margins 4, 3, 2, 1, 0: rows 3 and 4 of ROWS order p4 above p3 and p1 above p4.
        score_chosen=np.array([5.0, 4.0, 3.0, 2.0, 1.0]) if scores else None,
        score_rejected=np.ones(n) if scores else None,
        source="prefs.jsonl",
    )


def write(path, rows):
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".csv":
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_valid_labels_in_every_format(tmp_path, suffix):
    pairs = load_pop_labels(write(tmp_path / f"labels{suffix}", ROWS), make_table())
    assert list(zip(pairs.strong_idx.tolist(), pairs.weak_idx.tolist(), strict=True)) == EXPECTED
    assert pairs.flipped.dtype == bool and not pairs.flipped.any()
    assert pairs.meta["settings"] == {"strategy": "labels"}
    assert pairs.meta["counts"] == {"pairs": 4, "flipped": 0}
    app = pairs.meta["appearances"]
    assert app["strong"] == {"min": 0, "mean": 0.8, "max": 2}  # p0 twice, p4 and p1 once
    assert "by_margin" not in app  # no scores, no margin histogram


def test_scores_when_present_show_labels_against_margins(tmp_path):
    pairs = load_pop_labels(write(tmp_path / "labels.jsonl", ROWS), make_table(scores=True))
    app = pairs.meta["appearances"]
    # Margins 4 > 3 and 4 > 2 agree; p4 over p3 (0 < 1) is against; p1 over p4 (3 > 0) agrees.
    assert (app["labels_agreeing_with_margins"], app["labels_against_margins"]) == (3, 1)


def test_integer_ids_in_parquet_match_string_ids(tmp_path):
    table = PreferenceTable(ids=["10", "20"], prompts=["x", "y"], chosen=["a", "b"], rejected=["c", "d"])
    path = write(tmp_path / "labels.parquet", [{"id_a": 10, "id_b": 20, "stronger": "b"}])
    pairs = load_pop_labels(path, table)
    assert (pairs.strong_idx.tolist(), pairs.weak_idx.tolist()) == ([1], [0])


def test_letters_win_over_ids_named_like_letters(tmp_path):
    table = PreferenceTable(ids=["b", "a"], prompts=["x", "y"], chosen=["c", "d"], rejected=["e", "f"])
    pairs = load_pop_labels(write(tmp_path / "l.jsonl", [{"id_a": "b", "id_b": "a", "stronger": "a"}]), table)
    assert (pairs.strong_idx.tolist(), pairs.weak_idx.tolist()) == ([0], [1])  # "a" means id_a, i.e. "b"


BAD_CASES = [
    # (the bad row, field named, part of the message)
    ({"id_a": "p9", "id_b": "p1", "stronger": "a"}, "id_a", "not in the preference dataset"),
    ({"id_a": "p1", "id_b": "zz", "stronger": "a"}, "id_b", "not in the preference dataset"),
    ({"id_a": "p3", "id_b": "p3", "stronger": "a"}, "id_b", "itself"),
    ({"id_a": "p2", "id_b": "p3", "stronger": "c"}, "stronger", "neither"),
    ({"id_a": "p2", "id_b": "p3", "stronger": "tie"}, "stronger", "neither"),
    ({"id_a": "p2", "id_b": "p3", "stronger": "p0"}, "stronger", "neither"),  # an id outside the pair
    ({"id_a": "p0", "id_b": "p1", "stronger": "b"}, "id_b", "already labelled in row 1"),  # same order
    ({"id_a": "p1", "id_b": "p0", "stronger": "a"}, "id_b", "already labelled in row 1"),  # reversed
    ({"id_a": "p2", "id_b": "p3", "stronger": ""}, "stronger", "missing"),
    ({"id_a": "p2", "stronger": "a"}, "id_b", "missing"),
]


@pytest.mark.parametrize("bad,field,message", BAD_CASES)
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_each_bad_row_is_a_data_error_naming_file_row_field(tmp_path, suffix, bad, field, message):
    if suffix == ".csv" and "id_b" not in bad:
        bad = {**bad, "id_b": ""}  # a CSV row always has every column; an empty cell is missing
    rows = [ROWS[0], ROWS[2], bad]
    path = write(tmp_path / f"labels{suffix}", [dict(r) for r in rows])
    with pytest.raises(DataError, match=message) as err:
        load_pop_labels(path, make_table())
    assert (err.value.file, err.value.row, err.value.field) == (str(path), 3, field)
    assert str(path) in str(err.value) and "row 3" in str(err.value)


def test_unsupported_or_missing_file(tmp_path):
    with pytest.raises(DataError, match="must end in"):
        load_pop_labels(tmp_path / "labels.txt", make_table())
    with pytest.raises(DataError, match="not found"):
        load_pop_labels(tmp_path / "labels.jsonl", make_table())
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError) as err:
        load_pop_labels(path, make_table())
    assert err.value.row == 2


def test_labels_round_trip_through_a_pair_file(tmp_path):
    table = make_table()
    pairs = load_pop_labels(write(tmp_path / "labels.csv", ROWS), table)
    out = tmp_path / "people.parquet"
    pairs.save(out, table)
    back = PoPPairs.load(out, table)
    assert np.array_equal(back.strong_idx, pairs.strong_idx) and np.array_equal(back.weak_idx, pairs.weak_idx)
    assert back.meta["source"]["labels"] == str(tmp_path / "labels.csv")


def test_cli_import_labels(tmp_path, capsys):
    from popalign.cli import pop

    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "prompt": f"q{i}", "chosen": "c", "rejected": "r"}) + "\n"
            for i in range(5)
        )
    )
    labels = write(tmp_path / "labels.jsonl", ROWS)
    parser = argparse.ArgumentParser(prog="popalign")
    pop.register(parser.add_subparsers(dest="command"), "PoP datasets")
    args = parser.parse_args(
        ["pop", "import-labels", str(labels), "--prefs", str(prefs), "-o", str(tmp_path)]
    )
    assert args.func(args) == 0
    assert "PoP pairs: 4" in capsys.readouterr().out
    path = tmp_path / "pop_pairs.parquet"
    assert sidecar_path(path).exists()
    back = PoPPairs.load(path, make_table())
    assert list(zip(back.strong_idx.tolist(), back.weak_idx.tolist(), strict=True)) == EXPECTED
