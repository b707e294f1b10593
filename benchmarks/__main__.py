"""``python -m benchmarks [COMMAND] [options]`` from the repository root.

Commands:
  table     (default) TRL vs popalign step time, tokens/s, peak memory, ratios and targets; JSON too
  levers    each performance lever measured before and after
  scaling   TRL and popalign step time as sequence length and batch size grow
  memory    peak memory of DPO-PoP vs DPO on a model large enough for a model copy to stand out
  profile   the torch profiler over real trainer steps of the shared configuration (TRL or popalign)
  heads     large vocabularies and long sequences: TRL vs popalign with and without the chunked LM head
  pop       the PoP builder alone (benchmarks/pop_build.py)
  margin-cache  what loss.margin_refresh_steps saves (hit rates) and changes (tiny runs, --data DIR)
  gpu       the H200 comparison (benchmarks/gpu_h200.py); --dry-run runs its code path on a CPU
  real      real lengths: TRL vs popalign padded and padding-free on the UltraFeedback sample, SmolLM2
  real-study  seconds per step of each arm of the cross-fitted real-model study, its projected wall time

Examples:
  python -m benchmarks
  python -m benchmarks --steps 5 --configs trl-dpo popalign-dpo
  python -m benchmarks levers --quick
  python -m benchmarks gpu --dry-run
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and not argv[0].startswith("-") else "table"
    if command == "table" and argv[:1] in (["-h"], ["--help"]):
        print(__doc__)  # the commands, before the table's own options
    if command == "table":
        from benchmarks.train_step import main as run
    elif command == "levers":
        from benchmarks.levers import main as run
    elif command == "scaling":
        from benchmarks.scaling import main as run
    elif command == "pop":
        from benchmarks.pop_build import main as run
    elif command == "memory":
        from benchmarks.memory import main as run
    elif command == "profile":
        from benchmarks.profile_step import main as run
    elif command == "heads":
        from benchmarks.heads import main as run
    elif command == "margin-cache":
        from benchmarks.margin_cache import main as run
    elif command == "real":
        from benchmarks.real import main as run
    elif command == "real-study":
        from benchmarks.real_study import main as run
    elif command == "gpu":
        from benchmarks.gpu_h200 import main as run
    else:
        print(__doc__, file=sys.stderr)
        print(f"unknown command {command!r}", file=sys.stderr)
        return 2
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
