"""The reproduction report: the paper's claims beside this run's measurements, its tables and figures.

Written three ways into ``<output_dir>/report``: ``results.json`` (every number, machine-readable),
``report.md`` (PNG files beside it) and ``report.html`` (one self-contained page, plots embedded as base64).
Everything is recomputed from the runs' per-example evaluation files (see :mod:`popalign.testbed.results`).
"""

from __future__ import annotations

import datetime
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from popalign.document import Block, render_html, render_markdown
from popalign.io import atomic_write_json, atomic_write_text
from popalign.testbed import claims as cl
from popalign.testbed import crossfit_report, figures, sections, tuning
from popalign.testbed import verdict_report as vr
from popalign.testbed.frontier import summarise_frontier
from popalign.testbed.plan import Layout, RunSpec
from popalign.testbed.results import DISCRIMINATIVE, GENERATIVE, load_all, summarise_margins
from popalign.testbed.sections import fmt, interval
from popalign.testbed.settings import (
    BASELINE,
    CONTROLS,
    NOMARGIN_CONTROLS,
    STEPS_MATCHED_CONTROLS,
    ReproduceConfig,
)

TITLE = "DPO-PoP on the testbed: the paper's experiments, reproduced on a CPU"
REAL_TITLE = "DPO-PoP on real preferences: the paper's discriminative claims with a pretrained model"
ORDER = {"paper": 0, "control": 1, "sweep-k": 2, "sweep-noise": 3}


def machine() -> dict[str, Any]:
    """CPU model (as lscpu names it), cores, platform, library versions, date."""
    import torch
    import transformers

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _cpu_model() -> str:
    """``lscpu``'s "Model name" (else /proc/cpuinfo's, else the platform's processor string)."""
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
        if names:
            return names[0]
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        if names:
            return names[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def machine_note(m: dict[str, Any], timing: dict[str, float], cfg: ReproduceConfig) -> str:
    """``machine.md``: where and how long the reproduction ran."""
    from popalign.testbed.plan import plan_runs

    compute, runs = timing["compute_seconds"], len(plan_runs(cfg))
    return "\n".join(
        [
            "# Machine of this reproduction",
            "",
            f"- CPU (lscpu model name): {m['cpu']}",
            f"- cores: {m['cores']}",
            f"- threads for torch: {cfg.threads or 'default (all cores)'}",
            f"- platform: {m['platform']}; Python {m['python']}, torch {m['torch']}, "
            f"transformers {m['transformers']}",
            f"- date: {m['date']}",
            f"- wall time of the run that wrote this report: {timing['wall_seconds']:.0f} s "
            f"({timing['wall_seconds'] / 60:.1f} min)",
            f"- compute time of all stages (each stage's own time, summed): {compute:.0f} s",
            f"- seeds: {', '.join(map(str, cfg.seeds))}; training runs per seed: {runs}",
            "",
        ]
    )


def summarise(cfg: ReproduceConfig, layout: Layout, runs: list[RunSpec]) -> dict[str, Any]:
    """Every number of the report: per-method figures with intervals, per-seed figures, verdicts, task."""
    results = load_all(layout, runs, cfg.seeds)
    boot = {"n_resamples": cfg.bootstrap, "seed": 0}
    methods: dict[str, Any] = {}
    for spec in runs:
        found = results.get(spec.name)
        if not found:
            continue
        names = DISCRIMINATIVE + GENERATIVE
        methods[spec.name] = {
            "method": spec.method,
            "group": spec.group,
            "k": spec.k,
            "noise": spec.noise,
            "seeds": [r.seed for r in found],
            "steps": [r.done["steps"] for r in found],
            "metrics": {m: cl.bootstrap_value(found, m, **boot) for m in names},
            "per_seed": {str(r.seed): {m: cl.metric(r, m) for m in names} for r in found},
            "seconds": sum(r.done["seconds"] for r in found),
        }
    judged = [(v, {}) for v in cl.judge_claims(results)]
    frontier = summarise_frontier(results, cfg.curve.budget_fractions, boot)
    if frontier is not None:
        judged += [(v, {"budget": b.label}) for b, v in frontier.pop("verdicts")]
    selection = tuning.select_settings(cfg, layout, runs) if tuning.enabled(cfg) else None
    if selection:
        tuned = tuning.judge_tuned(results, selection)
        judged += [(v, {"id_suffix": "@tuned", "group": "tuned"}) for v in tuned]
    # One decision over the whole report, so that each family is Holm-adjusted over all of its verdicts.
    cl.decide([v for v, _ in judged], cfg.preregistered)
    verdicts = [vr.verdict_record(v, **extra) for v, extra in judged]
    test = results[BASELINE][0].truth if BASELINE in results else np.array([])
    crossfit = crossfit_report.summarise(cfg, results) if cfg.folds else None
    return {
        "settings": {"seeds": cfg.seeds, "task": vars(cfg.task), "bootstrap": cfg.bootstrap},
        "methods": methods,
        "verdicts": verdicts,
        "frontier": frontier,
        "margin_trace": summarise_margins(results),
        "tuning": selection,
        "margin_split": float(np.median(test[test != 0])) if len(test) else None,
        "crossfit": crossfit,
        "_results": results,
    }


def _control_blocks(cfg: ReproduceConfig, verdicts: list[dict[str, Any]]) -> list[Block]:
    blocks: list[Block] = [("h2", "Controls the paper lacks: margin effect or resampling effect?")]
    if not cfg.controls:
        # A table of "not run" rows would read as a failure; the configuration chose not to run them.
        return blocks + [
            (
                "p",
                f"Not run: this configuration's `controls` is empty. Add {', '.join(CONTROLS)} "
                "to `controls` to tell the PoP margin's effect from the effect of more steps.",
            )
        ]
    return blocks + [
        ("p", f"{', '.join(STEPS_MATCHED_CONTROLS.values())}: vanilla DPO trained for as many optimiser "
              f"steps as {', '.join(STEPS_MATCHED_CONTROLS)} (k = {cfg.pop.k:g}); "
              f"{', '.join(NOMARGIN_CONTROLS.values())}: the PoP pairs of each sampler, the stronger "
              "preference trained without any margin (Eq. 3 on PoP pairs). A claim that the margin matters "
              "gets a verdict only once its positive control (the oracle margin) is detected."),
        ("table", vr.verdict_table(verdicts, "control")),
    ]  # fmt: skip


def _method_table(methods: dict[str, Any], groups: tuple[str, ...], columns: list[tuple[str, str, float]]):
    headers = ["Run", "Seeds", "Steps", *[c[1] for c in columns]]
    rows = []
    for name, m in methods.items():
        if m["group"] not in groups:
            continue
        cells = [
            interval(tuple(m["metrics"][key]), 3 if scale == 1 else 1, scale) for key, _, scale in columns
        ]
        steps = sorted(set(m["steps"]))
        rows.append([name, str(len(m["seeds"])), "/".join(map(str, steps)), *cells])
    return headers, rows


def _per_seed_table(methods: dict[str, Any]):
    keys = ["accuracy", "pearson", "spearman", "win_rate", "median_advantage", "mean_reward"]
    headers = ["Run", "Seed", *keys]
    rows = [
        [name, seed, *[fmt(vals[k], 4) for k in keys]]
        for name, m in methods.items()
        for seed, vals in m["per_seed"].items()
    ]
    return headers, rows


def _figure_blocks(summary: dict[str, Any], out: Path) -> list[Block]:
    from popalign.eval.plots import plot_advantages, plot_cumulative_accuracy

    results = summary["_results"]
    main = [n for n, m in summary["methods"].items() if m["group"] in ("paper", "control")]
    curves = [
        (n, np.concatenate([r.predicted for r in results[n]]), np.concatenate([r.truth for r in results[n]]))
        for n in main
    ]
    blocks: list[Block] = []
    split = summary["margin_split"]
    headers = ["Run", f"accuracy, margin <= {split:g}", f"accuracy, margin > {split:g}"]
    rows = [
        [n, interval(tuple(summary["methods"][n]["metrics"]["accuracy_low"])),
         interval(tuple(summary["methods"][n]["metrics"]["accuracy_high"]))]
        for n in main
    ]  # fmt: skip
    blocks.append(("table", (headers, rows)))
    if curves:
        path = plot_cumulative_accuracy(curves, out / "cumulative_accuracy.png", "All seeds pooled")
        blocks.append(("img", "Figure 2 analogue: lower and upper cumulative accuracy vs margin", path))
    adv = [
        (n, np.concatenate([r.advantages for r in results[n]]))
        for n in main
        if n != BASELINE and all(r.advantages is not None for r in results[n])
    ]
    if adv:
        path = plot_advantages(adv, out / "advantages.png", "vanilla DPO")
        blocks.append(("img", "Per-prompt r* advantage over vanilla DPO (all seeds pooled)", path))
    return blocks


def _margin_blocks(cfg: ReproduceConfig, layout: Layout, out: Path) -> tuple[list[Block], dict[str, Any]]:
    blocks: list[Block] = []
    named: list[tuple[str, np.ndarray]] = []
    # The rows training used: the real-model track may train on the first train_rows of its data.
    used = figures.load_margins(layout.data, cfg.train_rows)
    if used is None:
        blocks.append(
            ("p", f"The training data at {layout.data} has no scores, so it has no margins to show.")
        )
    else:
        named.append(("testbed train" if cfg.generative else "train (the rows used)", used))
    uf = figures.load_margins(cfg.compare_data) if cfg.compare_data else None
    if uf is None:
        where = cfg.compare_data or "(compare_data is empty)"
        blocks.append(("p", f"The UltraFeedback sample was not found at {where}; no comparison was made."))
    elif used is None or not (_same_file(layout.data, cfg.compare_data) and len(uf) == len(used)):
        named.append(("UltraFeedback sample train", uf))
    stats = {label: figures.margin_summary(m) for label, m in named}
    if not named:
        return blocks, stats
    keys = ["n", "mean", "sd", "ties", "q25", "median", "q75", "ge3"]
    headers = ["Data", "n", "mean", "sd", "tie share", "q25", "median", "q75", "share >= 3"]
    rows = [[label, *[str(s[k]) if k == "n" else fmt(s[k], 2) for k in keys]] for label, s in stats.items()]
    blocks.insert(0, ("table", (headers, rows)))
    path = figures.plot_margin_histograms(named, out / "margins.png")
    blocks.append(("img", "Margin distributions (density)", path))
    return blocks, stats


def _same_file(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _sweep_blocks(summary: dict[str, Any], cfg: ReproduceConfig, out: Path) -> list[Block]:
    blocks: list[Block] = []
    methods = summary["methods"]
    columns = [("pearson", "Pearson", 1.0), ("spearman", "Spearman", 1.0), ("accuracy", "Accuracy", 1.0),
               ("median_advantage", "Median advantage", 1.0), ("win_rate", "Win rate %", 100.0)]  # fmt: skip
    for x_key, group, title in (("k", "sweep-k", "Appendix E: PoP data multiplier k"),
                                ("noise", "sweep-noise", "Appendix F: PoP label noise")):  # fmt: skip
        if not any(m["group"] == group for m in methods.values()):
            continue
        rows = []
        for name, m in methods.items():
            base = m["method"] if m["group"] == group else name
            if m["group"] in (group, "paper") and base in cfg.sweeps.methods:
                rows.append({"method": base, "name": name, x_key: m[x_key], **m["metrics"]})
        rows.sort(key=lambda r: (r["method"], r[x_key]))
        headers = ["Method", x_key, *[c[1] for c in columns]]
        table = [
            [
                r["method"],
                f"{r[x_key]:g}",
                *[interval(tuple(r[c]), 3 if s == 1 else 1, s) for c, _, s in columns],
            ]
            for r in rows
        ]
        path = figures.plot_sweep(
            rows, x_key, [("spearman", "Spearman"), ("pearson", "Pearson"), ("accuracy", "Accuracy"),
                          ("win_rate", "Win rate"), ("median_advantage", "Median advantage")],
            out / f"sweep_{x_key}.png", title,
        )  # fmt: skip
        blocks += [
            ("h2", title),
            ("table", (headers, table)),
            ("img", f"{title} (mean over seeds, 95% CI)", path),
        ]
    return blocks


def _intro(cfg: ReproduceConfig, summary: dict[str, Any], timing: dict[str, float]) -> list[Block]:
    counts: dict[str, int] = {}
    for v in summary["verdicts"]:
        if v["group"] == "paper":
            counts[v["verdict"]] = counts.get(v["verdict"], 0) + 1
    tally = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    t = cfg.task
    wall, compute = timing["wall_seconds"] / 60, timing["compute_seconds"] / 60
    seeds = ", ".join(map(str, cfg.seeds))
    if cfg.data:
        m = cfg.model
        rows = f"{cfg.train_rows or 'all'} training and {cfg.test_rows or 'all'} test preferences"
        if cfg.folds:
            rows = f"every training and test preference, cross-fitted in {cfg.folds} folds,"
        what = [
            f"The paper's methods on real preferences ({rows} of {cfg.data}) with the pretrained",
            f"{m.name_or_path}{f' (LoRA rank {m.lora_r})' if m.lora else ''}, seeds {seeds}. Without a",
            "ground-truth reward there is no generative evaluation: only the discriminative claims (Table 1)",
            "are judged, against the data's own score margins.",
        ]
    else:
        what = [
            f"The paper's pipeline (SFT, then {len(cfg.methods)} of the six methods of Section 4.2 and",
            f"{len(cfg.controls)} controls, then discriminative and generative evaluation) on the testbed",
            f"task: {t.train_prompts} training and",
            f"{t.test_prompts} test preferences, a tiny Llama ({cfg.model.layers} layers, hidden size",
            f"{cfg.model.hidden_size}), seeds {seeds}. Generations are judged by the ground-truth reward r*",
            "itself.",
        ]
    text = " ".join(
        [
            *what,
            f"Paper claims: {tally or 'none judged'}. Wall time of this invocation {wall:.1f} min;",
            f"compute time of all stages {compute:.1f} min (they differ when a run was resumed).",
        ]
    )
    return [("p", text)]


def build_blocks(cfg, layout, summary, timing, out: Path) -> tuple[list[Block], dict[str, Any]]:
    methods = summary["methods"]
    blocks: list[Block] = _intro(cfg, summary, timing)
    budgets = (summary["frontier"] or {}).get("budgets", [])
    tuned = bool(summary["tuning"])
    blocks += vr.preregistered_blocks(cfg.preregistered, summary["verdicts"])
    blocks += vr.positive_control_blocks(summary["verdicts"])
    text = sections.plain_summary(summary["verdicts"], budgets, tuned, cfg.generative)
    blocks.append(("p", text))
    blocks += [
        ("h2", "The paper's claims (paper protocol: one setting for every method, the same epochs)"),
        ("table", vr.verdict_table(summary["verdicts"], "paper")),
        ("p", vr.RULE),
    ]
    blocks += _control_blocks(cfg, summary["verdicts"])
    if summary["crossfit"] is not None:
        blocks += crossfit_report.blocks(summary["crossfit"])
    blocks += sections.frontier_blocks(summary["frontier"], summary["verdicts"], out)
    blocks += sections.margin_trace_blocks(summary["margin_trace"])
    if tuned:
        blocks += sections.tuning_blocks(summary["tuning"], cfg.tuning.learning_rate_factors)
        blocks.append(("table", vr.verdict_table(summary["verdicts"], "tuned")))
    disc = [("pearson", "Pearson", 1.0), ("spearman", "Spearman", 1.0), ("accuracy", "Accuracy", 1.0)]
    gen = [("median_advantage", "Median advantage", 1.0), ("win_rate", "Win rate %", 100.0),
           ("mean_reward", "Mean r* of replies", 1.0)]  # fmt: skip
    groups = ("paper", "control")
    blocks += [
        ("h2", "Table 1 analogue: discriminative (test preferences)"),
        ("table", _method_table(methods, groups, disc)),
    ]
    sft = layout.sft / "done.json"
    sft_reward = __import__("json").loads(sft.read_text())["mean_reward"] if sft.is_file() else float("nan")
    if cfg.generative:
        blocks += [
            ("h2", "Table 3 analogue: generative (r* judges replies to the test prompts)"),
            ("table", _method_table(methods, groups, gen)),
            ("p", f"Against vanilla DPO of the same seed; ties count half. For scale: the SFT model's "
                  f"replies score {fmt(sft_reward, 2)} on average."),
        ]  # fmt: skip
    blocks.append(("h2", "Figure 2 analogue: where the accuracy comes from"))
    blocks += _figure_blocks(summary, out)
    blocks.append(("h2", "Margin distributions: testbed vs UltraFeedback"))
    margin_blocks, margin_stats = _margin_blocks(cfg, layout, out)
    blocks += margin_blocks + _sweep_blocks(summary, cfg, out)
    blocks += [
        ("h2", "Every run and seed (recomputed from the per-example files)"),
        ("table", _per_seed_table(methods)),
    ]
    m = machine()
    blocks += [
        ("h2", "Machine"),
        ("p", f"{m['cpu']}, {m['cores']} cores; {m['platform']}; Python {m['python']}, torch {m['torch']}, "
              f"transformers {m['transformers']}; {m['date']}; wall time {timing['wall_seconds']:.0f} s."),
    ]  # fmt: skip
    return blocks, {"margins": margin_stats, "machine": m}


def _finite(value: Any) -> Any:
    """JSON has no NaN: undefined figures (e.g. a correlation of a constant) become null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(
    cfg: ReproduceConfig, layout: Layout, runs: list[RunSpec], wall_seconds: float
) -> dict[str, str]:
    """Write ``results.json``, ``report.md`` (+ PNGs) and ``report.html`` into ``layout.report``."""
    import json

    out = layout.report
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(cfg, layout, runs)
    stage_files = [layout.data / "task.json", layout.sft / "done.json"]
    stage_files += [layout.run(s.name, seed) / "done.json" for s in runs for seed in cfg.seeds]
    compute = sum(json.loads(f.read_text())["seconds"] for f in stage_files if f.is_file())
    timing = {"wall_seconds": wall_seconds, "compute_seconds": compute}
    blocks, extra = build_blocks(cfg, layout, summary, timing, out)
    record = {k: v for k, v in summary.items() if not k.startswith("_")}
    record.update(extra, timing=timing)
    atomic_write_json(out / "results.json", _finite(record))
    title = TITLE if cfg.generative else REAL_TITLE
    atomic_write_text(out / "report.md", render_markdown(blocks, title))
    atomic_write_text(out / "report.html", render_html(blocks, title))
    atomic_write_text(out / "machine.md", machine_note(extra["machine"], timing, cfg))
    return {
        "markdown": str(out / "report.md"),
        "html": str(out / "report.html"),
        "json": str(out / "results.json"),
    }
