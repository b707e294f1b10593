"""``popalign label``: collect preference-over-preference labels from people with a small web app.

Flask, waitress and SQLAlchemy are imported inside the command functions only, so ``popalign --help``
stays fast and works without the ``label`` extra installed.
"""

from __future__ import annotations

import argparse
import ipaddress
import json

from popalign.cli._data_options import add_data_options, data_spec

# Light: the standard library and popalign.errors only, no web or database library.
from popalign.label.project import DEFAULT_PROJECT, STRATEGIES

EXPORT_FORMATS = ("file", "hf")

EPILOG = """examples:
  popalign label serve --prefs ../data/train.jsonl --db labels.sqlite --strategy random -k 1
  popalign label add-annotator alice --db labels.sqlite            # prints alice's token
  popalign label add-annotator lead --db labels.sqlite --admin     # may see status and export
  popalign label status --db labels.sqlite
  popalign label export --db labels.sqlite -o pop_labels.jsonl
  popalign train method=dpo-pop-random pop_labels=pop_labels.jsonl data.path=../data/train.jsonl

Every command takes --project NAME (default: default): one database holds several projects, each with
its own preferences, settings and annotators.

Annotators open the server's address, sign in with their token and judge pairs of preferences:
in which one is the chosen response more clearly better than the rejected one? See docs/labelling.md.
"""

SERVE_EPILOG = """examples:
  popalign label serve --prefs ../data/train.jsonl --db labels.sqlite
  popalign label serve --prefs ../data --split train --db labels.sqlite --strategy iterative -k 2
  popalign label serve --prefs prefs.parquet --db labels.sqlite --redundancy 3 --port 8080
  popalign label serve --prefs prefs.jsonl --db postgresql+psycopg://user@dbhost/labels --host 0.0.0.0
  popalign label serve --prefs ../data/train.jsonl --db labels.sqlite --guidelines guidelines.md \
      --gold-fraction 0.05 --project pilot --trusted-proxy 127.0.0.1

The first serve of a project fixes its settings (strategy, k, target, ...) in the database; later
serves reuse them (leave the options out) and refuse different ones. --db takes a SQLite file or a
SQLAlchemy URL. Serve on 127.0.0.1 (the default) behind an HTTPS reverse proxy, and name the proxy's
address with --trusted-proxy so that cookies are Secure and forms pass the same-origin check
(docs/labelling.md has an nginx example).
"""

ADD_EPILOG = """examples:
  popalign label add-annotator alice --db labels.sqlite
  popalign label add-annotator alice --db labels.sqlite --reset     # alice lost her token
  popalign label add-annotator lead --db labels.sqlite --admin

The token is printed once; only its hash is stored. Give it to the annotator privately.
"""

EXPORT_EPILOG = """examples:
  popalign label export --db labels.sqlite -o pop_labels.jsonl
  popalign label export --db labels.sqlite -o pop_labels.csv --prefs ../data/train.jsonl   # and check it
  popalign pop import-labels pop_labels.jsonl --prefs ../data/train.jsonl -o runs/pop/people.parquet
  popalign label export --db labels.sqlite --format hf -o pop_labels_hf --skips skips.jsonl

Writes (id_a, id_b, stronger) rows: one per pair with a label; "about the same" gives none; with
several judges per pair the majority decides. Iterative projects export the anchors' wins (the
paper's k weaker preferences per anchor); --all-pairs adds the pairs the candidate won. Gold pairs
are left out. --format hf writes a datasets folder (save_to_disk) with who judged each pair, their
answers and seconds; datasets.load_from_disk and popalign pop import-labels read it. Skipped pairs
never become labels; --skips FILE (.jsonl or .csv) writes them with their reasons.
"""

STATUS_EPILOG = """examples:
  popalign label status --db labels.sqlite
  popalign label status --db labels.sqlite --json status.json
"""


def register(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser(
        "label",
        help=summary,
        description=summary,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=lambda args: _print_help(p))
    label_sub = p.add_subparsers(dest="label_command", metavar="SUBCOMMAND")
    _register_serve(label_sub)

    a = label_sub.add_parser(
        "add-annotator",
        help="create an annotator account and print its token (admin command)",
        description="Create an annotator account and print its secret token.",
        epilog=ADD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("name", metavar="NAME", help="letters, digits, '.', '_' or '-'")
    _add_db(a)
    a.add_argument("--admin", action="store_true", help="may see the status page and export labels")
    a.add_argument("--reset", action="store_true", help="give an existing annotator a new token")
    _add_project(a)
    a.set_defaults(func=run_add_annotator)

    e = label_sub.add_parser(
        "export",
        help="write the PoP label file that `popalign pop` and `popalign train` read",
        description="Write the collected labels as an (id_a, id_b, stronger) PoP label file.",
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_db(e)
    _add_project(e)
    e.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="a .jsonl, .csv or .parquet file; a folder for hf",
    )
    e.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="file",
        help="file: by the suffix of -o (default); hf: a datasets save_to_disk folder",
    )
    e.add_argument("--skips", metavar="FILE", default=None, help="also write the skipped pairs (.jsonl/.csv)")
    e.add_argument("--all-pairs", action="store_true", help="iterative: also the pairs the candidate won")
    e.add_argument("--prefs", metavar="DATA", help="check the file against this preference dataset")
    add_data_options(e)
    e.set_defaults(func=run_export)

    s = label_sub.add_parser(
        "status",
        help="progress, per-annotator counts and agreement",
        description="Show the labelling project's settings, progress, annotators and agreement.",
        epilog=STATUS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_db(s)
    _add_project(s)
    s.add_argument("--json", metavar="FILE", help="also write the status as JSON ('-' for stdout only)")
    s.set_defaults(func=run_status)


def _register_serve(label_sub: argparse._SubParsersAction) -> None:
    s = label_sub.add_parser(
        "serve",
        help="start the labelling web app",
        description="Serve pairs of preferences to annotators and record their PoP labels.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--prefs", required=True, metavar="DATA", help="the preference dataset to label")
    add_data_options(s)
    _add_db(s)
    s.add_argument("--strategy", choices=STRATEGIES, default=None, help=f"default: {STRATEGIES[0]}")
    s.add_argument(
        "-k", type=float, default=None, help="labels per preference (default: 1 random, 2 iterative)"
    )
    s.add_argument("--target", type=int, default=None, help="labels wanted (default: round(k * N))")
    s.add_argument(
        "--min-gap",
        type=float,
        default=None,
        help="with scored data: smallest score-margin gap in a served pair; 0 ignores scores (default: 1)",
    )
    s.add_argument(
        "--max-candidates", type=int, default=None, help="iterative: candidates per anchor (default: 4k)"
    )
    s.add_argument("--redundancy", type=int, default=None, help="annotators per pair (default: 1)")
    s.add_argument(
        "--lease", type=float, default=None, help="seconds a served pair is reserved (default: 600)"
    )
    s.add_argument("--seed", type=int, default=None, help="default: 0")
    s.add_argument(
        "--gold-fraction",
        type=float,
        default=None,
        help="scored data: share of served pairs that are gold pairs with a known answer (default: 0)",
    )
    s.add_argument(
        "--guidelines", metavar="FILE", default=None, help="Markdown shown before the first pair (key G)"
    )
    _add_project(s)
    s.add_argument("--host", default="127.0.0.1", help="default: %(default)s (this machine only)")
    s.add_argument("--port", type=int, default=8000, help="0 picks a free port (default: %(default)s)")
    s.add_argument("--threads", type=int, default=8, help="request threads (default: %(default)s)")
    s.add_argument(
        "--trusted-proxy",
        metavar="ADDR",
        default=None,
        help="the reverse proxy's addresses, comma-separated, or '*': believe their X-Forwarded-* headers",
    )
    s.set_defaults(func=run_serve)


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, metavar="DB", help="SQLite file, or a SQLAlchemy URL")


def _add_project(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--project",
        default=DEFAULT_PROJECT,
        metavar="NAME",
        help="project in the database (default: %(default)s)",
    )


def _existing_db(db: str) -> str:
    from pathlib import Path

    from popalign.errors import PopalignError

    if "://" not in db and not Path(db).is_file():
        raise PopalignError(f"no label database at {db} (popalign label serve creates it)")
    return db


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace) -> int:
    from popalign.label.accounts import list_annotators
    from popalign.label.app import create_app
    from popalign.label.db import display_url
    from popalign.label.project import LabelSettings
    from popalign.label.server import build_context, make_server, server_url

    settings = LabelSettings(
        strategy=args.strategy,
        k=args.k,
        target=args.target,
        min_gap=args.min_gap,
        max_candidates=args.max_candidates,
        redundancy=args.redundancy,
        lease_s=args.lease,
        seed=args.seed,
        gold_fraction=args.gold_fraction,
    )
    ctx = build_context(
        args.db,
        data_spec(args, args.prefs),
        settings,
        threads=args.threads,
        project=args.project,
        guidelines=args.guidelines,
    )
    proj = ctx.project
    server = make_server(create_app(ctx), args.host, args.port, args.threads, args.trusted_proxy)
    url = server_url(server)
    print(f"database: {display_url(str(ctx.store.engine.url))}")
    gold = (
        f", {len(ctx.store.gold)} gold pairs mixed in at {proj.gold_fraction:.0%}" if ctx.store.gold else ""
    )
    print(
        f"project {proj.name}: {proj.strategy} sampling over {proj.preferences:,} preferences, k={proj.k:g}, "
        f"target {proj.target:,}, redundancy {proj.redundancy}{gold}"
    )
    if ctx.guidelines is not None:
        print(f"guidelines: {args.guidelines} (shown before the first pair, and again when they change)")
    if not list_annotators(ctx.store.engine, proj.project_id):
        print(f"no annotators yet: popalign label add-annotator NAME --db {args.db} --project {proj.name}")
    if args.trusted_proxy:
        print(f"trusting X-Forwarded-Proto/Host/For from {args.trusted_proxy} only")
    elif not _is_loopback(args.host):
        print("warning: serving beyond this machine over plain HTTP; put an HTTPS proxy in front")
    print(f"listening on {url}  (annotators sign in at {url}/login; admins see {url}/admin)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    print("stopped; every accepted label is in the database")
    return 0


def run_add_annotator(args: argparse.Namespace) -> int:
    from popalign.label.accounts import add_annotator
    from popalign.label.db import make_engine

    engine = make_engine(args.db)
    token = add_annotator(engine, args.name, admin=args.admin, reset=args.reset, project=args.project)
    role = "admin" if args.admin else "annotator"
    done = "has a new token" if args.reset else "created"
    print(f"{role} {args.name!r} of project {args.project!r} {done}; token (shown once):")
    print(token)
    return 0


def _served_project(engine, name: str):
    from popalign.errors import PopalignError
    from popalign.label.project import list_projects, load_project

    project = load_project(engine, name)
    if project is None:
        known = [p for p in list_projects(engine) if load_project(engine, p) is not None]
        raise PopalignError(
            f"project {name!r} was never served in this database"
            + (f"; served projects: {', '.join(known)}" if known else "")
        )
    return project


def run_export(args: argparse.Namespace) -> int:
    from popalign.label.db import make_engine
    from popalign.label.export import export_hf, export_labels, write_skips

    engine = make_engine(_existing_db(args.db))
    project = _served_project(engine, args.project)
    if args.format == "hf":
        counts = export_hf(engine, project, args.output, all_pairs=args.all_pairs)
    else:
        counts = export_labels(engine, project, args.output, all_pairs=args.all_pairs)
    print(
        f"wrote {args.output}: {counts['rows']:,} labels from {counts['judgements']:,} judgements on "
        f"{counts['pairs']:,} pairs ({counts['without_label']:,} pairs without a label)"
    )
    if args.skips:
        write_skips(engine, project.project_id, args.skips)
        print(f"wrote {args.skips}: the skipped pairs with their reasons")
    if args.prefs:
        from popalign.data.load import load_preferences
        from popalign.pop.labels import load_pop_labels

        table, _ = load_preferences(data_spec(args, args.prefs))
        pairs = load_pop_labels(args.output, table)
        print(f"checked against {args.prefs}: {len(pairs):,} PoP pairs load")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from popalign.io import atomic_write_json
    from popalign.label.db import make_engine
    from popalign.label.project import load_project, project_row
    from popalign.label.status import format_status, project_status

    engine = make_engine(_existing_db(args.db))
    with engine.connect() as conn:
        row = project_row(conn, engine.popalign_tables, args.project)
    status = project_status(
        engine, load_project(engine, args.project), project_id=None if row is None else row.project_id
    )
    if args.json == "-":
        print(json.dumps(status, indent=2))
        return 0
    print(format_status(status))
    if args.json:
        atomic_write_json(args.json, status)
    return 0
