"""How step time grows with sequence length and batch size, popalign beside TRL.

    python -m benchmarks scaling [--steps 5] [--warmup 2] [--json FILE]

The shared configuration's model; the prompt is a quarter of each sequence. Every point runs in its own
process (:mod:`benchmarks.worker`), so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from benchmarks.common import RunSpec, Shape

SEQUENCE_LENGTHS = (128, 256, 512)
BATCH_SIZES = (4, 8, 16)


def points() -> list[tuple[str, Shape]]:
    out = []
    for length in SEQUENCE_LENGTHS:
        out.append(
            (f"length {length}, batch 8", Shape(prompt_len=length // 4, completion_len=length * 3 // 4))
        )
    for batch in BATCH_SIZES:
        if batch != 8:
            out.append((f"length 256, batch {batch}", Shape(batch_size=batch)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--impls", nargs="+", default=["trl", "popalign"], choices=["trl", "popalign"])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from benchmarks.train_step import machine, run_config, write_report

    rows: list[dict[str, Any]] = []
    for label, shape in points():
        for impl in args.impls:
            spec = RunSpec(
                name=f"{impl} {label}",
                impl=impl,
                shape=shape,
                steps=args.steps,
                warmup=args.warmup,
                threads=args.threads,
            )
            print(f"[scaling] {spec.name} ...", file=sys.stderr, flush=True)
            result = run_config(spec)
            rows.append({"point": label, "impl": impl, "tokens_per_step": shape.tokens_per_step, **result})
    report = {"machine": machine(), "rows": rows}

    head = f"{'point':<22} {'impl':<9} {'tokens/step':>11} {'s/step':>7} {'CPU s':>7} {'tok/s':>7}"
    print(head + f" {'peak RSS MiB':>12}")
    for r in rows:
        if "error" in r:
            print(f"{r['point']:<22} {r['impl']:<9} FAILED {r['error']}")
            continue
        print(
            f"{r['point']:<22} {r['impl']:<9} {r['tokens_per_step']:>11} {r['step_s']:>7.3f}"
            f" {r['cpu_s']:>7.3f} {r['tokens_per_s']:>7.0f} {r['peak_rss_mib']:>12.0f}"
        )
    write_report(report, args.json, "scaling")
    return 0


if __name__ == "__main__":
    sys.exit(main())
