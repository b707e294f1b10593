"""What ``loss.margin_refresh_steps`` saves and what it changes.

    python -m benchmarks margin-cache                     # hit rates on UltraFeedback-like PoP pairs
    python -m benchmarks margin-cache --data DIR          # + tiny training runs: results with and without

Saving: the trainer runs a weak pair through the target only when its preference has no cached target
rewards younger than ``N`` optimiser steps; the fraction of weak forwards saved (the hit rate) depends on
how often a weak preference recurs within ``N`` steps, which this script replays exactly: the PoP builder
on synthetic UltraFeedback-like margins, the Trainer's per-epoch shuffles, the cache's rule. No model runs.

Effect: with ``--data`` (a preference folder with train/test splits, e.g. the UltraFeedback sample) it
trains the tiny random Llama with ``dpo-pop-iter`` for each ``N`` (same seed, same data) and reports the
training loss, the mean PoP margin used, the measured hit rate and test accuracy / Spearman of the
implicit reward margins (the real ``popalign eval`` scorer).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

REFRESH = (1, 10, 100, 1000, 10**9)


def replay_hit_rate(
    weak: Any, batch: int, epochs: int, refresh_steps: int, seed: int = 0
) -> tuple[float, int]:
    """Fraction of weak lookups served from the cache, and the optimiser steps replayed.

    ``weak``: the weak preference of every PoP example. Each epoch shuffles the examples (as the
    Trainer's random sampler does) and cuts them into steps of ``batch`` examples.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    computed: dict[int, int] = {}
    hits = lookups = step = 0
    for _ in range(epochs):
        order = rng.permutation(len(weak))
        for start in range(0, len(order), batch):
            # The trainer looks the whole batch up before storing what it computed, as here.
            index = weak[order[start : start + batch]].tolist()
            fresh = [i in computed and step - computed[i] < refresh_steps for i in index]
            hits += sum(fresh)
            lookups += len(index)
            for i, ok in zip(index, fresh, strict=True):
                if not ok:
                    computed[i] = step
            step += 1
    return hits / max(lookups, 1), step


def hit_rates(n_values: list[int], k: float, batch: int, epochs: int) -> list[dict[str, Any]]:
    from benchmarks.pop_build import synthetic_margins
    from popalign.pop.build import PoPSpec, build_pop

    rows = []
    for n in n_values:
        for strategy in ("iterative", "random"):
            pairs = build_pop(synthetic_margins(n), PoPSpec(strategy=strategy, k=k))
            for refresh in REFRESH:
                rate, steps = replay_hit_rate(pairs.weak_idx, batch, epochs, refresh)
                rows.append(
                    {
                        "n": n,
                        "strategy": strategy,
                        "pairs": len(pairs),
                        "steps": steps,
                        "refresh_steps": refresh,
                        "hit_rate": rate,
                    }
                )
    return rows


def effect_runs(data: str, refresh_values: list[int], epochs: float, max_length: int) -> list[dict[str, Any]]:
    """Tiny ``dpo-pop-iter`` runs differing only in ``loss.margin_refresh_steps``."""
    import json

    import numpy as np

    from popalign.config import load_config
    from popalign.data.load import load_preferences
    from popalign.eval.discriminative import accuracy
    from popalign.eval.scoring import load_scorer
    from popalign.eval.stats import spearman
    from popalign.train.config import TrainConfig
    from popalign.train.run import run_train

    test, _ = load_preferences(data, split="test", tie_policy="keep")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for refresh in refresh_values:
            out = Path(tmp) / f"refresh-{refresh}"
            cfg = load_config(
                TrainConfig,
                None,
                [
                    "method=dpo-pop-iter",
                    f"data.path={data}",
                    f"output_dir={out}",
                    f"reference.cache_dir={Path(tmp) / 'cache'}",
                    f"tokenize.max_length={max_length}",
                    f"tokenize.max_prompt_length={max_length // 2}",
                    f"training.num_train_epochs={epochs}",
                    "training.per_device_train_batch_size=8",
                    "training.gradient_accumulation_steps=1",
                    "training.learning_rate=1e-3",
                    "training.logging_steps=10",
                    "training.save_steps=100000",
                    "training.report_to=none",
                    "training.progress=false",
                    # One thread: a tiny model gains nothing from two, and loses much on a busy machine.
                    "training.torch_threads=1",
                    f"loss.margin_refresh_steps={refresh}",
                ],
            )
            result = run_train(cfg)
            history = json.loads((out / "trainer_state.json").read_text())["log_history"]
            logged = [h for h in history if "loss" in h]
            scorer, _ = load_scorer(str(out), batch_size=16)
            chosen, rejected = scorer.rewards(test, progress=False)
            predicted = chosen - rejected
            rows.append(
                {
                    "refresh_steps": refresh,
                    "train_loss": result["metrics"]["train_loss"],
                    "mean_margin_used": float(np.mean([h.get("margin/used", np.nan) for h in logged])),
                    "hit_rate": float(np.mean([h.get("margin/cached", 0.0) for h in logged])),
                    "test_accuracy": accuracy(predicted, test.margins),
                    "test_spearman": spearman(predicted, test.margins),
                    "steps": history[-1].get("step") if history else None,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--n", type=int, nargs="+", default=[1000, 60000], help="preferences (UltraFeedback: ~60k)"
    )
    p.add_argument("--k", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=16, help="PoP examples per optimiser step")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument(
        "--data", default=None, help="a preference folder with train/test splits: run the effect study"
    )
    p.add_argument("--effect-refresh", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--effect-epochs", type=float, default=2.0)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from benchmarks.train_step import machine, write_report

    report: dict[str, Any] = {"machine": machine()}
    report["hit_rates"] = hit_rates(args.n, args.k, args.batch, args.epochs)
    print(f"hit rate (weak forwards saved), k={args.k:g}, {args.batch} examples/step, {args.epochs} epochs")
    print(
        f"{'n':>7} {'strategy':<10} {'pairs':>7} {'steps':>6} "
        + " ".join(f"{'N=' + _n(r):>8}" for r in REFRESH)
    )
    for n in args.n:
        for strategy in ("iterative", "random"):
            rows = [r for r in report["hit_rates"] if r["n"] == n and r["strategy"] == strategy]
            print(
                f"{n:>7} {strategy:<10} {rows[0]['pairs']:>7} {rows[0]['steps']:>6} "
                + " ".join(f"{r['hit_rate']:>8.1%}" for r in rows)
            )
    if args.data:
        report["effect"] = effect_runs(args.data, args.effect_refresh, args.effect_epochs, args.max_length)
        print(f"{'N':>6} {'train loss':>10} {'margin':>7} {'hit rate':>8} {'test acc':>8} {'Spearman':>8}")
        for r in report["effect"]:
            print(
                f"{r['refresh_steps']:>6} {r['train_loss']:>10.4f} {r['mean_margin_used']:>7.4f}"
                f" {r['hit_rate']:>8.1%} {r['test_accuracy']:>8.3f} {r['test_spearman']:>8.3f}"
            )
    write_report(report, args.json, "margin_cache")
    return 0


def _n(refresh: int) -> str:
    return "inf" if refresh >= 10**9 else str(refresh)


if __name__ == "__main__":
    sys.exit(main())
