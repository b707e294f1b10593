"""``popalign probe``: is PoP worth it for my data? Reward heads on a frozen model's features, cross-fitted.

Heavy imports happen inside :func:`run`, so ``popalign --help`` stays fast.
"""

from __future__ import annotations

import argparse

from popalign.cli._data_options import add_data_options, data_spec

EPILOG = """examples:
  popalign probe ../shared/data/ultrafeedback-binarized-sample/train.jsonl \\
      ../shared/data/ultrafeedback-binarized-sample/test.jsonl -o runs/probe
  popalign probe prefs.jsonl --model ./runs/sft/final --folds 5 --seeds 20 -o runs/probe
  popalign probe prefs.jsonl head.kind=mlp pop.k=4 features.torch_threads=2 -o runs/probe-mlp
  popalign probe --help-config             every key=value setting, its default and what it does

Several DATA files are stacked into one table (ids prefixed by each file's name). Features are cached
under <cache root>/probe/ (--cache-dir is features.cache_dir), so a rerun only trains the heads.
Writes DIR/report.md, report.html, results.json, cumulative_accuracy.png, predictions.npz, config.yaml.
See docs/probe.md.
"""


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    p = subparsers.add_parser(
        "probe",
        help=summary,
        description="Train reward heads with every reward-model objective (BT, margins, SBT, PoP) on a "
        "frozen model's features, score every row out of fold, and say whether PoP beats BT on this data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", metavar="DATA", nargs="*", help="preference files or folders (stacked)")
    add_data_options(p)
    p.add_argument("--model", default=None, help="the frozen model (model=; default smollm2-135m-instruct)")
    p.add_argument("--folds", type=int, default=None, help="cross-fitting folds (folds=; default 5)")
    p.add_argument("--seeds", type=int, default=None, help="seeds (seeds=; default 20)")
    p.add_argument("-o", "--output", default="runs/probe", metavar="DIR", help="default: %(default)s")
    p.add_argument("--help-config", action="store_true", help="list every key=value setting and exit")
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _split_overrides(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """DATA paths and ``key=value`` settings arrive in one positional list; ``=`` tells them apart."""
    items = [*args.data, *args.overrides]
    return [x for x in items if "=" not in x], [x for x in items if "=" in x]


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from popalign.config import describe_config, load_config
    from popalign.data.load import load_preferences
    from popalign.data.schema import concat_tables
    from popalign.errors import PopalignError
    from popalign.probe.config import ProbeConfig
    from popalign.probe.run import run_probe

    if args.help_config:
        print(describe_config(ProbeConfig))
        return 0
    paths, overrides = _split_overrides(args)
    if not paths:
        raise PopalignError("popalign probe: give at least one DATA file or folder")
    flags = {"model": args.model, "folds": args.folds, "seeds": args.seeds}
    overrides += [f"{k}={v}" for k, v in flags.items() if v is not None]
    cfg = load_config(ProbeConfig, None, overrides)
    tables = []
    for path in paths:
        table, report = load_preferences(data_spec(args, path))
        if report.rows_skipped or report.notes:
            print(report.summary())
        tables.append(table)
    stems = [Path(p).stem for p in paths]
    prefixes = stems if len(set(stems)) == len(stems) else [f"{i}-{s}" for i, s in enumerate(stems)]
    summary = run_probe(concat_tables(tables, prefixes), cfg, args.output)
    out = Path(args.output)
    print(f"wrote {out / 'report.md'}, report.html, results.json")
    for r in summary["contrasts"]:
        if r["family"] == "primary":
            diff = (
                ""
                if r["verdict"] == "not run"
                else f" {r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
            )
            print(f"  {r['id']}: {r['verdict']}{diff}")
    return 0
