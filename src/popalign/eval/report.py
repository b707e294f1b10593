"""Evaluation results on disk, and the Markdown / HTML tables that compare runs the way the paper's tables do.

An evaluation folder (``popalign eval ... --out``, default ``<model_dir>/eval``) holds:

- ``discriminative.json`` + ``discriminative_predictions.jsonl`` (id, predicted and ground-truth margin)
- ``rewardbench.json`` + ``rewardbench_predictions.jsonl``
- ``model_outputs.json`` (AlpacaEval layout) + ``generate.json`` (settings, KL to the reference)
- ``judge.json`` + ``judgements.jsonl`` (per-prompt scores and advantages)
- ``eval.md`` (this run's tables) and PNG plots.

Which kinds there are, their files and tables, is registered once in :mod:`popalign.eval.kinds`; pages are
rendered by :mod:`popalign.document`. ``popalign report`` reads several such folders and writes one Markdown
and one self-contained HTML page.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from popalign.document import Block, render_html, render_markdown
from popalign.errors import PopalignError
from popalign.eval.kind import RunResults, Table
from popalign.eval.kinds import KINDS
from popalign.io import atomic_write_text

EVAL_DIR = "eval"
PREDICTIONS = "discriminative_predictions.jsonl"
JUDGEMENTS = "judgements.jsonl"
RUN_MARKDOWN = "eval.md"
CUMULATIVE_PNG = "cumulative_accuracy.png"
SCATTER_PNG = "margin_scatter.png"
ADVANTAGES_PNG = "advantages.png"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def find_eval_dir(path: str | Path) -> Path:
    """``path/eval`` for a run folder, ``path`` itself for an evaluation folder."""
    p = Path(path)
    for candidate in (p / EVAL_DIR, p):
        if candidate.is_dir() and any((candidate / k.file).is_file() for k in KINDS.values()):
            return candidate
    raise PopalignError(f"{path}: no evaluation results there (run popalign eval first)")


def load_run(path: str | Path, name: str | None = None) -> RunResults:
    """Read an evaluation folder (or the run folder above it) into :class:`RunResults`."""
    eval_dir = find_eval_dir(path)
    run_dir = eval_dir.parent if eval_dir.name == EVAL_DIR else eval_dir
    run = RunResults(name=name or run_dir.resolve().name, eval_dir=eval_dir)
    for kind in KINDS.values():
        if (eval_dir / kind.file).is_file():
            run.results[kind.name] = json.loads((eval_dir / kind.file).read_text(encoding="utf-8"))
        if kind.records_method:
            model = run.results.get(kind.name, {}).get("model") or {}
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


def _sections(runs: list[RunResults], detail: bool) -> list[tuple[str, str | None, Table]]:
    """``(heading, note, table)`` of every registered kind some run holds, then the single run's details."""
    out = [(k.title, k.note, table) for k in KINDS.values() if (table := k.table(runs))]
    if detail and len(runs) == 1:
        details = [k.detail(runs[0]) for k in KINDS.values() if k.detail]
        out += [(heading, None, table) for heading, table in filter(None, details)]
    return out


# Numbers read best right-aligned; the first column names the run.
STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
    "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
    "img{max-width:100%}.note{color:#555;font-size:90%}"
)


def report_blocks(runs: list[RunResults], images: list[tuple[str, str | Path]], detail: bool) -> list[Block]:
    """The document: one section per kind of result present (table, then its note), then the images."""
    blocks: list[Block] = []
    for heading, note, table in _sections(runs, detail):
        blocks += [("h2", heading), ("table", table)]
        if note:
            blocks.append(("note", note))
    return blocks + [("img", caption, path) for caption, path in images]


def card_section(run_dir: str | Path) -> list[Block]:
    """The evaluation section of a run folder's model card (the tables as ``popalign report`` prints them),
    or nothing before ``eval``."""
    try:
        run = load_run(Path(run_dir))
    except PopalignError:
        return []
    blocks: list[Block] = []
    for kind in KINDS.values():
        if kind.on_card and (table := kind.table([run])):
            blocks += [("h3", kind.title), ("table", table)]
    disc = run.results.get("discriminative", {}).get("data", {})
    if disc:
        lines = [
            f"Test data: `{disc.get('path', disc.get('source'))}` ({disc.get('rows')} rows, fingerprint "
            f"`{disc.get('fingerprint')}`)."
        ]
        overlap = disc.get("training_overlap")
        if overlap and overlap.get("rows"):
            lines.append(f"**{overlap['rows']} of the test rows were training rows.**")
        blocks.append(("p", "\n".join(lines)))
    return [("h2", "Evaluation"), *blocks] if blocks else []


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
    text = render_markdown(report_blocks([run], images, detail=True), f"Evaluation: {run.name}")
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
    blocks = report_blocks(runs, images, detail=False)
    atomic_write_text(out / "report.md", render_markdown(blocks, title))
    atomic_write_text(out / "report.html", render_html(blocks, title, STYLE))
    return {"markdown": out / "report.md", "html": out / "report.html", **{c: p for c, p in images}}
