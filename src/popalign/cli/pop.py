"""``popalign pop``: build preference-over-preference (PoP) datasets, or import people's PoP labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from popalign.cli._data_options import add_data_options, data_spec

DEFAULT_FILE = "pop_pairs.parquet"

EPILOG = """examples:
  popalign pop build ../data/train.jsonl --strategy iterative -k 2 -o runs/pop
  popalign pop build ../data --split train --strategy random -k 4 --noise 0.1 -o runs/pop/random.parquet
  popalign pop import-labels labels.csv --prefs ../data/train.jsonl -o runs/pop/people.parquet

A pair file has one row per pair (strong_id, weak_id, flipped) referring to the preference dataset by id;
settings and statistics go to <pair file>.meta.json beside it.
"""

BUILD_EPILOG = """examples:
  popalign pop build ../data/train.jsonl -o runs/pop                      # iterative, k=2, min gap 1
  popalign pop build ../data/train.jsonl --strategy random -k 4 -o runs/pop/random.parquet
  popalign pop build prefs.csv --columns id=uid,score_chosen=s1,score_rejected=s2 -o pop.jsonl
  popalign pop build ../data/train.jsonl --noise 0.3 --seed 7 -o runs/pop/noisy.parquet

iterative: each preference against k weaker ones (margin at least --min-gap lower), drawn at random;
random: uniformly random pairs with a gap of at least --min-gap, labelled by their margins.
-o takes a .parquet or .jsonl file, or a folder (then the file is pop_pairs.parquet in it).
"""

IMPORT_EPILOG = """examples:
  popalign pop import-labels labels.jsonl --prefs ../data/train.jsonl -o runs/pop/people.parquet
  popalign pop import-labels judge.csv --prefs prefs.parquet --columns id=uid -o runs/pop

A label file (.jsonl, .csv or .parquet, or a datasets save_to_disk folder such as
`popalign label export --format hf` writes) has one row per judged pair: id_a, id_b and stronger
("a", "b" or the id of the stronger preference). The preference dataset needs no scores.
"""


def register(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser(
        "pop",
        help=summary,
        description=summary,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=lambda args: _print_help(p))
    pop_sub = p.add_subparsers(dest="pop_command", metavar="SUBCOMMAND")

    b = pop_sub.add_parser(
        "build",
        help="build PoP pairs from scored preferences (iterative or random sampling)",
        description="Build PoP pairs from the score margins of a preference dataset (paper Section 4.1).",
        epilog=BUILD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("data", metavar="DATA", help="preference file or folder (see popalign data --help)")
    add_data_options(b)
    b.add_argument(
        "--strategy", choices=("iterative", "random"), default="iterative", help="default: %(default)s"
    )
    b.add_argument(
        "-k", type=float, default=2.0, help="pairs per preference: target k * N (default: %(default)g)"
    )
    b.add_argument(
        "--min-gap", type=float, default=1.0, help="smallest margin gap within a pair (default: %(default)g)"
    )
    b.add_argument(
        "--noise", type=float, default=0.0, help="probability of flipping each label (default: %(default)g)"
    )
    b.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    b.add_argument(
        "--fill-shortfall",
        action="store_true",
        help="iterative: top up with random valid pairs to reach k * N pairs (recorded in the sidecar)",
    )
    _add_output_argument(b)
    b.set_defaults(func=run_build)

    i = pop_sub.add_parser(
        "import-labels",
        help="convert PoP labels from people or a judge into a pair file",
        description="Convert (id_a, id_b, stronger) PoP labels into a pair file, "
        "checked against the preference dataset.",
        epilog=IMPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument(
        "labels",
        metavar="LABELS",
        help="label file (.jsonl, .csv or .parquet) or a datasets save_to_disk folder",
    )
    i.add_argument("--prefs", required=True, metavar="DATA", help="the preference dataset the ids refer to")
    add_data_options(i)
    _add_output_argument(i)
    i.set_defaults(func=run_import_labels)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _add_output_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help=f"pair file (.parquet or .jsonl) or folder (then {DEFAULT_FILE} in it)",
    )


def pair_file(out: str | Path) -> Path:
    """The pair file an ``-o`` value names: itself for ``.parquet``/``.jsonl``, else a file in that folder."""
    out = Path(out)
    if out.suffix.lower() in (".parquet", ".jsonl") and not out.is_dir():
        return out
    return out / DEFAULT_FILE


def _load_table(args: argparse.Namespace, path: str):
    from popalign.data.load import load_preferences

    table, report = load_preferences(data_spec(args, path))
    print(report.summary())
    return table, report


def run_build(args: argparse.Namespace) -> int:
    from popalign.pop.build import PoPSpec, build_pop_for_table, check_pairs, shortfall_warning
    from popalign.pop.pairs import sidecar_path
    from popalign.pop.stats import format_summary

    spec = PoPSpec(
        strategy=args.strategy,
        k=args.k,
        min_gap=args.min_gap,
        noise=args.noise,
        seed=args.seed,
        fill_shortfall=args.fill_shortfall,
    )
    spec.validate()  # before reading a large dataset
    table, _ = _load_table(args, args.data)
    pairs = build_pop_for_table(table, spec)
    print(format_summary(pairs.meta))
    warning = shortfall_warning(pairs.meta)
    if warning:
        print(warning)
    check_pairs(pairs, table.source)  # before writing: an empty pair file helps no one
    out = pair_file(args.output)
    pairs.save(out, table)
    print(f"wrote {out} and {sidecar_path(out).name}")
    return 0


def run_import_labels(args: argparse.Namespace) -> int:
    from popalign.pop.labels import load_pop_labels
    from popalign.pop.pairs import sidecar_path
    from popalign.pop.stats import format_summary

    table, _ = _load_table(args, args.prefs)
    pairs = load_pop_labels(args.labels, table)
    out = pair_file(args.output)
    pairs.save(out, table)
    print(format_summary(pairs.meta))
    print(f"wrote {out} and {sidecar_path(out).name}")
    return 0
