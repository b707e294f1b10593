"""Evaluation folders and the comparison report, driven by scoring functions (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from popalign.document import html_table, markdown_table
from popalign.errors import PopalignError
from popalign.eval import report as rep
from popalign.eval.discriminative import accuracy
from popalign.eval.pipeline import (
    BootstrapOptions,
    ScoringOptions,
    plan_targets,
    run_discriminative,
    run_judge,
    run_rewardbench,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "rewardbench_small.jsonl"
BOOT = BootstrapOptions(n_resamples=100)


@pytest.fixture()
def score_file(tmp_path) -> Path:
    path = tmp_path / "rewards.py"
    path.write_text(
        "def longer(prompt, response):\n    return float(len(response))\n\n"
        "def shorter(prompt, response):\n    return -float(len(response))\n"
    )
    return path


def test_markdown_and_html_tables_by_hand():
    table = (["Run", "Accuracy"], [["a|b", "0.5"]])
    assert markdown_table(table) == "| Run | Accuracy |\n|---|---|\n| a\\|b | 0.5 |"
    assert (
        html_table((["<x>"], [["&"]]))
        == "<table><thead><tr><th>&lt;x&gt;</th></tr></thead><tbody><tr><td>&amp;</td></tr></tbody></table>"
    )


def test_output_folders():
    assert [t.out for t in plan_targets(["runs/a"], None)] == [Path("runs/a/eval")]
    assert [t.out for t in plan_targets(["runs/a"], "o")] == [Path("o")]
    assert [t.out for t in plan_targets(["runs/a", "runs/b"], "o")] == [Path("o/a"), Path("o/b")]
    assert [t.name for t in plan_targets(["runs/a", "x/b"], None, ["p", "q"])] == ["p", "q"]
    with pytest.raises(PopalignError, match="share a name"):
        plan_targets(["runs/a", "other/a"], None)
    with pytest.raises(PopalignError, match="--out"):
        plan_targets([], None)


def test_discriminative_folder_recomputes_from_predictions(tmp_path, score_file, ultrafeedback_dir):
    out = tmp_path / "longer"
    scoring = ScoringOptions(score_fn=f"{score_file}:longer")
    [record] = run_discriminative(
        [], str(ultrafeedback_dir), limit=30, out=str(out), scoring=scoring, boot=BOOT, progress=False
    )
    rows = rep.read_jsonl(out / rep.PREDICTIONS)
    assert len(rows) == 30 and set(rows[0]) == {
        "id",
        "predicted_margin",
        "gt_margin",
        "chosen_reward",
        "rejected_reward",
    }
    predicted = np.array([r["predicted_margin"] for r in rows])
    truth = np.array([r["gt_margin"] for r in rows])
    saved = json.loads((out / "discriminative.json").read_text())
    assert saved["metrics"]["accuracy"]["value"] == pytest.approx(accuracy(predicted, truth))
    assert saved == json.loads(json.dumps(record))
    for name in ("cumulative_accuracy.png", "margin_scatter.png", "eval.md"):
        assert (out / name).is_file()
    assert "| longer |" in (out / "eval.md").read_text()


def test_report_compares_runs(tmp_path, score_file, ultrafeedback_dir):
    for fn in ("longer", "shorter"):
        scoring = ScoringOptions(score_fn=f"{score_file}:{fn}")
        run_discriminative(
            [], str(ultrafeedback_dir), limit=30, out=str(tmp_path / fn), scoring=scoring, boot=BOOT
        )
        run_rewardbench([], str(FIXTURE), out=str(tmp_path / fn), scoring=scoring, progress=False)
    base = [
        {"instruction": f"q{i}", "output": "x" * i, "generator": "base", "id": str(i)} for i in range(1, 6)
    ]
    mine = [
        {"instruction": f"q{i}", "output": "x" * (i + 1), "generator": "longer", "id": str(i)}
        for i in range(1, 6)
    ]
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "longer" / "model_outputs.json").write_text(json.dumps(mine))
    [judged] = run_judge(
        [str(tmp_path / "longer")], str(tmp_path / "base.json"), score_fn=f"{score_file}:longer", boot=BOOT
    )
    assert (
        judged["metrics"]["win_rate"]["value"] == 1.0
        and judged["metrics"]["median_advantage"]["value"] == 1.0
    )

    runs = [rep.load_run(tmp_path / "longer"), rep.load_run(tmp_path / "shorter")]
    assert runs[0].predicted is not None and runs[0].advantages.tolist() == [1.0] * 5
    written = rep.write_comparison(runs, tmp_path / "report", title="Two rules")
    md = written["markdown"].read_text()
    acc = [r.results["discriminative"]["metrics"]["accuracy"]["value"] for r in runs]
    # Opposite rules share out every non-tied pair (a pair of equal lengths gives each half).
    assert acc[0] + acc[1] == pytest.approx(1.0)
    for run in runs:
        overall = run.results["rewardbench"]["scores"]["overall"]
        assert f"{100 * overall:.2f}" in md
    assert f"| longer | base | {score_file}:longer |" in md
    assert "Median Advantage" in md and "cumulative_accuracy.png" in md
    page = written["html"].read_text()
    assert page.count("data:image/png;base64,") == 2 and "src='http" not in page
    assert "<td>shorter</td>" in page


def test_report_needs_results(tmp_path):
    with pytest.raises(PopalignError, match="no evaluation results"):
        rep.load_run(tmp_path)
