"""Every command that reads preferences takes the same data options, and its advice names options it has.

The commands are found by walking the CLI's own parser, so a new command cannot be left out.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from popalign.cli._data_options import FLAGS, config_overrides, given
from popalign.cli.main import build_parser, main
from popalign.config import _fields_by_path, load_config
from popalign.train.config import SFTConfig, TrainConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
GRADED = str(FIXTURES / "graded_pairs.jsonl")
CONFIGS = {"train": TrainConfig, "sft": SFTConfig}
# Arguments through which a command takes a preference dataset.
DATA_DESTS = ("data", "path", "prefs")
FULL_SET = [
    "--split",
    "test",
    "--columns",
    "prompt=question,chosen=good",
    "--tie-policy",
    "skip",
    "--skip-bad-rows",
    "--empty-replies",
    "error",
    "--limit",
    "5",
]
EXPECTED = {
    "split": "test",
    "columns": {"prompt": "question", "chosen": "good"},
    "tie_policy": "skip",
    "skip_bad_rows": True,
    "empty_replies": "error",
    "limit": 5,
}


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``(command path, parser)`` of every command that runs something."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for action in subs:
        for name, child in action.choices.items():
            yield from leaves(child, (*path, name))


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def reads_preferences(path: tuple[str, ...], parser: argparse.ArgumentParser, capsys) -> bool:
    if any(a.dest in DATA_DESTS for a in parser._actions):
        return True
    if "--help-config" in options(parser):  # config-driven: does its config hold a data: section?
        assert main([*path, "--help-config"]) == 0
        return "data.path" in capsys.readouterr().out
    return False


def required_args(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for a in parser._actions:
        if not a.option_strings and a.nargs not in ("*", "?") and a.dest != "help":
            out.append("X")
        elif a.option_strings and a.required:
            out += [a.option_strings[0], "X"]
    return out


COMMANDS = list(leaves(build_parser()))


def test_the_walk_finds_every_command_that_reads_preferences(capsys):
    found = {" ".join(p) for p, parser in COMMANDS if reads_preferences(p, parser, capsys)}
    assert {
        "data inspect",
        "data split",
        "pop build",
        "pop import-labels",
        "train",
        "sft",
        "eval discriminative",
        "eval rewardbench",
        "eval generate",
        "label serve",
        "label export",
    } <= found


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_that_reads_preferences_accepts_the_whole_set(path, capsys):
    parser = dict(COMMANDS)[path]
    if not reads_preferences(path, parser, capsys):
        assert not set(FLAGS) & options(parser), "data flags on a command that reads no preferences"
        return
    assert set(FLAGS) <= options(parser)
    args = parser.parse_args([*required_args(parser), *FULL_SET])
    assert given(args) == EXPECTED
    if path[0] in CONFIGS:
        cfg = load_config(CONFIGS[path[0]], None, ["data.path=x.jsonl", *config_overrides(args)])
        assert {k: getattr(cfg.data, k) for k in EXPECTED} == EXPECTED


def test_flags_win_over_key_value_and_yaml_keys_match(tmp_path):
    parser = dict(COMMANDS)[("train",)]
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("data:\n  path: x.jsonl\n  tie_policy: keep\n  skip_bad_rows: true\n  limit: 3\n")
    args = parser.parse_args(["--config", str(yaml_file), "data.limit=4", "--limit", "7"])
    cfg = load_config(TrainConfig, args.config, [*args.overrides, *config_overrides(args)])
    assert (cfg.data.tie_policy, cfg.data.skip_bad_rows, cfg.data.limit) == ("keep", True, 7)


# --- advice names options of the command that printed it -------------------------------------------------


def _error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("popalign: error: ") and len(err.strip().splitlines()) == 1
    return err


def assert_advice_exists(err: str, path: tuple[str, ...]) -> None:
    parser = dict(COMMANDS)[path]
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", err))
    assert flags <= options(parser), f"{' '.join(path)} suggests {flags - options(parser)}"
    if path[0] in CONFIGS:
        keys = set(re.findall(r"\b((?:data|pop|tokenize|loss|training|model)\.[a-z_]+)", err))
        assert keys <= set(_fields_by_path(CONFIGS[path[0]])), keys


def _argv(path: tuple[str, ...], data: str, tmp_path: Path) -> list[str]:
    out = str(tmp_path / "out")
    if path[0] in CONFIGS:
        return [*path, f"data.path={data}", f"output_dir={out}", "model.name_or_path=random:tiny-llama"]
    return {
        ("data", "inspect"): ["data", "inspect", data],
        ("data", "split"): ["data", "split", data, "-o", out],
        ("pop", "build"): ["pop", "build", data, "-o", out],
        ("pop", "import-labels"): ["pop", "import-labels", "labels.jsonl", "--prefs", data, "-o", out],
        ("eval", "discriminative"): [
            "eval",
            "discriminative",
            "--data",
            data,
            "--score-fn",
            "m:f",
            "--out",
            out,
        ],
        ("eval", "rewardbench"): ["eval", "rewardbench", "--data", data, "--score-fn", "m:f", "--out", out],
        ("eval", "generate"): ["eval", "generate", str(tmp_path / "model"), "--data", data, "--out", out],
        ("label", "serve"): ["label", "serve", "--prefs", data, "--db", str(tmp_path / "l.sqlite")],
    }[path]


ERROR_COMMANDS = [
    ("data", "inspect"),
    ("data", "split"),
    ("pop", "build"),
    ("pop", "import-labels"),
    ("train",),
    ("sft",),
    ("eval", "discriminative"),
    ("eval", "rewardbench"),
    ("eval", "generate"),
    ("label", "serve"),
]


@pytest.mark.parametrize("path", ERROR_COMMANDS, ids=[" ".join(p) for p in ERROR_COMMANDS])
def test_tie_column_and_split_errors_suggest_options_the_command_has(path, tmp_path, capsys):
    tie = _error([*_argv(path, GRADED, tmp_path), "--tie-policy", "error"], capsys)
    assert "graded_pairs.jsonl, row 6, field 'score_b'" in tie and "--tie-policy" in tie
    assert_advice_exists(tie, path)
    noprompt = tmp_path / "noprompt.jsonl"
    noprompt.write_text(json.dumps({"question": "q", "chosen": "a", "rejected": "b"}) + "\n")
    missing = _error(_argv(path, str(noprompt), tmp_path), capsys)
    assert "column 'prompt' not found" in missing and "--columns prompt=NAME" in missing
    assert_advice_exists(missing, path)
    whole = _error([*_argv(path, GRADED, tmp_path), "--split", "test"], capsys)
    assert "--split test: a single file has no splits" in whole and "popalign data split" in whole
    assert_advice_exists(whole, path)


def test_pop_build_advice_without_scores_and_without_pairs(tmp_path, capsys):
    hh = str(FIXTURES / "hh_transcripts.jsonl")
    err = _error(["pop", "build", hh, "--skip-bad-rows", "-o", str(tmp_path / "p")], capsys)
    assert "no scores" in err and "--columns score_chosen=NAME" in err
    assert_advice_exists(err, ("pop", "build"))
    flat = tmp_path / "flat.jsonl"
    rows = [
        {"prompt": f"p{i}", "chosen": "a", "rejected": "b", "score_chosen": 5, "score_rejected": 4}
        for i in range(4)
    ]
    flat.write_text("".join(json.dumps(r) + "\n" for r in rows))
    err = _error(["pop", "build", str(flat), "-o", str(tmp_path / "p")], capsys)
    assert "no PoP pairs" in err and "lower --min-gap" in err
    assert_advice_exists(err, ("pop", "build"))
    assert not (tmp_path / "p").exists()  # nothing written


def test_train_without_scores_names_train_options(tmp_path, capsys):
    hh = str(FIXTURES / "hh_transcripts.jsonl")
    argv = [*_argv(("train",), hh, tmp_path), "method=dpo-pop-iter", "--skip-bad-rows"]
    argv += ["training.report_to=none", "training.progress=false", f"reference.cache_dir={tmp_path / 'c'}"]
    err = _error(argv, capsys)
    assert "no scores" in err and "--columns score_chosen=NAME" in err and "pop_labels=FILE" in err
    assert_advice_exists(err, ("train",))
