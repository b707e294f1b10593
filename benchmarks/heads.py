"""Large vocabularies and long sequences: peak memory and step time of TRL and popalign, chunked LM head.

    python -m benchmarks heads [--steps 3] [--warmup 2] [--points NAME ...] [--json FILE]
    python -m benchmarks heads --markdown FILE.json ...   # earlier runs' grid as a Markdown table

A 2-layer Llama of hidden 256 (the shared configuration's widths) at vocab 4,096, 32,000 and 128,256, each
on sequences of 256 tokens (4 pairs of 64 + 192), 1,024 (2 pairs of 256 + 768) and 2,048 (1 pair of
512 + 1,536), the batch reduced with the length so that TRL fits (the 3 x 3 grid). At each
point: TRL's DPO, popalign's DPO with the chunked head (the default) and with full logits
(``logps_chunk_size=0``, the path before it), and popalign's DPO-PoP; at the longest sequence also both
trainers with gradient checkpointing. Each configuration runs in its own process (its own peak RSS).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import RunSpec, Shape

BASE = Shape(num_hidden_layers=2)

# name -> (shape changes, configurations)
# Sequence length -> (pairs per step, prompt tokens, completion tokens): the batch shrinks with the length so
# that TRL fits (2,048 tokens per step at 256, 4,096 at 1,024 and 2,048).
SEQUENCES = {256: (4, 64, 192), 1024: (2, 256, 768), 2048: (1, 512, 1536)}
VOCABS = {"v4k": 4096, "v32k": 32000, "v128k": 128256}
POINTS: dict[str, dict[str, Any]] = {
    f"{v}-s{seq}": {"vocab_size": size, "batch_size": b, "prompt_len": p, "completion_len": c}
    for v, size in VOCABS.items()
    for seq, (b, p, c) in SEQUENCES.items()
}

# name -> (RunSpec fields, what the row is)
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "trl-dpo": ({"impl": "trl"}, "TRL DPO"),
    "popalign-dpo": ({"impl": "popalign"}, "popalign DPO, chunked head"),
    "popalign-dpo-full-logits": ({"impl": "popalign", "logps_chunk_size": 0}, "popalign DPO, full logits"),
    "popalign-pop": ({"impl": "popalign", "method": "dpo-pop"}, "popalign DPO-PoP, chunked head"),
}
CHECKPOINTED: dict[str, tuple[dict[str, Any], str]] = {
    "trl-dpo-ckpt": ({"impl": "trl", "gradient_checkpointing": True}, "TRL DPO, gradient checkpointing"),
    "popalign-dpo-ckpt": (
        {"impl": "popalign", "gradient_checkpointing": True},
        "popalign DPO, chunked head, gradient checkpointing",
    ),
}
LONGEST = "v128k-s2048"


def variants(point: str) -> dict[str, tuple[dict[str, Any], str]]:
    return {**VARIANTS, **CHECKPOINTED} if point == LONGEST else dict(VARIANTS)


def point_summary(rows: dict[str, dict]) -> dict[str, Any]:
    """Ratios against TRL at one point, and DPO-PoP's memory over DPO in model copies."""

    def ratio(a: str, b: str, key: str) -> float | None:
        ra, rb = rows.get(a, {}), rows.get(b, {})
        return ra[key] / rb[key] if key in ra and key in rb and rb[key] else None

    out: dict[str, Any] = {}
    for name in rows:
        if name.startswith("popalign"):
            base = "trl-dpo-ckpt" if name.endswith("-ckpt") else "trl-dpo"
            out[name] = {
                "step_vs_trl": ratio(name, base, "step_s"),
                "cpu_vs_trl": ratio(name, base, "cpu_s"),
                "rss_vs_trl": ratio(name, base, "peak_rss_mib"),
            }
    dpo, pop = rows.get("popalign-dpo", {}), rows.get("popalign-pop", {})
    if "peak_rss_mib" in dpo and "peak_rss_mib" in pop:
        copy_mib = dpo["params"]["total"] * 4 / 2**20
        extra = pop["peak_rss_mib"] - dpo["peak_rss_mib"]
        out["pop_extra"] = {"extra_mib": extra, "model_copy_mib": copy_mib, "copies": extra / copy_mib}
    return out


def targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's targets at vocab 128,256 (the 256-token point, where TRL's figures were taken)."""
    from benchmarks.train_step import _check

    at = report["points"].get("v128k-s256", {}).get("summary", {})
    dpo = at.get("popalign-dpo", {})
    return {
        "vocab 128k: popalign peak RSS <= 0.5x TRL": _check(dpo.get("rss_vs_trl"), 0.5),
        "vocab 128k: popalign step <= 0.6x TRL": _check(dpo.get("step_vs_trl"), 0.6),
        # With one thread a step's CPU seconds hardly move with other work on the machine.
        "vocab 128k: popalign CPU s/step <= 0.6x TRL": _check(dpo.get("cpu_vs_trl"), 0.6),
        "vocab 128k: DPO-PoP peak <= DPO + one model copy": _check(
            at.get("pop_extra", {}).get("copies"), 1.0
        ),
    }


def format_point(name: str, shape: Shape, rows: dict[str, dict], summary: dict[str, Any]) -> list[str]:
    lines = [
        f"{name}: vocab {shape.vocab_size:,}, sequence {shape.max_length:,}, {shape.batch_size} pairs"
        f" ({shape.tokens_per_step:,} tokens/step)"
    ]
    labels = variants(name)
    for key, row in rows.items():
        label = labels[key][1]
        if "error" in row:
            lines.append(f"  {label:<52} FAILED: {row['error']} {row.get('log_tail', [''])[-1:]}")
            continue
        ratios = summary.get(key, {})
        lines.append(
            f"  {label:<50} {row['step_s']:>7.3f} s {row['cpu_s']:>7.3f} CPU s"
            f" {row['peak_rss_mib']:>6.0f} MiB"
            f"  vs TRL: step {_fmt(ratios.get('step_vs_trl')):>5} CPU {_fmt(ratios.get('cpu_vs_trl')):>5}"
            f" RSS {_fmt(ratios.get('rss_vs_trl')):>5}"
        )
    extra = summary.get("pop_extra")
    if extra:
        lines.append(
            f"  DPO-PoP over DPO: {extra['extra_mib']:.0f} MiB = {extra['copies']:.2f} model copies"
            f" (one copy {extra['model_copy_mib']:.0f} MiB)"
        )
    return lines


def markdown_rows(report: dict[str, Any]) -> list[str]:
    """The grid as the rows of docs/benchmarks.md's table (one line per configuration, point first)."""
    lines = [
        "| point | configuration | CPU s/step | wall s/step | peak RSS MiB | CPU vs TRL | RSS vs TRL |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    optim = report.get("optim", "adamw_torch")  # runs from before the option all used adamw_torch
    for name, point in report["points"].items():
        shape, summary, labels = point["shape"], point["summary"], variants(name)
        where = (
            f"vocab {shape['vocab_size']:,}, seq {shape['prompt_len'] + shape['completion_len']:,},"
            f" {shape['batch_size']} pair{'s' if shape['batch_size'] > 1 else ''}"
        )
        if optim != RunSpec.optim:
            where += f", {optim}"
        for key, row in point["results"].items():
            if "error" in row:
                lines.append(f"| {where} | {labels[key][1]} | failed: {row['error']} | | | | |")
            else:
                ratios = summary.get(
                    key, {"cpu_vs_trl": 1.0, "rss_vs_trl": 1.0} if key.startswith("trl") else {}
                )
                lines.append(
                    f"| {where} | {labels[key][1]} | {row['cpu_s']:.2f} | {row['step_s']:.2f} |"
                    f" {row['peak_rss_mib']:,.0f} | {_fmt(ratios.get('cpu_vs_trl'))} |"
                    f" {_fmt(ratios.get('rss_vs_trl'))} |"
                )
            where = ""
        extra = summary.get("pop_extra")
        if extra:
            lines.append(
                f"| | DPO-PoP over DPO: {extra['extra_mib']:.0f} MiB, {extra['copies']:.2f} model copies"
                f" (a copy: {extra['model_copy_mib']:.0f} MiB) | | | | | |"
            )
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks heads",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--steps", type=int, default=3, help="timed optimiser steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU seconds hold under load)")
    p.add_argument("--points", nargs="+", default=list(POINTS), help=f"of: {', '.join(POINTS)}")
    p.add_argument("--configs", nargs="+", default=None, help="only these configurations at each point")
    p.add_argument(
        "--optim",
        default=RunSpec.optim,
        help="both trainers' optimiser (transformers' names; default: both trainers' default)",
    )
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per configuration")
    p.add_argument("--json", default=None, help="where to write the JSON (default runs/bench/heads.json)")
    p.add_argument(
        "--markdown",
        nargs="+",
        metavar="JSON",
        default=None,
        help="run nothing: print the grid of these earlier runs' JSON files as a Markdown table",
    )
    args = p.parse_args(argv)
    if args.markdown:
        import json

        for i, path in enumerate(args.markdown):
            rows = markdown_rows(json.loads(Path(path).read_text()))
            print("\n".join(rows if i == 0 else rows[2:]))
        return 0

    from dataclasses import replace

    from benchmarks.train_step import machine, run_config, write_report

    report: dict[str, Any] = {
        "machine": machine(),
        "steps": args.steps,
        "warmup": args.warmup,
        "optim": args.optim,
        "points": {},
    }
    lines: list[str] = []
    for point in args.points:
        if point not in POINTS:
            raise SystemExit(f"unknown point {point!r}; known: {', '.join(POINTS)}")
        shape = replace(BASE, **POINTS[point])
        rows: dict[str, dict] = {}
        for key, (fields, _label) in variants(point).items():
            if args.configs and key not in args.configs:
                continue
            spec = RunSpec(
                name=f"{point}/{key}",
                shape=shape,
                warmup=args.warmup,
                steps=args.steps,
                threads=args.threads,
                optim=args.optim,
                **fields,
            )
            print(f"[heads] {spec.name} ...", file=sys.stderr, flush=True)
            rows[key] = run_config(spec, args.timeout)
        summary = point_summary(rows)
        report["points"][point] = {"shape": shape.__dict__, "results": rows, "summary": summary}
        lines += format_point(point, shape, rows, summary)
        print("\n".join(format_point(point, shape, rows, summary)), flush=True)
    report["targets"] = targets(report)
    import os

    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(f"{report['machine']['date']}  median of {args.steps} steps after {args.warmup} warm-up steps")
    print("\n".join(lines))
    print()
    print("\n".join(markdown_rows(report)))
    for name, check in report["targets"].items():
        state = "n/a" if check["met"] is None else ("met" if check["met"] else "MISSED")
        print(f"target {name:<52} {_fmt(check['value']):>6}  {state}")
    write_report(report, args.json, "heads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
