"""``popalign data``: look at preference datasets before training on them.

Heavy imports (numpy, pyarrow, datasets, matplotlib) happen inside the command functions, so that
``popalign --help`` stays fast.
"""

from __future__ import annotations

import argparse

from popalign.cli._data_options import add_data_options, data_spec

INSPECT_EPILOG = """examples:
  popalign data inspect ../shared/data/ultrafeedback-binarized-sample
  popalign data inspect ../shared/data/ultrafeedback-binarized-sample --split test --plot margins.png
  popalign data inspect tests/fixtures/data/unordered_pairs.csv --tie-policy keep --json stats.json
  popalign data inspect tests/fixtures/data/renamed_columns.jsonl \\
      --columns prompt=question,chosen=good,rejected=bad,score_chosen=rating.good,score_rejected=rating.bad
  popalign data inspect tests/fixtures/data/with_bad_rows.jsonl --skip-bad-rows

Accepted inputs: .jsonl .json .parquet .csv files, datasets.save_to_disk folders, folders holding
<split>.jsonl (or .json/.parquet/.csv), and hub:owner/name. See docs/data_formats.md.
"""


SPLIT_EPILOG = """examples:
  popalign data split prefs.jsonl -o data/prefs --test-fraction 0.1
  popalign data split prefs.csv -o data/prefs --test-fraction 0.2 --by row --seed 3 --tie-policy skip

Writes DIR/train.jsonl and DIR/test.jsonl in popalign's normalised layout (id, prompt, chosen, rejected,
scores) and DIR/split.json (settings, sizes, fingerprints). Train on DIR, evaluate on DIR --split test.
"""


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "data",
        help=summary,
        description="Inspect preference datasets, and cut them into train and test.",
        epilog="examples:\n  popalign data inspect ../shared/data/ultrafeedback-binarized-sample\n"
        "  popalign data split prefs.jsonl -o data/prefs --test-fraction 0.1\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    inspect = sub.add_parser(
        "inspect",
        help="rows, schema, ties, score and margin statistics, a margin histogram, text lengths",
        description="Load a preference dataset exactly as training would and print what is in it.",
        epilog=INSPECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument("path", help="file, folder, or hub:owner/name")
    add_data_options(inspect)
    inspect.add_argument("--plot", default=None, metavar="PNG", help="write a margin histogram image here")
    inspect.add_argument("--json", default=None, metavar="FILE", help="write the statistics as JSON here")
    inspect.set_defaults(func=run_inspect)

    split = sub.add_parser(
        "split",
        help="cut a preference file into train.jsonl and test.jsonl, one prompt never on both sides",
        description="Cut a preference dataset into train and test, grouped by prompt, reproducibly.",
        epilog=SPLIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    split.add_argument("path", metavar="DATA", help="file, folder, or hub:owner/name")
    split.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for train/test.jsonl")
    split.add_argument(
        "--test-fraction", type=float, default=0.1, help="share of rows for test (default: %(default)s)"
    )
    split.add_argument(
        "--by",
        choices=("prompt", "row"),
        default="prompt",
        help="keep each prompt's rows together (default), or split rows independently",
    )
    split.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    add_data_options(split)
    split.set_defaults(func=run_split)
    parser.set_defaults(func=lambda args: _no_subcommand(parser))


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_inspect(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from popalign.data.inspect import format_stats, plot_margin_histogram, preference_stats
    from popalign.data.load import load_preferences
    from popalign.errors import PopalignError
    from popalign.io import atomic_write_json

    table, report = load_preferences(data_spec(args, args.path))
    stats = preference_stats(table)
    print(report.summary())
    print()
    print(format_stats(stats))
    if args.plot:
        if not table.has_scores:
            raise PopalignError(f"--plot: {report.source} has no scores, so there are no margins to plot")
        plot_margin_histogram(table.margins, args.plot, title=f"Margins of {Path(table.source).name}")
        print(f"\nwrote {args.plot}")
    if args.json:
        atomic_write_json(args.json, {"report": dataclasses.asdict(report), "stats": stats})
        print(f"wrote {args.json}")
    return 0


def run_split(args: argparse.Namespace) -> int:
    from popalign.data.load import load_preferences
    from popalign.data.split import format_split, split_table, write_split

    table, report = load_preferences(data_spec(args, args.path))
    print(report.summary())
    info = write_split(table, split_table(table, args.test_fraction, args.by, args.seed), args.output)
    print(format_split(info, args.output))
    return 0
