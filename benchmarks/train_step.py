"""Step time, throughput and peak memory of TRL and popalign side by side, one process per configuration.

    python -m benchmarks [--preset cpu] [--steps 10] [--warmup 3] [--json FILE] [--configs NAME ...]

Prints one table (seconds per optimiser step, tokens per second, peak RSS, ratios against TRL and
against popalign's vanilla DPO, the performance targets) and writes the same as JSON. Reference log-prob
precompute throughput and the PoP builder's time on 1M preferences are measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import PRESETS, RunSpec
from popalign.io import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent


def write_report(report: dict, path: str | Path | None, name: str) -> Path:
    """Write ``report`` as JSON to ``path`` (default ``runs/bench/NAME.json``) atomically and say where."""
    out = Path(path or ROOT / "runs" / "bench" / f"{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, report)
    print(f"wrote {out}")
    return out


# name -> (RunSpec fields, what the row is). The order is the table's.
CONFIGS: dict[str, tuple[dict[str, Any], str]] = {
    "trl-dpo": ({"impl": "trl"}, "TRL DPOTrainer, vanilla DPO, precomputed reference"),
    "trl-dpo-live-ref": ({"impl": "trl", "live_reference": True}, "TRL, vanilla DPO, live reference"),
    "popalign-dpo": ({"impl": "popalign"}, "popalign vanilla DPO"),
    "popalign-dpo-full-logits": (
        {"impl": "popalign", "logps_chunk_size": 0},
        "popalign vanilla DPO, full logits (no chunked head)",
    ),
    "popalign-dpo-prefix": (
        {"impl": "popalign", "prefix_sharing": True},
        "popalign vanilla DPO, prefix sharing",
    ),
    "popalign-pop": ({"impl": "popalign", "method": "dpo-pop"}, "popalign DPO-PoP (target copy)"),
    "popalign-pop-cached": (
        {"impl": "popalign", "method": "dpo-pop", "margin_refresh_steps": 1000, "weak_pool": 8},
        "popalign DPO-PoP, margin cache, every margin cached (floor)",
    ),
    "popalign-dpo-lora": ({"impl": "popalign", "lora": True}, "popalign vanilla DPO, LoRA r=16"),
    "popalign-pop-lora": (
        {"impl": "popalign", "method": "dpo-pop", "lora": True},
        "popalign DPO-PoP, LoRA r=16 (target adapter)",
    ),
}
DEFAULT_CONFIGS = [
    "trl-dpo",
    "popalign-dpo",
    "popalign-pop",
    "popalign-pop-cached",
    "popalign-dpo-lora",
    "popalign-pop-lora",
]


def run_config(spec: RunSpec, timeout: float | None = None) -> dict[str, Any]:
    """Run ``spec`` in a fresh process (its own peak RSS); the worker's JSON, or ``{"error": ...}``."""
    # ``-m`` from the repository root puts the root on sys.path, so ``benchmarks`` imports.
    cmd = [sys.executable, "-m", "benchmarks.worker", json.dumps(spec.to_json())]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"name": spec.name, "error": f"timed out after {timeout} s"}
    for line in done.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT ") :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
    return {"name": spec.name, "error": f"exit {done.returncode}", "log_tail": tail}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        names = [ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")]
        info["cpu_model"] = names[0] if names else None
    except OSError:
        info["cpu_model"] = None
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    import importlib.metadata as md

    for package in ("torch", "transformers", "trl", "peft", "accelerate"):
        try:
            info[package] = md.version(package)
        except md.PackageNotFoundError:
            info[package] = None
    return info


def _ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    if not a or not b or key not in a or key not in b or not b[key]:
        return None
    return a[key] / b[key]


def summarise(results: dict[str, dict]) -> dict[str, Any]:
    """The ratios and the performance targets from the measured rows (None where a row is missing)."""
    r = results.get
    ratios = {
        "popalign_dpo_vs_trl_step": _ratio(r("popalign-dpo"), r("trl-dpo"), "step_s"),
        "popalign_pop_vs_dpo_step": _ratio(r("popalign-pop"), r("popalign-dpo"), "step_s"),
        "popalign_pop_cached_vs_dpo_step": _ratio(r("popalign-pop-cached"), r("popalign-dpo"), "step_s"),
        "popalign_pop_lora_vs_dpo_lora_step": _ratio(
            r("popalign-pop-lora"), r("popalign-dpo-lora"), "step_s"
        ),
        "popalign_pop_lora_vs_dpo_lora_rss": _ratio(
            r("popalign-pop-lora"), r("popalign-dpo-lora"), "peak_rss_mib"
        ),
        "popalign_prefix_vs_plain_step": _ratio(r("popalign-dpo-prefix"), r("popalign-dpo"), "step_s"),
    }
    cuda_key = "peak_cuda_mib"
    if r("popalign-pop-lora") and cuda_key in r("popalign-pop-lora"):
        ratios["popalign_pop_lora_vs_dpo_lora_cuda_mem"] = _ratio(
            r("popalign-pop-lora"), r("popalign-dpo-lora"), cuda_key
        )
    extra_copy = None
    if r("popalign-pop") and r("popalign-dpo") and "params" in r("popalign-dpo"):
        dpo, pop = r("popalign-dpo"), r("popalign-pop")
        mem_key = cuda_key if cuda_key in dpo else "peak_rss_mib"
        bytes_per = 2 if dpo["spec"]["shape"]["dtype"] in ("bfloat16", "float16") else 4
        copy_mib = dpo["params"]["total"] * bytes_per / 2**20
        extra_copy = {
            "extra_mib": pop[mem_key] - dpo[mem_key],
            "model_copy_mib": copy_mib,
            "copies": (pop[mem_key] - dpo[mem_key]) / copy_mib,
        }
    targets = {
        "popalign DPO <= 0.7x TRL": _check(ratios["popalign_dpo_vs_trl_step"], 0.7),
        "DPO-PoP <= 1.4x popalign DPO": _check(ratios["popalign_pop_vs_dpo_step"], 1.4),
        "LoRA DPO-PoP peak memory <= 1.05x LoRA DPO": _check(
            ratios.get("popalign_pop_lora_vs_dpo_lora_cuda_mem", ratios["popalign_pop_lora_vs_dpo_lora_rss"]),
            1.05,
        ),
        "full DPO-PoP memory <= one extra model copy": _check(extra_copy and extra_copy["copies"], 1.0),
    }
    return {"ratios": ratios, "full_pop_extra_memory": extra_copy, "targets": targets}


def _check(value: float | None, limit: float) -> dict[str, Any]:
    return {"value": value, "limit": limit, "met": None if value is None else value <= limit}


def format_table(results: dict[str, dict], summary: dict[str, Any]) -> str:
    gpu = any("peak_cuda_mib" in v or "mfu" in v for v in results.values())
    head = f"{'configuration':<58} {'s/step':>7} {'min':>6} {'max':>6} {'tok/s':>8} {'peak RSS MiB':>12}"
    head += f" {'vs TRL':>7} {'vs DPO':>7}"
    if gpu:
        head += f" {'peak GPU MiB':>12} {'MFU':>6}"
    lines = [head, "-" * len(head)]
    trl, dpo = results.get("trl-dpo"), results.get("popalign-dpo")
    for name, row in results.items():
        label = CONFIGS[name][1] if name in CONFIGS else name
        if "error" in row:
            lines.append(f"{label:<58} FAILED: {row['error']}")
            continue
        vs_trl, vs_dpo = _ratio(row, trl, "step_s"), _ratio(row, dpo, "step_s")
        line = (
            f"{label:<58} {row['step_s']:>7.3f} {row['step_s_min']:>6.2f} {row['step_s_max']:>6.2f}"
            f" {row['tokens_per_s']:>8.0f} {row['peak_rss_mib']:>12.0f}"
            f" {_fmt(vs_trl):>7} {_fmt(vs_dpo):>7}"
        )
        if gpu:
            line += f" {row.get('peak_cuda_mib', 0):>12.0f} {_fmt(row.get('mfu'), '.1%'):>6}"
        lines.append(line)
    lines.append("")
    for name, check in summary["targets"].items():
        state = "n/a" if check["met"] is None else ("met" if check["met"] else "MISSED")
        lines.append(f"target {name:<46} {_fmt(check['value'], '.3f'):>7}  {state}")
    lora = summary["ratios"].get("popalign_pop_lora_vs_dpo_lora_step")
    if lora is not None:
        # A LoRA step's backward skips the frozen weights' gradients, so a forward is half of it, not a third.
        lines.append(f"  (LoRA DPO-PoP / LoRA DPO step time: {lora:.2f}; the floor there is about 1.5)")
    extra = summary.get("full_pop_extra_memory")
    if extra:
        # On a small model one copy is within the run-to-run noise of peak RSS; benchmarks.memory
        # repeats the comparison on a model whose copy stands out.
        lines.append(
            f"  (full DPO-PoP: {extra['extra_mib']:.0f} MiB above DPO; one model copy is "
            f"{extra['model_copy_mib']:.0f} MiB; see `python -m benchmarks memory` for a larger model)"
        )
    return "\n".join(lines)


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def precompute_lines(results: dict[str, dict]) -> list[str]:
    lines = []
    for name, row in results.items():
        if "precompute_seq_per_s" in row:
            label = CONFIGS[name][1] if name in CONFIGS else name
            lines.append(f"reference precompute, {label}: {row['precompute_seq_per_s']:.1f} sequences/s")
    return lines


def pop_builder_figures(n: int = 1_000_000, k: float = 2.0, repeats: int = 3) -> list[dict[str, Any]]:
    """The PoP builder on ``n`` synthetic preferences (each strategy in its own process)."""
    figures = []
    for strategy in ("iterative", "random"):
        cmd = [
            sys.executable,
            str(ROOT / "benchmarks" / "pop_build.py"),
            "--worker",
            "--strategies",
            strategy,
        ]
        cmd += ["--n", str(n), "--k", str(k), "--repeats", str(repeats)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
        if done.returncode == 0:
            figures.append(json.loads(done.stdout))
        else:
            figures.append({"strategy": strategy, "error": done.stderr.strip().splitlines()[-1:]})
    return figures


def _least_disturbed(old: dict | None, new: dict) -> dict:
    """Of two runs of one configuration, the one with the lower median step time (other work on the
    machine only ever slows a run down); every round's median is kept in ``round_step_s``."""
    rounds = (old or {}).get("round_step_s", []) + ([new["step_s"]] if "step_s" in new else [])
    measured = [r for r in (old, new) if r and "step_s" in r]
    best = min(measured, key=lambda r: r["step_s"]) if measured else new
    return {**best, "round_step_s": rounds}


def build_specs(args: argparse.Namespace) -> list[RunSpec]:
    shape = PRESETS[args.preset]
    specs = []
    for name in args.configs:
        if name not in CONFIGS:
            raise SystemExit(f"unknown configuration {name!r}; known: {', '.join(CONFIGS)}")
        fields = dict(CONFIGS[name][0])
        specs.append(
            RunSpec(
                name=name,
                shape=shape,
                warmup=args.warmup,
                steps=args.steps,
                threads=args.threads,
                seed=args.seed,
                **fields,
            )
        )
    return specs


def parser(description: str = __doc__) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="model and batch shape")
    p.add_argument("--steps", type=int, default=10, help="timed optimiser steps per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help=f"of: {', '.join(CONFIGS)}")
    p.add_argument("--json", default=None, help="where to write the JSON (default runs/bench/<preset>.json)")
    p.add_argument("--no-pop-builder", action="store_true", help="skip the PoP builder figure")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per configuration")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the list this many times, interleaved, and keep each configuration's least disturbed run "
        "(on a machine other work shares)",
    )
    return p


def run(args: argparse.Namespace, *, annotate=None, deadline: float | None = None) -> dict[str, Any]:
    """Measure every configuration, print the table, write the JSON; returns what was written.

    ``annotate(results)`` may add per-row fields (e.g. MFU) before the table is printed. With a
    ``deadline`` (``time.monotonic()`` seconds) no configuration runs past it.
    """
    info = machine()
    results: dict[str, dict] = {}
    for round_ in range(args.rounds):
        for spec in build_specs(args):
            timeout = args.timeout
            if deadline is not None:
                left = deadline - time.monotonic()
                if left < 30:
                    results.setdefault(
                        spec.name, {"name": spec.name, "error": "skipped: the time budget is spent"}
                    )
                    continue
                timeout = min(timeout or left, left)
            print(f"[bench] {spec.name} (round {round_ + 1}) ...", file=sys.stderr, flush=True)
            results[spec.name] = _least_disturbed(results.get(spec.name), run_config(spec, timeout))
    if annotate is not None:
        annotate(results)
    summary = summarise(results)
    report: dict[str, Any] = {"machine": info, "preset": args.preset, "results": results, **summary}
    if not args.no_pop_builder:
        report["pop_builder"] = pop_builder_figures()
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]

    print(
        f"{info['date']}  {info['cpu_model']}  {info['cpus']} CPUs  torch {info['torch']}  trl {info['trl']}"
    )
    rounds = f"; the least disturbed of {args.rounds} rounds" if args.rounds > 1 else ""
    print(f"preset {args.preset}; median of {args.steps} steps after {args.warmup} warm-up steps{rounds}")
    print(format_table(results, summary))
    for line in precompute_lines(results):
        print(line)
    for fig in report.get("pop_builder", []):
        if "error" in fig:
            print(f"PoP builder {fig['strategy']}: FAILED {fig['error']}")
        else:
            print(
                f"PoP builder {fig['strategy']}: {fig['n']:,} preferences, k={fig['k']:g}: "
                f"{fig['median_s']:.3f} s, {fig['pairs']:,} pairs, peak RSS {fig['peak_rss_mib']:.0f} MiB"
            )
    print(f"load average at start {info.get('load_average')}, at end {info['load_average_end']}")
    write_report(report, args.json, args.preset)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
