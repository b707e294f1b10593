"""``popalign demo``: the main job, what ``make demo`` runs: ``popalign reproduce`` at its default size.

SFT, the paper's six methods, four controls and the oracle-margin positive control on the testbed task, five
seeds, both evaluations and the report of which claims hold; minutes on two CPU cores. A rerun resumes
where an interrupted one stopped.
"""

from __future__ import annotations

import argparse

EPILOG = """examples:
  popalign demo                         # writes runs/reproduce/report/report.html and report.md
  popalign demo --out runs/my-demo      # somewhere else
  popalign reproduce --help             # the same job with every setting (presets, sweeps, seeds)
"""


def register(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser(
        "demo",
        help=summary,
        description=summary + ": popalign reproduce at its default size.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/reproduce", help="output folder (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from popalign.cli.reproduce import print_outcome
    from popalign.config import load_config
    from popalign.testbed.reproduce import reproduce
    from popalign.testbed.settings import ReproduceConfig

    overrides = [f"output_dir={args.out}", f"progress={not args.no_progress}"]
    print_outcome(reproduce(load_config(ReproduceConfig, None, overrides)))
    return 0
