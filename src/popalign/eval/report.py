"""Evaluation results on disk, and the Markdown / HTML tables that compare runs the way the paper's tables do.

An evaluation folder (``popalign eval ... --out``, default ``<model_dir>/eval``) holds:

- ``discriminative.json`` + ``discriminative_predictions.jsonl`` (id, predicted and ground-truth margin)
- ``rewardbench.json`` + ``rewardbench_predictions.jsonl``
- ``model_outputs.json`` (AlpacaEval layout) + ``generate.json`` (settings, KL to the reference)
- ``judge.json`` + ``judgements.jsonl`` (per-prompt scores and advantages)
- ``eval.md`` (this run's tables) and PNG plots.

``popalign report`` reads several such folders and writes one Markdown and one self-contained HTML page.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from popalign.errors import PopalignError
from popalign.eval.rewardbench import PRIOR_SECTION, SECTIONS
from popalign.eval.stats import Estimate
from popalign.io import atomic_write_text

EVAL_DIR = "eval"
FILES = {
    "discriminative": "discriminative.json",
    "rewardbench": "rewardbench.json",
    "generate": "generate.json",
    "judge": "judge.json",
}
PREDICTIONS = "discriminative_predictions.jsonl"
JUDGEMENTS = "judgements.jsonl"
RUN_MARKDOWN = "eval.md"
CUMULATIVE_PNG = "cumulative_accuracy.png"
SCATTER_PNG = "margin_scatter.png"
ADVANTAGES_PNG = "advantages.png"

Table = tuple[list[str], list[list[str]]]


@dataclass
class RunResults:
    """Everything one evaluation folder holds; missing parts are None."""

    name: str
    eval_dir: Path
    method: str | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    predicted: np.ndarray | None = None
    truth: np.ndarray | None = None
    advantages: np.ndarray | None = None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def find_eval_dir(path: str | Path) -> Path:
    """``path/eval`` for a run folder, ``path`` itself for an evaluation folder."""
    p = Path(path)
    for candidate in (p / EVAL_DIR, p):
        if candidate.is_dir() and any((candidate / f).is_file() for f in FILES.values()):
            return candidate
    raise PopalignError(f"{path}: no evaluation results there (run popalign eval first)")


def load_run(path: str | Path, name: str | None = None) -> RunResults:
    """Read an evaluation folder (or the run folder above it) into :class:`RunResults`."""
    eval_dir = find_eval_dir(path)
    run_dir = eval_dir.parent if eval_dir.name == EVAL_DIR else eval_dir
    run = RunResults(name=name or run_dir.resolve().name, eval_dir=eval_dir)
    for kind, file in FILES.items():
        if (eval_dir / file).is_file():
            run.results[kind] = json.loads((eval_dir / file).read_text(encoding="utf-8"))
    for kind in ("discriminative", "rewardbench", "judge"):
        model = run.results.get(kind, {}).get("model") or {}
        run.method = run.method or model.get("method")
    if (eval_dir / PREDICTIONS).is_file():
        rows = read_jsonl(eval_dir / PREDICTIONS)
        if rows and all(r.get("gt_margin") is not None for r in rows):
            run.predicted = np.array([r["predicted_margin"] for r in rows], dtype=np.float64)
            run.truth = np.array([r["gt_margin"] for r in rows], dtype=np.float64)
    if (eval_dir / JUDGEMENTS).is_file():
        run.advantages = np.array(
            [r["advantage"] for r in read_jsonl(eval_dir / JUDGEMENTS)], dtype=np.float64
        )
    return run


def _est(d: dict[str, Any] | None, digits: int = 4, scale: float = 1.0) -> str:
    return Estimate.from_dict(d).format(digits, scale) if d else "-"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def discriminative_table(runs: list[RunResults]) -> Table | None:
    """Paper Table 1: Pearson, Spearman and accuracy with 95% intervals, plus counts."""
    rows = []
    for run in runs:
        res = run.results.get("discriminative")
        if not res:
            continue
        m = res["metrics"]
        rows.append(
            [
                run.name,
                run.method or "-",
                _est(m.get("pearson")),
                _est(m.get("spearman")),
                _est(m.get("accuracy")),
                str(m["n_scored"]),
                str(m["ties"]["n"]),
            ]
        )
    headers = ["Run", "Method", "Pearson", "Spearman", "Accuracy", "Scored", "Ties"]
    return (headers, rows) if rows else None


def rewardbench_table(runs: list[RunResults]) -> Table | None:
    """Paper Table 2: section scores and Overall, x100 as RewardBench prints them."""
    found = [(r, r.results["rewardbench"]["scores"]) for r in runs if "rewardbench" in r.results]
    if not found:
        return None
    prior = any(s["sections"].get(PRIOR_SECTION) is not None for _, s in found)
    headers = ["Run", *SECTIONS, *([PRIOR_SECTION] if prior else []), "Overall", "All rows", "N"]
    rows = []
    for run, s in found:
        cells = [_pct(s["sections"].get(sec)) for sec in SECTIONS]
        if prior:
            cells.append(_pct(s["sections"].get(PRIOR_SECTION)))
        rows.append([run.name, *cells, _pct(s.get("overall")), _pct(s.get("accuracy")), str(s["n"])])
    return headers, rows


def rewardbench_subset_table(run: RunResults) -> Table | None:
    res = run.results.get("rewardbench")
    if not res:
        return None
    rows = [
        [name, _pct(rec["accuracy"]), f"{rec['correct']}/{rec['n']}"]
        for name, rec in res["scores"]["subsets"].items()
    ]
    return ["Subset", "Accuracy", "Correct"], rows


def judge_table(runs: list[RunResults]) -> Table | None:
    """Paper Table 3: median advantage and win rate (%) against the baseline, with 95% intervals."""
    rows = []
    for run in runs:
        res = run.results.get("judge")
        if not res:
            continue
        m = res["metrics"]
        rows.append(
            [
                run.name,
                res.get("baseline", "-"),
                res.get("judge", {}).get("name", "-"),
                _est(m.get("median_advantage")),
                _est(m.get("win_rate"), digits=1, scale=100.0),
                f"{m['wins']}/{m['ties']}/{m['losses']}",
                str(m["n"]),
            ]
        )
    headers = ["Run", "Baseline", "Judge", "Median Advantage", "Win Rate %", "W/T/L", "N"]
    return (headers, rows) if rows else None


def generate_table(runs: list[RunResults]) -> Table | None:
    """Sampled replies: how many, their length, and the KL estimate to the reference (nats, 95% interval)."""
    rows = []
    for run in runs:
        res = run.results.get("generate")
        if not res:
            continue
        kl = res.get("kl") or {}
        shown = _est(kl) if kl.get("value") is not None else f"- ({kl.get('reason', 'not computed')})"
        settings = res.get("settings", {})
        rows.append(
            [
                run.name,
                str(res["data"]["prompts"]),
                f"{settings.get('temperature', '-')}",
                f"{res.get('mean_output_chars', 0):.0f}",
                shown,
                str(kl.get("reference", "-")),
            ]
        )
    headers = ["Run", "Prompts", "Temperature", "Mean reply chars", "KL(pi || pi_ref)", "Reference"]
    return (headers, rows) if rows else None


def markdown_table(table: Table) -> str:
    headers, rows = table
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(table: Table) -> str:
    headers, rows = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


NOTES = {
    "Discriminative (test preferences)": "Predicted margin: implicit reward difference (DPO, Eq. 3) or "
    "reward-model score difference. Accuracy leaves out ties (ground-truth margin 0); a predicted margin "
    "of exactly 0 counts half. Brackets: bootstrap 95% intervals.",
    "RewardBench": "Section scores weight subset accuracies by RewardBench's example counts; Overall is "
    "the mean of the four sections; All rows is the plain accuracy over every row (see docs/evaluation.md).",
    "Generations": "KL: mean over prompts of the summed log-ratio log pi_T - log pi_ref,T of each sampled "
    "reply's tokens at the sampling temperature T (unbiased for KL(pi_T || pi_ref,T); docs/evaluation.md).",
    "Judged generations": "Advantage = judge score of the run's reply minus the baseline's, per prompt; ties "
    "count half a win. Brackets: bootstrap 95% intervals.",
}


def _sections(runs: list[RunResults], detail: bool) -> list[tuple[str, Table]]:
    out = []
    for title, table in (
        ("Discriminative (test preferences)", discriminative_table(runs)),
        ("RewardBench", rewardbench_table(runs)),
        ("Generations", generate_table(runs)),
        ("Judged generations", judge_table(runs)),
    ):
        if table:
            out.append((title, table))
    if detail and len(runs) == 1 and (sub := rewardbench_subset_table(runs[0])):
        out.append(("RewardBench subsets", sub))
    return out


def render_markdown(runs: list[RunResults], title: str, images: list[tuple[str, str]], detail: bool) -> str:
    """Markdown page: one table per kind of result present, then the images (caption, relative path)."""
    parts = [f"# {title}", ""]
    for heading, table in _sections(runs, detail):
        parts += [f"## {heading}", "", markdown_table(table), ""]
        if heading in NOTES:
            parts += [NOTES[heading], ""]
    for caption, rel in images:
        parts += [f"![{caption}]({rel})", ""]
    return "\n".join(parts)


def render_html(runs: list[RunResults], title: str, images: list[tuple[str, Path]]) -> str:
    """A self-contained HTML page: the same tables, plots embedded as base64 PNG."""
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
        "img{max-width:100%}.note{color:#555;font-size:90%}"
    )
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>")
    for heading, table in _sections(runs, detail=False):
        parts.append(f"<h2>{html.escape(heading)}</h2>{html_table(table)}")
        if heading in NOTES:
            parts.append(f"<p class='note'>{html.escape(NOTES[heading])}</p>")
    for caption, path in images:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        alt = html.escape(caption)
        parts.append(f"<h2>{alt}</h2><img alt='{alt}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def card_section(run_dir: str | Path) -> list[str]:
    """The evaluation section of a run folder's model card (the tables as ``popalign report`` prints them),
    or nothing before ``eval``."""
    try:
        run = load_run(Path(run_dir))
    except PopalignError:
        return []
    lines = ["## Evaluation", ""]
    for heading, table in (
        ("Discriminative (test preferences)", discriminative_table([run])),
        ("RewardBench", rewardbench_table([run])),
        ("Judged generations", judge_table([run])),
    ):
        if table:
            lines += [f"### {heading}", "", markdown_table(table), ""]
    disc = run.results.get("discriminative", {}).get("data", {})
    if disc:
        lines.append(
            f"Test data: `{disc.get('path', disc.get('source'))}` ({disc.get('rows')} rows, fingerprint "
            f"`{disc.get('fingerprint')}`)."
        )
        overlap = disc.get("training_overlap")
        if overlap and overlap.get("rows"):
            lines.append(f"**{overlap['rows']} of the test rows were training rows.**")
        lines.append("")
    return lines if len(lines) > 2 else []


def write_run_markdown(eval_dir: str | Path) -> Path:
    """(Re)write ``eval.md`` in an evaluation folder from every result it holds."""
    run = load_run(eval_dir)
    images = [
        (caption, file)
        for caption, file in (
            ("Cumulative accuracy vs margin", CUMULATIVE_PNG),
            ("Predicted vs ground-truth margins", SCATTER_PNG),
            ("Advantages over the baseline", ADVANTAGES_PNG),
        )
        if (run.eval_dir / file).is_file()
    ]
    text = render_markdown([run], f"Evaluation: {run.name}", images, detail=True)
    path = run.eval_dir / RUN_MARKDOWN
    atomic_write_text(path, text)
    return path


def write_comparison(
    runs: list[RunResults], out_dir: str | Path, title: str = "popalign report"
) -> dict[str, Path]:
    """``report.md``, ``report.html`` and the overlaid plots for several runs, in ``out_dir``."""
    from popalign.eval.plots import plot_advantages, plot_cumulative_accuracy

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images: list[tuple[str, Path]] = []
    curves = [(r.name, r.predicted, r.truth) for r in runs if r.predicted is not None]
    if curves:
        images.append(
            ("Cumulative accuracy vs margin", plot_cumulative_accuracy(curves, out / CUMULATIVE_PNG))
        )
    advantages = [(r.name, r.advantages) for r in runs if r.advantages is not None and len(r.advantages)]
    if advantages:
        baselines = {r.results["judge"].get("baseline") for r in runs if "judge" in r.results}
        baseline = baselines.pop() if len(baselines) == 1 else "baseline"
        images.append(
            ("Advantages over the baseline", plot_advantages(advantages, out / ADVANTAGES_PNG, baseline))
        )
    md = render_markdown(runs, title, [(c, p.name) for c, p in images], detail=False)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", render_html(runs, title, images))
    return {"markdown": out / "report.md", "html": out / "report.html", **{c: p for c, p in images}}
