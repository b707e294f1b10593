"""Each performance lever measured before and after, on the shared configuration's model.

    python -m benchmarks levers [--reps 5] [--threads 2] [--quick] [--json FILE]

Micro-levers (forward + backward of the policy log-probs of one batch, the step's hot path) run in this
process, variants interleaved round by round so that a change in machine load hits all of them alike;
each figure is the median over rounds, in wall seconds and in CPU seconds of this process. Levers that
concern the whole step or its memory (threads, the order of the weak forward) run the trainer in a
process of their own (:mod:`benchmarks.worker`). With ``--threads 1`` the CPU seconds are the steadiest
figure on a machine other work shares: one thread never waits for a descheduled partner.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import PAD_ID, RunSpec, Shape, build_model, synthetic_ids


def _timed_rounds(variants: dict[str, Callable[[], None]], reps: int) -> dict[str, dict[str, float]]:
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps + 1):  # the first round warms up
        for name, fn in variants.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return {
        k: {"wall_s": statistics.median(wall[k][1:]), "cpu_s": statistics.median(cpu[k][1:])}
        for k in variants
    }


def _plain_batch(shape: Shape, prompt_lens: list[int], seed: int = 0):
    """Plain 2B-row batch (chosen rows, then rejected) and the same preferences in the shared layout."""
    from popalign.modeling.batching import pad_rows
    from popalign.modeling.prefix_sharing import shared_rows

    b = len(prompt_lens)
    _, chosen, rejected = synthetic_ids(shape, b, seed)
    prompts, _, _ = synthetic_ids(Shape(**{**shape.__dict__, "prompt_len": max(prompt_lens)}), b, seed + 1)
    prompts = [p[:n] for p, n in zip(prompts, prompt_lens, strict=True)]
    rows = [p + c for p, c in zip(prompts, chosen, strict=True)]
    rows += [p + r for p, r in zip(prompts, rejected, strict=True)]
    ids, mask = pad_rows(rows, PAD_ID)
    completion = mask.clone()
    for i, p in enumerate(prompts + prompts):
        completion[i, : len(p)] = 0
    return (ids, mask, completion), shared_rows(prompts, chosen, rejected, PAD_ID)


def _naive_logps(model, ids, mask, completion):
    """Before the completion-only lever: logits at every position, a full log-softmax, gather."""
    import torch

    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token = logprobs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (token * completion[:, 1:]).sum(-1)


def logits_lever(model, shape: Shape, reps: int) -> dict[str, Any]:
    from popalign.modeling.logps import completion_logps

    plain, _ = _plain_batch(shape, [shape.prompt_len] * shape.batch_size)
    return _timed_rounds(
        {
            "full logits + log_softmax": lambda: _naive_logps(model, *plain).sum().backward(),
            "completion logits + logsumexp": lambda: completion_logps(model, *plain).sum().backward(),
        },
        reps,
    )


def per_row_lever(model, shape: Shape, reps: int) -> dict[str, Any]:
    """Prompts of different lengths: one batch-wide slice from the first completion vs per-row positions."""
    import popalign.modeling.logps as lp

    spread = [16 + (shape.prompt_len * 2 - 16) * i // (shape.batch_size - 1) for i in range(shape.batch_size)]
    plain, _ = _plain_batch(shape, spread)

    def batch_wide():
        original = lp._keeps_positions
        lp._keeps_positions = lambda model: False
        try:
            lp.completion_logps(model, *plain).sum().backward()
        finally:
            lp._keeps_positions = original

    result = _timed_rounds(
        {
            "batch-wide slice": batch_wide,
            "per-row positions": lambda: lp.completion_logps(model, *plain).sum().backward(),
        },
        reps,
    )
    result["prompt_lengths"] = spread
    return result


def prefix_lever(model, shape: Shape, reps: int) -> dict[str, Any]:
    from popalign.modeling.logps import completion_logps
    from popalign.modeling.prefix_sharing import shared_prefix_logps

    plain, shared = _plain_batch(shape, [shape.prompt_len] * shape.batch_size)
    args = (
        shared["input_ids"],
        shared["prompt_lengths"],
        shared["chosen_lengths"],
        shared["rejected_lengths"],
    )
    return _timed_rounds(
        {
            "plain rows": lambda: completion_logps(model, *plain).sum().backward(),
            "prefix sharing": lambda: shared_prefix_logps(model, *args).sum().backward(),
        },
        reps,
    )


def _run_worker(spec: RunSpec) -> dict[str, Any]:
    from benchmarks.train_step import run_config

    row = run_config(spec)
    keep = ("step_s", "cpu_s", "peak_rss_mib", "tokens_per_s", "error")
    return {k: row[k] for k in keep if k in row}


def step_levers(shape: Shape, steps: int, warmup: int) -> dict[str, Any]:
    """torch threads for the whole step, each setting in its own process. (The order of the PoP forwards,
    a memory lever, is measured by :mod:`benchmarks.memory` on a model where it stands out.)"""
    base = {"impl": "popalign", "shape": shape, "steps": steps, "warmup": warmup}
    return {f"threads={n}": _run_worker(RunSpec(name=f"threads-{n}", threads=n, **base)) for n in (1, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5, help="interleaved rounds per micro-lever")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="micro-levers only (no trainer processes)")
    p.add_argument("--steps", type=int, default=5, help="timed steps of the whole-step levers")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch

    from benchmarks.train_step import machine, write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = Shape()
    model = build_model(shape).train()
    report: dict[str, Any] = {"machine": machine(), "threads": torch.get_num_threads()}
    report["completion-only logits"] = logits_lever(model, shape, args.reps)
    report["per-row logits (prompts of 16..128 tokens)"] = per_row_lever(model, shape, args.reps)
    report["prefix sharing (prompt 64, responses 192)"] = prefix_lever(model, shape, args.reps)
    long_prompt = Shape(prompt_len=256, completion_len=128)
    report["prefix sharing (prompt 256, responses 128)"] = prefix_lever(model, long_prompt, args.reps)
    if not args.quick:
        report["whole step"] = step_levers(shape, args.steps, 2)
    report["machine"]["load_average_end"] = list(__import__("os").getloadavg())

    for lever, variants in report.items():
        if lever in ("machine", "threads"):
            continue
        print(lever)
        for name, m in variants.items():
            if isinstance(m, dict) and "error" not in m:
                fields = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float))
                print(f"  {name:<36} {fields}")
            elif isinstance(m, dict):
                print(f"  {name:<36} FAILED {m['error']}")
    write_report(report, args.json, "levers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
