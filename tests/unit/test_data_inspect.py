"""Statistics, histograms and the ``popalign data inspect`` command."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from popalign.cli import data as data_cli
from popalign.data.inspect import (
    format_stats,
    histogram,
    plot_margin_histogram,
    preference_stats,
    prompt_chars,
    text_histogram,
)
from popalign.data.schema import PreferenceTable
from popalign.errors import PopalignError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def small_table() -> PreferenceTable:
    # margins [0, 1, 4, 2]: mean 1.75; squared deviations 3.0625 + 0.5625 + 5.0625 + 0.0625 = 8.75,
    # so the population std is sqrt(8.75 / 4); sorted [0, 1, 2, 4] gives q1 0.75, median 1.5, q3 2.5.
    # score_chosen [3, 5, 9, 4]: mean 5.25, squared deviations 5.0625 + 0.0625 + 14.0625 + 1.5625 = 20.75.
    return PreferenceTable(
        ids=["a", "b", "c", "d"],
        prompts=[
            "hi",
            "hello",
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "sum?"}],
            "x",
        ],
        chosen=["abc", "de", "f", "ghij"],
        rejected=["", "k", "lm", "nop"],
        score_chosen=np.array([3.0, 5.0, 9.0, 4.0]),
        score_rejected=np.array([3.0, 4.0, 5.0, 2.0]),
    )


def test_stats_worked_by_hand():
    s = preference_stats(small_table())
    assert s["rows"] == 4 and s["ties"] == 1 and s["has_scores"]
    assert s["margin"] == pytest.approx(
        {"mean": 1.75, "std": np.sqrt(8.75 / 4), "min": 0.0, "q1": 0.75, "median": 1.5, "q3": 2.5, "max": 4.0}
    )
    assert s["score_chosen"] == pytest.approx(
        {"mean": 5.25, "std": np.sqrt(20.75 / 4), "min": 3.0, "max": 9.0}
    )
    assert s["score_rejected"]["mean"] == pytest.approx(3.5)
    assert s["margin_histogram"] == {"values": [0.0, 1.0, 2.0, 4.0], "counts": [1, 1, 1, 1]}
    assert s["multi_turn_prompts"] == 1 and s["empty_replies"] == 1
    # prompt characters: 2, 5, 8 + 4 (the message contents together), 1 -> mean 5, squared deviations 74
    expected = {"mean": 5.0, "std": np.sqrt(74 / 4), "min": 1, "median": 3.5, "max": 12}
    assert s["lengths"]["prompt"] == pytest.approx(expected)
    assert s["lengths"]["rejected"]["max"] == 3 and s["lengths"]["rejected"]["min"] == 0


def test_stats_on_the_shared_sample_match_numpy(ultrafeedback_dir):
    from popalign.data.load import load_preferences

    raw = [json.loads(line) for line in (ultrafeedback_dir / "train.jsonl").read_text().splitlines()]
    sc = np.array([r["metadata"]["score_chosen"] for r in raw])
    sr = np.array([r["metadata"]["score_rejected"] for r in raw])
    m = sc - sr
    s = preference_stats(load_preferences(str(ultrafeedback_dir))[0])
    assert s["rows"] == 1000 and s["ties"] == int(np.sum(m == 0)) == 111
    assert s["score_chosen"] == pytest.approx(
        {"mean": sc.mean(), "std": sc.std(), "min": sc.min(), "max": sc.max()}
    )
    assert s["score_rejected"] == pytest.approx(
        {"mean": sr.mean(), "std": sr.std(), "min": sr.min(), "max": sr.max()}
    )
    q1, med, q3 = np.percentile(m, [25, 50, 75])
    assert s["margin"] == pytest.approx(
        {"mean": m.mean(), "std": m.std(), "min": m.min(), "q1": q1, "median": med, "q3": q3, "max": m.max()}
    )
    hist = s["margin_histogram"]
    assert sum(hist["counts"]) == 1000 and hist["values"] == sorted(set(m.tolist()))
    assert hist["counts"][0] == 111  # the first bar is the ties
    chosen_len = np.array([len(r["chosen"]) for r in raw])
    assert s["lengths"]["chosen"]["mean"] == pytest.approx(chosen_len.mean())
    assert s["lengths"]["chosen"]["max"] == chosen_len.max() and s["empty_replies"] == 2


def test_table_without_scores():
    table = PreferenceTable(ids=["a"], prompts=["p"], chosen=["x"], rejected=["yz"])
    s = preference_stats(table)
    assert s["ties"] is None and s["margin"] is None and s["margin_histogram"] is None
    assert "scores: none" in format_stats(s)
    assert s["lengths"]["rejected"]["mean"] == 2


def test_continuous_margins_use_equal_width_bins():
    margins = np.linspace(0.0, 1.0, 101)  # 101 distinct values: too many for one bar each
    edges, counts, discrete = histogram(margins, bins=10)
    assert not discrete and len(edges) == 11 and sum(counts) == 101
    lines = text_histogram({"edges": edges, "counts": counts})
    assert len(lines) == 10
    assert lines[0].strip().startswith("[0, 0.1)") and lines[-1].strip().startswith("[0.9, 1]")
    assert lines[-1].endswith(" 11")  # numpy's last bin holds 0.90 ... 1.00


def test_text_histogram_scales_to_the_largest_bin():
    lines = text_histogram({"values": [0.0, 0.5, 1.0], "counts": [10, 5, 0]}, width=10)
    assert lines == ["    0 | ########## 10", "  0.5 | #####      5", "    1 |            0"]


def test_prompt_chars_counts_message_contents():
    assert prompt_chars("abc") == 3
    assert prompt_chars([{"role": "user", "content": "ab"}, {"role": "assistant", "content": "cde"}]) == 5


@pytest.mark.parametrize("margins", [np.array([0.0, 0.5, 0.5, 2.0]), np.linspace(-1, 3, 200)])
def test_plot_writes_a_png(tmp_path, margins):
    path = tmp_path / "plots" / "margins.png"
    plot_margin_histogram(margins, path, title="test")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in path.parent.iterdir()] == ["margins.png"]


# ---------------------------------------------------------------- the command


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="popalign")
    data_cli.register(parser.add_subparsers(), "inspect preference datasets")
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_inspect_prints_stats_and_writes_plot_and_json(tmp_path, capsys, ultrafeedback_dir):
    png, js = tmp_path / "m.png", tmp_path / "s.json"
    assert run_cli("data", "inspect", str(ultrafeedback_dir), "--plot", str(png), "--json", str(js)) == 0
    out = capsys.readouterr().out
    for text in (
        "schema: plain",
        "rows: 1000",
        "ties (margin 0): 111 (11.1%)",
        "margin histogram:",
        "score_chosen: mean",
        "length in characters:",
    ):
        assert text in out
    assert png.read_bytes()[:8] == PNG_MAGIC
    saved = json.loads(js.read_text())
    assert saved["report"]["rows_kept"] == 1000 and saved["report"]["schema"] == "plain"
    assert saved["stats"]["ties"] == 111 and saved["stats"]["margin"]["median"] == 1.5


def test_inspect_options_reach_the_loader(tmp_path, capsys):
    yaml_file = tmp_path / "cols.yaml"
    yaml_file.write_text(
        "columns:\n  prompt: question\n  chosen: good\n  rejected: bad\n"
        "  score_chosen: rating.good\n  score_rejected: rating.bad\n"
    )
    assert (
        run_cli("data", "inspect", str(FIXTURES / "renamed_columns.jsonl"), "--columns", str(yaml_file)) == 0
    )
    assert "ties (margin 0): 1 (33.3%)" in capsys.readouterr().out
    assert run_cli("data", "inspect", str(FIXTURES / "unordered_pairs.csv"), "--tie-policy", "skip") == 0
    out = capsys.readouterr().out
    assert (
        "schema: unordered-pair" in out and "skipped 1: tie (tie_policy=skip)" in out and "rows: 3\n" in out
    )
    assert run_cli("data", "inspect", str(FIXTURES / "with_bad_rows.jsonl"), "--skip-bad-rows") == 0
    assert "7 read, 2 kept, 5 skipped" in capsys.readouterr().out


def test_inspect_errors_are_popalign_errors(tmp_path):
    with pytest.raises(PopalignError, match="tie_policy"):
        run_cli("data", "inspect", str(FIXTURES / "unordered_pairs.csv"))
    no_scores = tmp_path / "n.jsonl"
    no_scores.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(PopalignError, match="no scores"):
        run_cli("data", "inspect", str(no_scores), "--plot", str(tmp_path / "m.png"))
    with pytest.raises(PopalignError, match="not TARGET=SOURCE"):
        run_cli("data", "inspect", str(no_scores), "--columns", "prompt")


def test_data_without_subcommand_prints_help(capsys):
    assert run_cli("data") == 2
    assert "inspect" in capsys.readouterr().out


def test_cli_module_imports_no_heavy_library():
    heavy = ("torch", "transformers", "datasets", "pandas", "matplotlib", "pyarrow", "numpy")
    code = f"import sys, popalign.cli.data; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
