"""Peak memory of DPO-PoP against vanilla DPO on a model large enough for a model copy to stand out.

    python -m benchmarks memory [--repeats 1] [--json FILE]

On the shared configuration a model copy is 19 MiB, within the run-to-run noise of peak RSS; here a
~75M-parameter Llama (a copy: ~290 MiB in float32) on short sequences makes the targets readable:
LoRA DPO-PoP at most 1.05x LoRA vanilla DPO, full DPO-PoP at most one model copy above vanilla DPO. Both
orders of the PoP forwards are measured: the weak pair's no-grad forward before the strong pair's graph
exists (popalign's order) and after it. Each configuration runs in its own process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from benchmarks.common import RunSpec, Shape

MEMORY_SHAPE = Shape(
    vocab_size=16384,
    hidden_size=768,
    intermediate_size=2048,
    num_hidden_layers=8,
    num_attention_heads=12,
    num_key_value_heads=4,
    batch_size=4,
    prompt_len=32,
    completion_len=96,
)

VARIANTS = {
    "DPO, full": {},
    "DPO-PoP, full": {"method": "dpo-pop"},
    "DPO-PoP, full, weak after strong": {"method": "dpo-pop", "weak_after_strong": True},
    "DPO, LoRA": {"lora": True},
    "DPO-PoP, LoRA": {"method": "dpo-pop", "lora": True},
    "DPO-PoP, LoRA, weak after strong": {"method": "dpo-pop", "lora": True, "weak_after_strong": True},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=1, help="runs per configuration (the median is reported)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from benchmarks.train_step import machine, run_config, write_report

    rows: dict[str, dict[str, Any]] = {}
    for label, fields in VARIANTS.items():
        peaks, params = [], None
        for r in range(args.repeats):
            spec = RunSpec(
                name=f"{label} #{r}",
                impl="popalign",
                shape=MEMORY_SHAPE,
                warmup=1,
                steps=2,
                threads=args.threads,
                **fields,
            )
            print(f"[memory] {spec.name} ...", file=sys.stderr, flush=True)
            result = run_config(spec)
            if "error" in result:
                rows[label] = result
                break
            peaks.append(result["peak_rss_mib"])
            params = result["params"]["total"]
        else:
            rows[label] = {"peak_rss_mib": statistics.median(peaks), "runs": peaks, "params": params}

    copy_mib = next((r["params"] for r in rows.values() if "params" in r), 0) * 4 / 2**20
    base_full, base_lora = rows.get("DPO, full", {}), rows.get("DPO, LoRA", {})
    print(f"model: {next((r['params'] for r in rows.values() if 'params' in r), 0):,} parameters,")
    print(f"one float32 copy {copy_mib:.0f} MiB")
    print(f"{'configuration':<36} {'peak RSS MiB':>12} {'vs DPO':>7} {'extra MiB':>9} {'copies':>6}")
    for label, row in rows.items():
        if "error" in row:
            print(f"{label:<36} FAILED {row['error']}")
            continue
        base = base_lora if "LoRA" in label else base_full
        if "peak_rss_mib" in base:
            extra = row["peak_rss_mib"] - base["peak_rss_mib"]
            row.update(
                vs_dpo=row["peak_rss_mib"] / base["peak_rss_mib"], extra_mib=extra, copies=extra / copy_mib
            )
            print(
                f"{label:<36} {row['peak_rss_mib']:>12.0f} {row['vs_dpo']:>7.3f} {extra:>9.0f}"
                f" {row['copies']:>6.2f}"
            )
    write_report({"machine": machine(), "model_copy_mib": copy_mib, "rows": rows}, args.json, "memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
