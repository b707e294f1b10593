"""The probe's outputs: ``results.json``, ``report.md``, ``report.html`` (one page, plot embedded),
``cumulative_accuracy.png`` (the paper's Figure 2, seed means), ``predictions.npz`` (every arm's
out-of-fold margins and the folds, to re-analyse without retraining) and the resolved ``config.yaml``.
Every file is written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from popalign.document import render_html, render_markdown
from popalign.io import atomic_path, atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from popalign.probe.config import ProbeConfig
    from popalign.probe.crossfit import CrossFit

FIGURE = "cumulative_accuracy.png"
TITLE = "PoP probe: reward heads on frozen features"


def _finite(value: Any) -> Any:
    """JSON has no NaN: undefined figures become null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        return None
    if isinstance(value, np.floating | np.integer):
        return value.item()
    return value


def _num(x: Any, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.{digits}f}"


def _est(d: dict[str, Any] | None, digits: int = 3) -> str:
    if not d or d.get("mean") is None or math.isnan(d["mean"]):
        return "-"
    low, high = d.get("ci_low"), d.get("ci_high")
    text = f"{d['mean']:.{digits}f}"
    if low is not None and high is not None and not (math.isnan(low) or math.isnan(high)):
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def report_blocks(cfg: ProbeConfig, summary: dict[str, Any], folder: Path) -> list[tuple]:
    """The report as document blocks (:mod:`popalign.document` renders them to Markdown and HTML)."""
    from popalign.probe.crossfit import ARM_NAMES

    feats, timing, data = summary["features"], summary["timing"], summary["data"]
    arms = summary["arms"]
    blocks: list[tuple] = [
        ("p", f"Data: {data['source']} ({data['rows']:,} rows, {data['ties']:,} ties left out of accuracy). "
         f"Model: `{cfg.model}`, features {feats['pooling']} in {feats['dtype']} "
         f"({feats['tokens']:,} tokens; {feats['truncated_rows']:,} rows cut at {feats['max_length']} "
         "tokens). "
         f"Head: {cfg.head.kind}, {cfg.head.epochs:g} epochs, batch {cfg.head.batch_size}, "
         f"AdamW lr {cfg.head.learning_rate:g}, weight decay {cfg.head.weight_decay:g}. "
         f"{cfg.folds}-fold cross-fitting, {cfg.seeds} seeds; PoP pairs: k={cfg.pop.k:g}, "
         f"min_gap={cfg.pop.min_gap:g}, built inside each training fold; M_max={cfg.loss.max_margin}."),
        ("p", f"Time: features {timing['features_seconds']:.0f} s ({feats['sequences_computed']:,} of "
         f"{feats['sequences']:,} replies computed, {feats.get('tokens_per_second', '-')} tokens/s), heads "
         f"{timing['heads_seconds']:.0f} s, analysis {timing['analysis_seconds']:.0f} s."),
        ("h2", "Verdicts (contrasts fixed before the run)"),
        ("p", "Difference = subject minus other, the seed-averaged per-row credit; interval: 95% t over "
         "rows; p-values Holm-adjusted within each family; q = share of (seed, row) where the two heads "
         "disagree."),
    ]  # fmt: skip
    rows = []
    for r in summary["contrasts"]:
        if r["verdict"] == "not run":
            rows.append([r["id"], r["family"], r["text"], "-", "-", "-", "not run"])
            continue
        interval = f"{_num(r['difference'])} [{_num(r['ci_low'])}, {_num(r['ci_high'])}]"
        p = f"{r['p_difference_adjusted']:.3g} / {r['p_equivalence_adjusted']:.3g}"
        rows.append([r["id"], r["family"], r["text"], interval, p, f"{r['disagreement']:.2f}", r["verdict"]])
    headers = ["id", "family", "contrast", "difference [95% CI]", "p diff / p equiv", "q", "verdict"]
    blocks.append(("table", (headers, rows)))
    split = summary["margin_split"]
    blocks += [
        ("h2", "Arms"),
        ("p", "Seed means; intervals: t over rows (accuracies), bootstrap over rows (correlations). "
         f"Low/high margin: at most / above {split:g}."),
    ]  # fmt: skip
    rows = []
    for name, a in arms.items():
        info = summary["arms_run"][name]
        margin = info.get("mean_pop_margin")
        rows.append([
            f"`{name}`", ARM_NAMES[name].description, _est(a["accuracy"]), _est(a["accuracy_low"]),
            _est(a["accuracy_high"]), _est(a["pearson"]), _est(a["spearman"]),
            f"{float(np.mean(info['steps'])):.0f}",
            "-" if margin is None else f"{float(np.mean(margin)):.3f}",
        ])  # fmt: skip
    headers = ["arm", "objective", "accuracy", "low-margin acc.", "high-margin acc.", "Pearson", "Spearman",
               "steps / fold", "mean PoP margin"]  # fmt: skip
    blocks.append(("table", (headers, rows)))
    if summary["not_run"]:
        blocks.append(
            ("p", "Not run: " + "; ".join(f"`{k}` ({v})" for k, v in summary["not_run"].items()) + ".")
        )
    blocks += [
        ("h2", "Figure 2: cumulative accuracy versus margin"),
        ("img", "cumulative accuracy", folder / FIGURE),
    ]
    return blocks


def write_report(
    out_dir: str | Path, cfg: ProbeConfig, summary: dict[str, Any], fit: CrossFit, truth
) -> Path:
    """Write every output into ``out_dir``; returns the Markdown report's path."""
    from popalign.config import config_to_dict, save_config
    from popalign.eval.plots import plot_cumulative_accuracy

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    summary = _finite({"config": config_to_dict(cfg), **summary})
    atomic_write_json(out / "results.json", summary)
    with atomic_path(out / "predictions.npz") as tmp, open(tmp, "wb") as fh:
        arms = {name: p.astype(np.float32) for name, p in fit.predicted.items()}
        np.savez_compressed(fh, folds=fit.folds, truth=np.asarray(truth), **arms)
    runs = [(name, p.ravel(), np.tile(truth, len(p))) for name, p in fit.predicted.items()]
    plot_cumulative_accuracy(runs, out / FIGURE, title="Reward heads on frozen features (seed means)")
    blocks = report_blocks(cfg, summary, out)
    atomic_write_text(out / "report.md", render_markdown(blocks, TITLE))
    atomic_write_text(out / "report.html", render_html(blocks, TITLE))
    return out / "report.md"
