"""The TRL / popalign comparison on one GPU (sized for an H200), with model FLOP/s utilisation.

    python -m benchmarks gpu               # on the GPU machine, from the repository root
    python -m benchmarks gpu --dry-run     # the same code path on a CPU at a tiny size (seconds)

Two models, each configuration in its own process: first the vocab-128k one (``h200-v128k``: the same
~1.1B-parameter body with a Llama-3-sized vocabulary of 128,256, ~1.5B parameters), where the LM head's
logits outgrow the model, with TRL, popalign with the chunked head (Liger-Kernel's fused kernel where the
``liger`` extra is installed), popalign with full logits, and DPO-PoP; then the vocab-32k one (``h200``:
hidden 2048, 22 layers, 32 heads, 4 key-value heads, vocab 32000) with every method. bfloat16, sdpa
attention; 8 preference pairs per step, prompt 512 and responses 1536 tokens (sequence length 2048);
AdamW; no gradient checkpointing; reference log-probs precomputed; median of 10 steps after 3 warm-up
steps. Peak GPU memory is ``torch.cuda.max_memory_allocated``. MFU = model FLOPs per step
(``benchmarks.common.model_flops_per_step``) / seconds per step / the GPU's dense bf16 peak. The whole
run is kept under ``--budget`` seconds (default 540): a configuration that would start too late is
skipped and reported as such. ``--json PREFIX`` writes ``PREFIX-<preset>.json`` per model.
"""

from __future__ import annotations

import sys
import time
from typing import Any

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by device-name substring.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}

# preset -> configurations, in the order they run (the vocab-128k comparison first).
VOCAB_128K_CONFIGS = ["trl-dpo", "popalign-dpo", "popalign-dpo-full-logits", "popalign-pop"]
GPU_CONFIGS = [
    "trl-dpo",
    "popalign-dpo",
    "popalign-dpo-prefix",
    "popalign-pop",
    "popalign-dpo-lora",
    "popalign-pop-lora",
]


def peak_flops(device_name: str | None, override: float | None) -> tuple[float, str]:
    if override:
        return override * 1e12, "given"
    for key, value in PEAK_BF16.items():
        if device_name and key in device_name:
            return value, key
    # Dry runs on a CPU: a nominal peak (the H200's) so the MFU code path runs; the figure means nothing.
    return PEAK_BF16["H200"], "nominal (no GPU)"


def add_mfu(results: dict[str, dict], override: float | None) -> None:
    for row in results.values():
        if "error" in row:
            continue
        peak, source = peak_flops(row.get("device_name"), override)
        row["peak_flops"], row["peak_source"] = peak, source
        row["mfu"] = row["model_flops_per_step"] / row["step_s"] / peak


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    from benchmarks.train_step import parser, run

    p = parser(__doc__)
    p.add_argument("--dry-run", action="store_true", help="tiny models on the CPU, 2 steps: checks the code")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's bf16 peak")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run")
    p.set_defaults(no_pop_builder=True)
    args = p.parse_args(argv)
    plan = [("h200-v128k", VOCAB_128K_CONFIGS), ("h200", GPU_CONFIGS)]
    if args.dry_run:
        plan = [("tiny-v128k", VOCAB_128K_CONFIGS), ("tiny", GPU_CONFIGS)]
        args.steps, args.warmup = 2, 1
    else:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no GPU visible; use --dry-run to check the code path on a CPU")
    deadline = time.monotonic() + args.budget
    for preset, configs in plan:
        json_path = None
        if args.json:
            prefix = Path(args.json)
            json_path = prefix.with_name(f"{prefix.stem}-{preset}.json")
        one = replace_args(args, preset=preset, configs=configs, json=json_path)
        report: dict[str, Any] = run(
            one, annotate=lambda results: add_mfu(results, args.peak_tflops), deadline=deadline
        )
        for name, row in report["results"].items():
            if "mfu" in row:
                peak = f"{row['peak_source']} peak {row['peak_flops'] / 1e12:.0f} TFLOP/s"
                memory = (
                    f", peak GPU memory {row['peak_cuda_mib']:,.0f} MiB" if "peak_cuda_mib" in row else ""
                )
                print(
                    f"{preset} MFU {name}: {row['mfu']:.1%} ({peak}){memory}, head {row.get('head_kernels')}"
                )
    return 0


def replace_args(args, **changes):
    import argparse

    return argparse.Namespace(**{**vars(args), **changes})


if __name__ == "__main__":
    sys.exit(main())
