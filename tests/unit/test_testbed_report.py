"""The report's building blocks: margin statistics by hand, Markdown and self-contained HTML."""

from __future__ import annotations

import math

import numpy as np
import pytest

from popalign.config import load_config
from popalign.testbed import figures
from popalign.testbed.plan import Layout
from popalign.testbed.report import _control_blocks, _finite, _margin_blocks, render_html, render_markdown
from popalign.testbed.sections import interval as _interval
from popalign.testbed.settings import ReproduceConfig


def column(blocks, name: str) -> list[str]:
    """The cells under heading ``name`` of the first table among the report ``blocks``."""
    headers, rows = next(payload for kind, payload, *_ in blocks if kind == "table")
    return [row[headers.index(name)] for row in rows]


def test_margin_summary_by_hand():
    s = figures.margin_summary(np.array([0.0, 0.0, 1.0, 2.0, 3.0, 6.0]))
    assert s["n"] == 6 and s["mean"] == pytest.approx(2.0)
    assert s["ties"] == pytest.approx(2 / 6) and s["ge3"] == pytest.approx(2 / 6)
    assert (s["q25"], s["median"], s["q75"]) == pytest.approx((0.25, 1.5, 2.75))


def test_missing_comparison_data_gives_none(tmp_path):
    assert figures.load_margins(tmp_path / "absent") is None
    assert figures.load_margins("") is None


def test_interval_formatting():
    assert _interval((0.5, 0.25, 0.75)) == "0.500 [0.250, 0.750]"
    assert _interval((0.5, 0.25, 0.75), 1, 100.0) == "50.0 [25.0, 75.0]"
    assert _interval((0.5, math.nan, math.nan)) == "0.500"
    assert _interval((math.nan, 0.0, 1.0)) == "-"


def test_non_finite_numbers_become_null():
    assert _finite({"a": [1.0, math.nan], "b": {"c": math.inf}, "d": "x"}) == {
        "a": [1.0, None],
        "b": {"c": None},
        "d": "x",
    }


def test_pages_render_the_same_blocks(tmp_path):
    png = figures.plot_margin_histograms([("a", np.array([0.0, 1.0, 1.0, 2.5]))], tmp_path / "m.png")
    blocks = [
        ("h2", "Claims"),
        ("p", "DPO-PoP's claim <checked>"),
        ("table", (["Run", "Value"], [["dpo", "0.5"], ["a|b", "1"]])),
        ("img", "Margins", png),
    ]
    md = render_markdown(blocks, "Title")
    assert (
        md.startswith("# Title") and "## Claims" in md and "| a\\|b | 1 |" in md and "![Margins](m.png)" in md
    )
    page = render_html(blocks, "Title")
    assert "&lt;checked&gt;" in page and "<td>dpo</td>" in page
    assert page.count("data:image/png;base64,") == 1 and "m.png" not in page


def _cfg(*overrides: str) -> ReproduceConfig:
    return load_config(ReproduceConfig, None, list(overrides))


def test_margin_table_counts_the_rows_training_used(tmp_path, ultrafeedback_dir):
    uf = ultrafeedback_dir
    cfg = _cfg(f"data={uf}", "controls=[]", "train_rows=320", f"compare_data={uf}", f"output_dir={tmp_path}")
    blocks, stats = _margin_blocks(cfg, Layout.of(cfg), tmp_path)
    assert {label: s["n"] for label, s in stats.items()} == {
        "train (the rows used)": 320,
        "UltraFeedback sample train": 1000,
    }
    assert blocks[0][0] == "table" and column(blocks, "n") == ["320", "1000"]

    # The whole sample compared with itself is one row, not the same row twice.
    cfg = _cfg(f"data={uf}", "controls=[]", f"compare_data={uf}", f"output_dir={tmp_path}")
    _, stats = _margin_blocks(cfg, Layout.of(cfg), tmp_path)
    assert {label: s["n"] for label, s in stats.items()} == {"train (the rows used)": 1000}


def test_controls_section_says_when_none_were_configured():
    verdicts = [{"group": "control", "claim": "c", "source": "s", "paper": None, "metric": "accuracy",
                 "subject": "a", "against": "b", "subject_value": math.nan, "against_value": math.nan,
                 "difference": [math.nan, math.nan, math.nan], "verdict": "not run"}]  # fmt: skip
    none = _control_blocks(_cfg("controls=[]"), verdicts)
    assert [b[0] for b in none] == ["h2", "p"] and none[1][1].startswith("Not run: this configuration")
    both = _control_blocks(_cfg(), verdicts)
    assert [b[0] for b in both] == ["h2", "p", "table"] and column(both, "Verdict") == ["not run"]
