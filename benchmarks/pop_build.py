"""Time and memory of the PoP builder on synthetic UltraFeedback-like margins.

    python benchmarks/pop_build.py [--n 1000000] [--k 2] [--repeats 5] [--json out.json]

Each strategy runs in its own process so that its peak RSS is its own: the process generates the
margins (scores on a 0.5 grid, about 11% ties), records its RSS, then times ``build_pop`` ``--repeats``
times and reports the median. Several ``--n`` values show how time and memory grow with the input.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time


def synthetic_margins(n: int, seed: int = 0):
    """Margins ``score_chosen - score_rejected`` shaped like UltraFeedback's: 0.5 steps, ~11% ties."""
    import numpy as np

    rng = np.random.default_rng(seed)
    score_rejected = rng.integers(2, 19, n) / 2.0  # 1.0 .. 9.0
    half_steps = rng.geometric(0.3, n)  # mostly small gaps, a long tail, like the real data
    half_steps[rng.random(n) < 0.11] = 0
    score_chosen = np.minimum(score_rejected + half_steps / 2.0, 10.0)
    return score_chosen - score_rejected


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def worker(strategy: str, n: int, k: float, repeats: int) -> dict:
    from popalign.pop.build import PoPSpec, build_pop

    margins = synthetic_margins(n)
    baseline = _rss_mib()
    spec = PoPSpec(strategy=strategy, k=k)
    times, pairs = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        pairs = build_pop(margins, spec)
        times.append(time.perf_counter() - start)
    return {
        "strategy": strategy,
        "n": n,
        "k": k,
        "ties": float((margins == 0).mean()),
        "pairs": len(pairs),
        "target": pairs.meta["counts"]["target"],
        "pairs_missing": pairs.meta["shortfall"]["pairs_missing"],
        "median_s": statistics.median(times),
        "min_s": min(times),
        "repeats": repeats,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": _rss_mib(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=[1_000_000], help="preferences (several allowed)")
    parser.add_argument("--k", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--strategies", nargs="+", default=["iterative", "random"])
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.strategies[0], args.n[0], args.k, args.repeats)))
        return 0
    results = []
    for n in args.n:
        for strategy in args.strategies:
            cmd = [sys.executable, __file__, "--worker", "--strategies", strategy, "--n", str(n)]
            cmd += ["--k", str(args.k), "--repeats", str(args.repeats)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results.append(json.loads(done.stdout))
    header = f"{'strategy':<10} {'n':>10} {'k':>4} {'pairs':>10} {'target':>10} {'median s':>9} {'min s':>7}"
    header += f" {'peak RSS MiB':>13} {'+ over start':>13}"
    print(header)
    for r in results:
        print(
            f"{r['strategy']:<10} {r['n']:>10,} {r['k']:>4g} {r['pairs']:>10,} {r['target']:>10,}"
            f" {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['peak_rss_mib']:>13.0f}"
            f" {r['peak_rss_mib'] - r['baseline_rss_mib']:>13.0f}"
        )
    print(f"median of {args.repeats} runs; python {platform.python_version()}, {platform.machine()}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"results": results, "python": platform.python_version()}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
