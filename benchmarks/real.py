"""Real-length throughput: TRL and popalign, padded and padding-free, on the UltraFeedback sample.

    python -m benchmarks real [--pairs 4] [--warmup 1] [--steps 2] [--json FILE] [--configs NAME ...]

SmolLM2-135M-Instruct (offline: ``popalign model prepare smollm2-135m-instruct``), float32 on the CPU,
the UltraFeedback sample's training rows with the chat template, at most 1,024 tokens per sequence. Every
configuration trains on the same preferences in the same order, one process each (its own peak RSS).
A step's real tokens are the non-pad tokens of the rows its collator built (chosen and rejected; not
DPO-PoP's weak pair), counted in the implementation's own batches, so the padding share is what that
implementation pays. ``real_tokens_per_s`` is the timed steps' real tokens over their wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import replace
from typing import Any

from benchmarks.common import RunSpec, Shape, StepTimer, memory_record
from benchmarks.train_step import ROOT, machine, write_report

MODEL = "smollm2-135m-instruct"
DATA = "../shared/data/ultrafeedback-binarized-sample/train.jsonl"  # relative to the repository root

# name -> (settings, what the row is); the order is the table's.
CONFIGS: dict[str, tuple[dict[str, Any], str]] = {
    "trl-dpo": ({"impl": "trl", "method": "dpo"}, "TRL DPOTrainer, its defaults, precomputed reference"),
    "popalign-dpo": ({"impl": "popalign", "method": "dpo"}, "popalign DPO, padded rows"),
    "popalign-dpo-padding-free": (
        {"impl": "popalign", "method": "dpo", "padding_free": True},
        "popalign DPO, padding-free",
    ),
    "popalign-dpo-pop": ({"impl": "popalign", "method": "dpo-pop"}, "popalign DPO-PoP, padded rows"),
    "popalign-dpo-pop-padding-free": (
        {"impl": "popalign", "method": "dpo-pop", "padding_free": True},
        "popalign DPO-PoP, padding-free",
    ),
}


class CountingCollator:
    """Wraps a collator and records each batch's real tokens and row positions (chosen and rejected rows)."""

    def __init__(self, inner):
        self.inner = inner
        self.counts: list[tuple[int, int]] = []

    def __call__(self, items):
        from popalign.train.throughput import row_tokens

        batch = self.inner(items)
        self.counts.append(row_tokens(batch))
        return batch


def _run_spec(settings: dict[str, Any]) -> RunSpec:
    """The shared benchmark's optimiser settings (benchmarks.worker) at this benchmark's batch size."""
    return RunSpec(
        name=settings["name"],
        impl=settings["impl"],
        method=settings["method"],
        warmup=settings["warmup"],
        steps=settings["steps"],
        seed=settings["seed"],
        threads=settings["threads"],
        shape=Shape(batch_size=settings["pairs"]),
    )


def _table(settings: dict[str, Any]):
    """The preferences of the run: a seeded draw, one spare batch beyond the steps."""
    import numpy as np

    from popalign.data.load import load_preferences

    table, _ = load_preferences(str(ROOT / DATA))
    n = (settings["warmup"] + settings["steps"] + 1) * settings["pairs"]
    rows = np.random.default_rng(settings["seed"]).permutation(len(table))[:n]
    return table.select(rows)


def run_popalign(settings: dict[str, Any]) -> tuple[StepTimer, CountingCollator]:
    import numpy as np

    from benchmarks.worker import _training_spec
    from popalign.data.tokenize import TokenizeSpec, tokenize_preferences
    from popalign.methods import get_method
    from popalign.modeling.build import build_model_and_tokenizer
    from popalign.modeling.reference import cached_reference_logps
    from popalign.train.collate import PairExamples, PreferenceCollator
    from popalign.train.config import ModelSpec
    from popalign.train.recipe import training_arguments
    from popalign.train.trainer import PreferenceTrainer

    spec = _run_spec(settings)
    table = _table(settings)
    model, tokenizer = build_model_and_tokenizer(ModelSpec(name_or_path=MODEL), texts=[])
    tokenized = tokenize_preferences(table, tokenizer, TokenizeSpec(max_length=settings["max_length"]))
    ref_c, ref_r, _ = cached_reference_logps(
        model,
        tokenized,
        tokenizer.pad_token_id,
        str(ROOT / "runs" / "bench" / "reference-cache"),
        batch_size=2 * settings["pairs"],
        progress=False,
    )
    method = get_method(settings["method"])
    n = len(table)
    weak = (
        np.random.default_rng(settings["seed"] + 1).integers(0, n, size=n) if method.needs_weak_pair else None
    )
    collator = CountingCollator(
        PreferenceCollator(
            tokenized,
            tokenizer.pad_token_id,
            reference_chosen_logps=ref_c,
            reference_rejected_logps=ref_r,
            with_weak=method.needs_weak_pair,
            padding_free=settings.get("padding_free", False),
        )
    )
    train_spec = replace(_training_spec(spec), padding_free=settings.get("padding_free", False))
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        trainer = PreferenceTrainer(
            model=model,
            args=training_arguments(train_spec, out),
            train_dataset=PairExamples(np.arange(n), weak),
            data_collator=collator,
            method=method,
        )
        trainer.add_callback(timer.callback)
        trainer.train()
    return timer, collator


def run_trl(settings: dict[str, Any]) -> tuple[StepTimer, CountingCollator]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from benchmarks.worker import _common_args
    from popalign.modeling.build import build_model_and_tokenizer
    from popalign.train.config import ModelSpec

    spec = _run_spec(settings)
    table = _table(settings)
    model, tokenizer = build_model_and_tokenizer(ModelSpec(name_or_path=MODEL), texts=[])
    # Conversational rows, so that TRL applies the chat template as popalign does.
    dataset = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p}] for p in table.prompts],
            "chosen": [[{"role": "assistant", "content": c}] for c in table.chosen],
            "rejected": [[{"role": "assistant", "content": r}] for r in table.rejected],
        }
    )
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-real-"),
        warmup_steps=0,
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=2 * settings["pairs"],
        max_length=settings["max_length"],
        beta=0.1,
        loss_type=["sigmoid"],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        **_common_args(spec),
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    collator = CountingCollator(trainer.data_collator)
    trainer.data_collator = collator
    timer = StepTimer()
    trainer.add_callback(timer.callback)
    trainer.train()
    return timer, collator


def measure(settings: dict[str, Any]) -> dict[str, Any]:
    """One configuration in this process: its row of the results."""
    import torch

    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    run = run_trl if settings["impl"] == "trl" else run_popalign
    timer, collator = run(settings)
    warmup, steps = settings["warmup"], settings["steps"]
    timed = collator.counts[warmup : warmup + steps]  # batch k is step k (one micro-batch per step)
    seconds = sum(timer.intervals[warmup : warmup + steps])
    real = sum(c[0] for c in timed)
    positions = sum(c[1] for c in timed)
    return {
        "name": settings["name"],
        "config": {
            **{k: v for k, v in settings.items() if k != "name"},
            "what": CONFIGS[settings["name"]][1],
        },
        "real_tokens_per_s": real / seconds,
        "padding_share": 1.0 - real / positions,
        "real_tokens": real,
        "row_positions": positions,
        **timer.summary(warmup),
        **memory_record(),
        "threads": torch.get_num_threads(),
    }


def run_config(settings: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.real", "--worker", json.dumps(settings)]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"name": settings["name"], "error": f"timed out after {timeout} s"}
    for line in done.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT ") :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
    return {"name": settings["name"], "error": f"exit {done.returncode}", "log_tail": tail}


def targets(rows: dict[str, dict]) -> dict[str, Any]:
    def ratio(a: str, b: str, key: str) -> float | None:
        if key in rows.get(a, {}) and rows.get(b, {}).get(key):
            return rows[a][key] / rows[b][key]
        return None

    free = ratio("popalign-dpo-padding-free", "trl-dpo", "real_tokens_per_s")
    return {
        "popalign padding-free >= 2x TRL real tokens/s": {
            "value": free,
            "limit": 2.0,
            "met": None if free is None else free >= 2.0,
        },
        "ratios": {
            "popalign_dpo_vs_trl_real_tokens_per_s": ratio("popalign-dpo", "trl-dpo", "real_tokens_per_s"),
            "padding_free_vs_padded_dpo": ratio(
                "popalign-dpo-padding-free", "popalign-dpo", "real_tokens_per_s"
            ),
            "padding_free_vs_padded_pop": ratio(
                "popalign-dpo-pop-padding-free", "popalign-dpo-pop", "real_tokens_per_s"
            ),
        },
    }


def format_table(rows: list[dict]) -> str:
    head = f"{'configuration':<52} {'real tok/s':>10} {'padding':>8} {'s/step':>7} {'peak RSS MiB':>12}"
    lines = [head, "-" * len(head)]
    for row in rows:
        label = CONFIGS.get(row["name"], ({}, row["name"]))[1]
        if "error" in row:
            lines.append(f"{label:<52} FAILED: {row['error']}")
            continue
        lines.append(
            f"{label:<52} {row['real_tokens_per_s']:>10.1f} {row['padding_share']:>8.1%}"
            f" {row['step_s']:>7.2f} {row['peak_rss_mib']:>12.0f}"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks real",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pairs", type=int, default=2, help="preferences per optimiser step")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--steps", type=int, default=2, help="timed optimiser steps per configuration")
    p.add_argument("--max-length", type=int, default=1024, help="longest prompt+reply in tokens")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), help=f"of: {', '.join(CONFIGS)}")
    p.add_argument("--json", default=None, help="where to write the JSON (default runs/bench/real.json)")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per configuration")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.worker:
        print("BENCH-RESULT " + json.dumps(measure(json.loads(args.worker))), flush=True)
        return 0
    info = machine()
    rows = []
    for name in args.configs:
        if name not in CONFIGS:
            raise SystemExit(f"unknown configuration {name!r}; known: {', '.join(CONFIGS)}")
        settings = {
            "name": name,
            **CONFIGS[name][0],
            "pairs": args.pairs,
            "warmup": args.warmup,
            "steps": args.steps,
            "max_length": args.max_length,
            "threads": args.threads,
            "seed": args.seed,
        }
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        rows.append(run_config(settings, args.timeout))
    import os

    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "machine": info,
        "model": MODEL,
        "data": DATA,
        "results": rows,
        "targets": targets({r["name"]: r for r in rows}),
    }
    print(
        f"{info['date']}  {info['cpu_model']}  {info['cpus']} CPUs  torch {info['torch']}  trl {info['trl']}"
    )
    print(f"{MODEL}, {args.pairs} pairs per step, {args.steps} timed steps after {args.warmup} warm-up")
    print(format_table(rows))
    for name, check in report["targets"].items():
        if name != "ratios":
            state = "n/a" if check["met"] is None else ("met" if check["met"] else "MISSED")
            print(f"target {name}: {check['value']}  {state}")
    print(f"load average at start {info.get('load_average')}, at end {info['load_average_end']}")
    write_report(report, args.json, "real")
    return 0


if __name__ == "__main__":
    sys.exit(main())
