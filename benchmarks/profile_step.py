"""Where an optimiser step's time goes: the torch profiler over real trainer steps, TRL or popalign.

    python -m benchmarks profile [--impl popalign] [--method dpo] [--steps 3] [--threads 1] [--rows 25]

Runs the shared configuration through the real trainer (:mod:`benchmarks.worker`), profiles ``--steps``
optimiser steps after two warm-up steps, and prints the operators by their own CPU time and the
step's phases (forward, backward, optimiser, data) as shares of the profiled time. ``--chunk`` sets
popalign's ``training.logps_chunk_size`` (0: full logits).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from benchmarks.common import RunSpec

# Top-level profiler events of a step's phases, by name prefix; the forward and the data loading are the
# rest.
PHASES = {
    "backward": "autograd::engine::evaluate_function",
    "optimizer step": "Optimizer.step#",
    "zero_grad": "Optimizer.zero_grad#",
}


# Operators by their own (self) CPU time, grouped by kind; attention is every scaled_dot_product kernel.
KINDS = {
    "matrix multiplies": {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm"},
    "attention kernels": set(),
    "softmax / exp of the LM head": {"aten::_log_softmax", "aten::_softmax", "aten::exp", "aten::exp_"},
}


def kind_of(name: str) -> str:
    if "scaled_dot_product" in name:
        return "attention kernels"
    return next((k for k, names in KINDS.items() if name in names), "other operators")


def kinds(events) -> dict[str, float]:
    """Self CPU seconds per kind of operator (:data:`KINDS`, then "other operators")."""
    out = dict.fromkeys([*KINDS, "other operators"], 0.0)
    for e in events:
        out[kind_of(e.key)] += e.self_cpu_time_total / 1e6
    return out


def profiling_callback(warmup: int, steps: int, out: dict[str, Any]):
    """A TrainerCallback that profiles optimiser steps ``warmup + 1 .. warmup + steps``."""
    import torch
    from transformers import TrainerCallback

    class Profile(TrainerCallback):
        def __init__(self):
            self.prof = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup and self.prof is None:
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.prof.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if self.prof is not None and state.global_step == warmup + steps:
                self.prof.__exit__(None, None, None)
                out["profile"] = self.prof
                self.prof = None

    return Profile()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--impl", choices=["popalign", "trl"], default="popalign")
    p.add_argument("--method", default="dpo", help="popalign method (dpo, dpo-pop)")
    p.add_argument("--steps", type=int, default=3, help="profiled optimiser steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk", type=int, default=None, help="popalign's training.logps_chunk_size")
    p.add_argument("--rows", type=int, default=25, help="operators listed")
    args = p.parse_args(argv)

    import torch

    from benchmarks import worker

    torch.set_num_threads(args.threads)
    spec = RunSpec(
        name="profile",
        impl=args.impl,
        method=args.method,
        warmup=2,
        steps=args.steps,
        threads=args.threads,
        logps_chunk_size=args.chunk,
    )
    out: dict[str, Any] = {}
    callback = profiling_callback(spec.warmup, spec.steps, out)
    run = worker.run_trl if args.impl == "trl" else worker.run_popalign
    result = run(spec, callbacks=[callback])
    prof = out["profile"]
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{args.impl} {args.method}: {spec.steps} profiled steps, median step {result['step_s']:.3f} s")
    print(f"profiled CPU time {total / 1e6:.2f} s ({args.threads} thread(s))")
    rest = total
    for phase, prefix in PHASES.items():
        t = sum(e.cpu_time_total for e in events if e.key.startswith(prefix))
        rest -= t
        print(f"  {phase:<28} {t / 1e6:7.3f} s  {t / total:6.1%}")
    print(f"  {'forward, loss, data, other':<28} {rest / 1e6:7.3f} s  {rest / total:6.1%}")
    print("self CPU time by kind of operator:")
    for kind, seconds in kinds(events).items():
        print(f"  {kind:<28} {seconds:7.3f} s  {seconds * 1e6 / total:6.1%}")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
