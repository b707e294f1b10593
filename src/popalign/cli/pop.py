"""``popalign pop``: build preference-over-preference (PoP) datasets, import people's PoP labels, ask an
LLM judge for them, and measure how far labels agree."""

from __future__ import annotations

import argparse
from pathlib import Path

from popalign.cli._data_options import add_data_options, data_spec

DEFAULT_FILE = "pop_pairs.parquet"

EPILOG = """examples:
  popalign pop build ../data/train.jsonl --strategy iterative -k 2 -o runs/pop
  popalign pop build ../data --split train --strategy random -k 4 --noise 0.1 -o runs/pop/random.parquet
  popalign pop import-labels labels.csv --prefs ../data/train.jsonl -o runs/pop/people.parquet
  popalign pop judge ../data/train.jsonl --endpoint http://127.0.0.1:8000/v1 --model NAME -o judge.jsonl
  popalign pop agreement judge.jsonl.judge.jsonl people.jsonl --prefs ../data/train.jsonl

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
    _add_sampling_arguments(b)
    b.add_argument(
        "--noise", type=float, default=0.0, help="probability of flipping each label (default: %(default)g)"
    )
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
    _register_judge(pop_sub)
    _register_agreement(pop_sub)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """The PoPSpec fields that choose pairs, shared by ``build`` and ``judge``."""
    p.add_argument(
        "--strategy", choices=("iterative", "random"), default="iterative", help="default: %(default)s"
    )
    p.add_argument(
        "-k", type=float, default=2.0, help="pairs per preference: target k * N (default: %(default)g)"
    )
    p.add_argument(
        "--min-gap", type=float, default=1.0, help="smallest margin gap within a pair (default: %(default)g)"
    )
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")


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


JUDGE_EPILOG = """examples:
  popalign pop judge ../data/train.jsonl --endpoint http://127.0.0.1:8000/v1 \\
      --model meta-llama/Llama-3.1-8B-Instruct --strategy iterative -k 2 -o runs/judge/labels.jsonl
  popalign pop judge ../data/train.jsonl --limit 100 --strategy random -k 2 \\
      --endpoint https://api.example.com/v1 --model judge-large --api-key-env JUDGE_API_KEY \\
      --price-prompt 0.15 --price-completion 0.6 -o runs/judge/labels.jsonl

Each pair is asked in both presentation orders. -o gets the label file (id_a, id_b, stronger) that
`popalign train pop_labels=FILE` and `popalign pop import-labels` read; beside it <FILE>.judge.jsonl
records every pair with both answers, <FILE>.judge.json the counts, tokens and cost, and
<FILE>.judge-cache.sqlite every answer (a rerun asks only what is missing).
"""

AGREEMENT_EPILOG = """examples:
  popalign pop agreement runs/judge/labels.jsonl.judge.jsonl --prefs ../data/train.jsonl
  popalign pop agreement runs/judge/labels.jsonl.judge.jsonl people.jsonl --prefs ../data/train.jsonl

LABELS and OTHER are label files (id_a, id_b, stronger), or a judge's records file (which also has
ties and the answer in each order). With scores: agreement with the score-derived labels by margin
gap. With OTHER: Cohen's kappa on the pairs both judged. With a records file: position consistency.
"""

JUDGE_OUTPUTS = {"records": ".judge.jsonl", "summary": ".judge.json", "cache": ".judge-cache.sqlite"}


def _register_judge(pop_sub: argparse._SubParsersAction) -> None:
    import dataclasses
    import typing

    from popalign.pop.judge import JudgeSpec

    j = pop_sub.add_parser(
        "judge",
        help="PoP labels from an LLM judge behind any OpenAI-compatible server",
        description="Ask an LLM judge which of two preferences is the stronger one, in both orders.",
        epilog=JUDGE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    j.add_argument("data", metavar="DATA", help="preference file or folder (see popalign data --help)")
    add_data_options(j)
    _add_sampling_arguments(j)
    group = j.add_argument_group("judge options (the fields of JudgeSpec)")
    hints = typing.get_type_hints(JudgeSpec)
    for f in dataclasses.fields(JudgeSpec):
        flag, tp, text = "--" + f.name.replace("_", "-"), hints[f.name], f.metadata["help"]
        if tp is bool:
            group.add_argument(flag, action="store_true", help=text)
            continue
        kwargs: dict = {"default": f.default, "help": text + (" (default: %(default)s)" if f.default else "")}
        if typing.get_origin(tp) is typing.Literal:
            kwargs["choices"] = typing.get_args(tp)
        else:
            kwargs["type"] = next(t for t in (typing.get_args(tp) or (tp,)) if t is not type(None))
        if f.name in ("endpoint", "model"):
            kwargs.update(required=True, default=None, help=text)
        group.add_argument(flag, **kwargs)
    j.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="label file (.jsonl, .csv, .parquet)"
    )
    j.add_argument("--no-progress", action="store_true", help="no progress bar")
    j.set_defaults(func=run_judge)


def judge_outputs(out: str | Path) -> dict[str, Path]:
    """The files a judge run writes beside its label file ``out``."""
    out = Path(out)
    return {name: out.with_name(out.name + suffix) for name, suffix in JUDGE_OUTPUTS.items()}


def run_judge(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from popalign.errors import PopalignError
    from popalign.io import atomic_open, atomic_write_json
    from popalign.pop.build import PoPSpec
    from popalign.pop.judge import JudgeSpec, judge_pairs, label_rows, record_rows
    from popalign.pop.labels import LABEL_FORMATS, write_labels

    out = Path(args.output)
    if out.suffix.lower() not in LABEL_FORMATS:
        raise PopalignError(f"-o {out}: the label file must end in {', '.join(LABEL_FORMATS)}")
    spec = JudgeSpec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(JudgeSpec)})
    spec.validate()
    pop = PoPSpec(strategy=args.strategy, k=args.k, min_gap=args.min_gap, seed=args.seed)
    pop.validate()
    files = judge_outputs(out)
    table, _ = _load_table(args, args.data)
    verdicts, summary = judge_pairs(table, pop, spec, spec.cache or files["cache"], not args.no_progress)
    rows = label_rows(verdicts, table, pop, spec)
    summary["label_rows"] = len(rows)
    with atomic_open(files["records"], "w", encoding="utf-8") as fh:
        for rec in record_rows(verdicts, table):
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    atomic_write_json(files["summary"], summary)
    write_labels(rows, out)
    print(format_judge_summary(summary))
    print(f"wrote {out} ({len(rows)} labels), {files['records'].name} and {files['summary'].name}")
    return 0


def format_judge_summary(s: dict) -> str:
    """A few lines: pairs and verdicts, questions asked and cached, position bias, tokens and cost."""
    p, q, pos, t = s["pairs"], s["questions"], s["position"], s["tokens"]
    lines = [
        f"pairs judged: {p['judged']:,} (consistent {p['consistent']:,}, inconsistent "
        f"{p['inconsistent']:,}, unparseable {p['unparseable']:,}); ties {p['ties']:,}; "
        f"with a stronger side {p['with_stronger_side']:,}",
        f"questions: {q['asked']:,} asked, {q['from_cache']:,} from the cache",
        "position: "
        + (
            "n/a"
            if pos is None
            else f"{_pct(pos['consistent'])} of pairs consistent across orders; the first shown picked in "
            f"{_pct(pos['picked_first_shown'])} of {pos['answers_a_or_b']:,} a/b answers"
        ),
        f"tokens asked now: {t['prompt']:,} prompt + {t['completion']:,} completion "
        f"(from the cache: {t['prompt_cached']:,} + {t['completion_cached']:,})",
    ]
    if s["cost"] is not None:
        lines.append(f"cost of this run: {s['cost']:.4f} (at the prices given, per million tokens)")
    return "\n".join(lines)


def _register_agreement(pop_sub: argparse._SubParsersAction) -> None:
    a = pop_sub.add_parser(
        "agreement",
        help="agreement of PoP labels with the scores, with other labels, and between orders",
        description="Agreement of PoP labels with score-derived labels, with another label file "
        "(Cohen's kappa), and between presentation orders.",
        epilog=AGREEMENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("labels", metavar="LABELS", help="label or judge records file")
    a.add_argument("other", metavar="OTHER", nargs="?", help="a second label file on the same pairs")
    a.add_argument("--prefs", required=True, metavar="DATA", help="the preference dataset the ids refer to")
    add_data_options(a)
    a.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    a.set_defaults(func=run_agreement)


def run_agreement(args: argparse.Namespace) -> int:
    from popalign.io import atomic_write_json
    from popalign.pop.agreement import (
        answer_agreement,
        label_agreement,
        load_judgements,
        position_consistency,
        score_agreement,
    )

    table, _ = _load_table(args, args.prefs)
    first = load_judgements(args.labels, table)
    report: dict = {"labels": args.labels, "verdicts": len(first.verdicts), "no_verdict": first.no_verdict}
    if table.has_scores:
        report["scores"] = score_agreement(first, table.margins)
        if first.answers:
            report["answers_vs_scores"] = answer_agreement(first, table.margins)
    if args.other:
        report["other"] = {"file": args.other, **label_agreement(first, load_judgements(args.other, table))}
    report["position"] = position_consistency(first.orders)
    print(format_agreement(report))
    if args.json:
        atomic_write_json(args.json, report)
    return 0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _score_lines(s: dict, what: str) -> list[str]:
    o = s["overall"]
    lines = [
        f"{what} against the scores: {_pct(o['share'])} of {o['decided']:,} decided agree "
        f"(95% CI {_pct(o['ci'][0])}-{_pct(o['ci'][1])}: {o['call']}); {o['ties']} ties, "
        f"{s['equal_margins']} of equal margins left out"
    ]
    if s["by_gap"]:
        lines.append(f"  {'margin gap':>12} {'decided':>7} {'ties':>5} {'agree':>7}  CI (Bonferroni)   call")
    for b in s["by_gap"]:
        lo, hi = b["gap"]
        gap = f"{lo:g}" if lo == hi else f"{lo:.3g}-{hi:.3g}"
        ci = f"{_pct(b['ci'][0])}-{_pct(b['ci'][1])}"
        lines.append(
            f"  {gap:>12} {b['decided']:>7} {b['ties']:>5} {_pct(b['share']):>7}  {ci:<16}  {b['call']}"
        )
    return lines


def format_agreement(r: dict) -> str:
    """The agreement report as text: the score curve by gap, kappa, position consistency."""
    lines = [f"{r['labels']}: {r['verdicts']:,} pairs with a verdict, {r['no_verdict']:,} without"]
    for key, what in (("scores", "verdicts"), ("answers_vs_scores", "single answers (each order apart)")):
        if key in r:
            lines += _score_lines(r[key], what)
    if "other" in r:
        o = r["other"]
        kappa = "n/a" if o["kappa"] is None else f"{o['kappa']:.3f}"
        lines.append(
            f"against {o['file']}: {o['shared_pairs']:,} shared pairs, agree {_pct(o['agree'])}, "
            f"Cohen's kappa {kappa}"
        )
    p = r["position"]
    if p is not None:
        lines.append(
            f"position: {_pct(p['consistent'])} of {p['pairs']:,} pairs consistent across orders; the first "
            f"shown picked in {_pct(p['picked_first_shown'])} of answers "
            f"(95% CI {_pct(p['picked_first_ci'][0])}-{_pct(p['picked_first_ci'][1])})"
        )
    return "\n".join(lines)
