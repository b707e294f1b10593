"""``popalign data``: look at preference datasets before training on them.

Heavy imports (numpy, pyarrow, datasets, matplotlib) happen inside the command functions, so that
``popalign --help`` stays fast.
"""

from __future__ import annotations

import argparse

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


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "data",
        help=summary,
        description="Inspect preference datasets.",
        epilog="examples:\n  popalign data inspect ../shared/data/ultrafeedback-binarized-sample\n",
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
    inspect.add_argument("--split", default="train", help="split of a folder or Hub dataset (default: train)")
    inspect.add_argument(
        "--columns",
        default="",
        metavar="MAP",
        help="column mapping TARGET=SOURCE,... (dotted SOURCE reaches nested fields), "
        "or a YAML file with a columns: (or data: columns:) mapping",
    )
    inspect.add_argument(
        "--tie-policy",
        choices=("error", "skip", "keep"),
        default="error",
        help="unordered pairs with equal scores (default: error)",
    )
    inspect.add_argument(
        "--empty-replies",
        choices=("keep", "error"),
        default="keep",
        help="empty chosen/rejected replies: keep and count them (default), or treat as bad rows",
    )
    inspect.add_argument(
        "--skip-bad-rows", action="store_true", help="skip bad rows and report them by reason"
    )
    inspect.add_argument(
        "--limit", type=int, default=None, metavar="N", help="read only the first N valid rows"
    )
    inspect.add_argument("--plot", default=None, metavar="PNG", help="write a margin histogram image here")
    inspect.add_argument("--json", default=None, metavar="FILE", help="write the statistics as JSON here")
    inspect.set_defaults(func=run_inspect)
    parser.set_defaults(func=lambda args: _no_subcommand(parser))


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _columns(text: str) -> dict[str, str]:
    """``--columns``: either ``a=b,c=d`` or a YAML file holding ``columns:`` (or a bare mapping)."""
    from pathlib import Path

    from popalign.data.load import parse_column_map
    from popalign.errors import PopalignError

    if text.endswith((".yaml", ".yml")) and "=" not in text:
        import yaml

        from popalign.data.validate import check_column_targets

        try:
            data = yaml.safe_load(Path(text).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise PopalignError(f"--columns {text}: cannot read the YAML file: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("data"), dict) and "columns" in data["data"]:
            data = data["data"]  # a run config: data.columns
        mapping = data.get("columns", data) if isinstance(data, dict) else None
        if not isinstance(mapping, dict):
            raise PopalignError(f"--columns {text}: expected a columns: mapping of target: source")
        mapping = {str(k): str(v) for k, v in mapping.items()}
        check_column_targets(mapping)
        return mapping
    return parse_column_map(text)


def run_inspect(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from popalign.data.inspect import format_stats, plot_margin_histogram, preference_stats
    from popalign.data.load import DataSpec, load_preferences
    from popalign.errors import PopalignError
    from popalign.io import atomic_write_json

    spec = DataSpec(
        path=args.path,
        split=args.split,
        columns=_columns(args.columns),
        tie_policy=args.tie_policy,
        on_error="skip" if args.skip_bad_rows else "raise",
        empty_replies=args.empty_replies,
        limit=args.limit,
    )
    table, report = load_preferences(spec)
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
