"""``popalign report``: compare evaluated runs side by side in one Markdown and one HTML page."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  popalign report runs/dpo runs/dpo-margin-gt runs/dpo-pop-iter runs/dpo-pop-random -o runs/report
  popalign report runs/*/eval --title "LLaMA3.2-3b, UltraFeedback" -o report
  popalign report runs/a runs/b --name vanilla --name pop -o report

Each RUN_DIR is a run folder with an eval/ folder inside (from popalign eval) or an evaluation folder
itself. Writes OUT/report.md (plots beside it) and OUT/report.html (plots embedded): tables of
accuracy and margin correlations (Table 1), RewardBench scores (Table 2) and judged win rates (Table 3),
and the cumulative accuracy curves of all runs overlaid (Figure 2).
"""


def register(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser(
        "report",
        help=summary,
        description=summary,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run or evaluation folders")
    p.add_argument("-o", "--out", default="report", help="output folder (default: %(default)s)")
    p.add_argument("--name", action="append", default=None, help="run name in tables (once per RUN_DIR)")
    p.add_argument("--title", default="popalign report", help="page title (default: %(default)s)")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from popalign.errors import PopalignError
    from popalign.eval.report import load_run, write_comparison

    if args.name and len(args.name) != len(args.runs):
        raise PopalignError(f"--name was given {len(args.name)} times for {len(args.runs)} runs")
    names = args.name or [None] * len(args.runs)
    runs = [load_run(path, name) for path, name in zip(args.runs, names, strict=True)]
    if len({r.name for r in runs}) != len(runs):
        raise PopalignError("two runs share a name (folder name); pass --name once per run")
    written = write_comparison(runs, args.out, title=args.title)
    print(f"wrote {written['markdown']} and {written['html']} ({len(runs)} runs)")
    return 0
