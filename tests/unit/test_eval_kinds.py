"""The registry of evaluation kinds: one entry per kind, read by load_run, the reports and the card."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from popalign.document import markdown_lines
from popalign.errors import PopalignError
from popalign.eval import report as rep
from popalign.eval.kinds import KINDS, get_kind, register_kind
from popalign.eval.pipeline import write_record, write_reports

REPO = Path(__file__).resolve().parents[2]


def _disc_record(accuracy: float) -> dict:
    est = {"value": accuracy, "low": accuracy - 0.1, "high": accuracy + 0.1}
    metrics = {"pearson": est, "spearman": est, "accuracy": est, "n_scored": 10, "ties": {"n": 1}}
    return {"kind": "discriminative", "name": "a", "model": {"method": "dpo-pop"}, "metrics": metrics}


def test_builtin_kinds_are_registered_once_in_report_order():
    assert list(KINDS) == ["discriminative", "rewardbench", "generate", "judge"]
    assert len({k.file for k in KINDS.values()}) == len(KINDS)
    assert get_kind("judge").file == "judge.json"
    with pytest.raises(PopalignError, match="unknown evaluation kind 'nope'"):
        get_kind("nope")
    with pytest.raises(PopalignError, match="already registered"):
        register_kind(KINDS["judge"])


def test_every_builtin_kind_has_an_eval_command():
    from popalign.cli import eval as cli_eval

    commands = set(re.findall(r'_sub\(\s*eval_sub,\s*"([a-z]+)"', Path(cli_eval.__file__).read_text()))
    assert commands == set(KINDS)


def test_a_record_lands_in_its_kinds_file_and_section(tmp_path):
    write_record(tmp_path, _disc_record(0.75))
    write_reports(tmp_path)
    assert json.loads((tmp_path / "discriminative.json").read_text())["metrics"]["accuracy"]["value"] == 0.75
    run = rep.load_run(tmp_path)
    assert run.method == "dpo-pop" and set(run.results) == {"discriminative"}
    text = (tmp_path / "eval.md").read_text()
    assert "## Discriminative (test preferences)" in text and "## RewardBench" not in text
    assert KINDS["discriminative"].note in text


def test_the_card_shows_only_kinds_marked_for_it(tmp_path):
    ev = tmp_path / "eval"
    ev.mkdir()
    write_record(ev, _disc_record(0.5))
    generate = {"kind": "generate", "data": {"prompts": 3}, "kl": {"value": None, "reason": "greedy"}}
    write_record(ev, generate)
    lines = markdown_lines(rep.card_section(tmp_path))
    assert lines[:3] == ["## Evaluation", "", "### Discriminative (test preferences)"]
    assert not any("Generations" in line for line in lines)


def test_the_add_your_own_section_works_as_written(tmp_path):
    text = (REPO / "docs" / "evaluation.md").read_text()
    blocks = {
        key: re.search(rf"<!-- add-your-own: {key} -->\n```python\n(.*?)```", text, re.S).group(1)
        for key in ("kind", "kind-run", "kind-test")
    }
    try:
        for key in ("kind", "kind-run", "kind-test"):
            exec(compile(blocks[key], f"docs/evaluation.md ({key})", "exec"), {"out": tmp_path})
        assert KINDS["length"].file == "length.json"
        # the new kind reaches the comparison report too, in Markdown and HTML
        written = rep.write_comparison([rep.load_run(tmp_path)], tmp_path / "report")
        assert "<h2>Reply length</h2>" in written["html"].read_text()
    finally:
        KINDS.pop("length", None)
