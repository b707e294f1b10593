"""The labelling database: tables, engine and transactions (SQLAlchemy Core).

SQLite is the embedded default, in WAL mode with ``synchronous=FULL`` so that a commit is on disk
before the HTTP response that reports it. Any SQLAlchemy URL works too (``postgresql+psycopg://...``):
nothing below is SQLite-specific except the connection set-up in :func:`_sqlite_setup`.

Every transaction that changes assignments or labels goes through :func:`write_txn`, which serialises
writers: ``BEGIN IMMEDIATE`` on SQLite, a row lock on ``meta['lock']`` (``SELECT ... FOR UPDATE``)
elsewhere. Unique constraints back the invariants that matter (one row per unordered pair, one
assignment per pair and slot, one label per assignment, an annotator sees a pair at most once), so a
bug in the sampling logic could fail a request but never store a duplicate.

One database holds any number of projects (``projects``); pairs, assignments and annotators belong to
one project each, so projects share nothing but the file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from popalign.errors import PopalignError

SCHEMA_VERSION = "2"
BUSY_TIMEOUT_MS = 30_000
STATUSES = ("open", "done", "skipped")


def _decision_columns() -> list[Any]:
    """What a label and a skip both record: the assignment (one decision each), pair and annotator."""
    import sqlalchemy as sa

    return [
        sa.Column(
            "assignment_id",
            sa.Integer,
            sa.ForeignKey("assignments.assignment_id"),
            nullable=False,
            unique=True,
        ),
        sa.Column("pair_id", sa.Integer, sa.ForeignKey("pairs.pair_id"), nullable=False),
        sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.annotator_id"), nullable=False),
    ]


def build_metadata() -> Any:
    """The tables; returned as a ``sqlalchemy.MetaData`` (built lazily: no import at module top)."""
    import sqlalchemy as sa

    md = sa.MetaData()
    sa.Table(
        "meta",
        md,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    # One row per project; `settings` (JSON) is filled in by the project's first serve.
    sa.Table(
        "projects",
        md,
        sa.Column("project_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("settings", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    sa.Table(
        "annotators",
        md,
        sa.Column("annotator_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.project_id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("is_admin", sa.Boolean, nullable=False, default=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("project_id", "name", name="uq_annotators_name"),
    )
    # A signed-in browser: the cookie holds a random secret whose hash is stored here, so signing
    # out (or a token reset) ends the session on the server, while the token itself stays valid.
    sa.Table(
        "sessions",
        md,
        sa.Column("session_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.annotator_id"), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    # One row per unordered pair of preferences per project: lo < hi are the two ids in string order.
    # id_a/id_b is the fixed display order, so that every annotator's "a" means the same preference.
    # `gold` is the known answer ("a" or "b") of a quality-control pair, NULL for the others.
    sa.Table(
        "pairs",
        md,
        sa.Column("pair_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.project_id"), nullable=False),
        sa.Column("lo", sa.String(255), nullable=False),
        sa.Column("hi", sa.String(255), nullable=False),
        sa.Column("id_a", sa.String(255), nullable=False),
        sa.Column("id_b", sa.String(255), nullable=False),
        sa.Column("anchor", sa.String(255), nullable=True),
        sa.Column("gold", sa.String(1), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("project_id", "lo", "hi", name="uq_pairs_unordered"),
        sa.CheckConstraint("lo < hi", name="ck_pairs_distinct"),
        sa.CheckConstraint("gold IS NULL OR gold IN ('a', 'b')", name="ck_pairs_gold"),
        sa.Index("ix_pairs_hi", "project_id", "hi"),
        sa.Index("ix_pairs_anchor", "project_id", "anchor"),
    )
    # A pair is judged by `redundancy` annotators: one assignment per slot. An open assignment is
    # a lease; when it expires the same row is handed to someone else (never a second row).
    # started_at: when its current annotator got it (time per label); served_at: last shown.
    sa.Table(
        "assignments",
        md,
        sa.Column("assignment_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.project_id"), nullable=False),
        sa.Column("pair_id", sa.Integer, sa.ForeignKey("pairs.pair_id"), nullable=False),
        sa.Column("slot", sa.Integer, nullable=False),
        sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.annotator_id"), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("served_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("decided_at", sa.Float, nullable=True),
        sa.UniqueConstraint("pair_id", "slot", name="uq_assignments_slot"),
        sa.UniqueConstraint("pair_id", "annotator_id", name="uq_assignments_once_each"),
        sa.CheckConstraint("status IN ('open', 'done', 'skipped')", name="ck_assignments_status"),
        sa.Index("ix_assignments_annotator", "annotator_id", "status"),
        sa.Index("ix_assignments_expiry", "project_id", "status", "expires_at"),
    )
    sa.Table(
        "labels",
        md,
        sa.Column("label_id", sa.Integer, primary_key=True, autoincrement=True),
        *_decision_columns(),
        sa.Column("choice", sa.String(4), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.CheckConstraint("choice IN ('a', 'b', 'same')", name="ck_labels_choice"),
        sa.Index("ix_labels_annotator", "annotator_id", "label_id"),
        sa.Index("ix_labels_pair", "pair_id"),
    )
    # A pair an annotator declined, with why: never a label, exported on its own.
    sa.Table(
        "skips",
        md,
        sa.Column("skip_id", sa.Integer, primary_key=True, autoincrement=True),
        *_decision_columns(),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    # Which version (sha256) of the project's guidelines an annotator has read.
    sa.Table(
        "guideline_reads",
        md,
        sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.annotator_id"), primary_key=True),
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("read_at", sa.Float, nullable=False),
    )
    return md


def database_url(db: str | Path) -> str:
    """A SQLAlchemy URL from ``--db``: a URL is kept, anything else is a SQLite file path."""
    text = str(db)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def display_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _sqlite_setup(engine: Any) -> None:
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below emit BEGIN, not the sqlite3 module's implicit one.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL may lose the last commits on power loss; FULL syncs the WAL on each commit.
        cur.execute("PRAGMA synchronous = FULL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front: two writers never both read and then deadlock on
        # upgrading, and a reader (DEFERRED) still runs alongside a writer under WAL.
        mode = "IMMEDIATE" if conn.get_execution_options().get("popalign_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(db: str | Path, pool_size: int = 10) -> Any:
    """An engine for ``db`` (path or URL) with the tables created; raises :class:`PopalignError`."""
    import sqlalchemy as sa

    url = database_url(db)
    try:
        if url.startswith("sqlite"):
            path = sa.engine.make_url(url).database
            if path and path != ":memory:" and not Path(path).parent.is_dir():
                raise PopalignError(f"the folder for the label database does not exist: {Path(path).parent}")
            engine = sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size)
            _sqlite_setup(engine)
        else:
            engine = sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        md = build_metadata()
        _check_schema(engine)
        md.create_all(engine)
    except PopalignError:
        raise
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise PopalignError(f"cannot use the label database {display_url(url)}: {exc}") from None
    except sa.exc.OperationalError as exc:
        raise PopalignError(f"cannot open the label database {display_url(url)}: {exc.orig}") from None
    engine.popalign_tables = md.tables  # type: ignore[attr-defined]
    _ensure_meta(engine, md.tables["meta"])
    return engine


def _check_schema(engine: Any) -> None:
    # Before create_all, so that an older database is left exactly as it was.
    import sqlalchemy as sa

    if not sa.inspect(engine).has_table("meta"):
        return
    with engine.connect() as conn:
        version = conn.execute(sa.text("SELECT value FROM meta WHERE key = 'schema'")).scalar()
    if version is not None and version != SCHEMA_VERSION:
        raise PopalignError(
            f"the label database {display_url(str(engine.url))} has schema version {version}; this "
            f"popalign reads version {SCHEMA_VERSION} (export its labels with the popalign that wrote it)"
        )


def _ensure_meta(engine: Any, meta: Any) -> None:
    import sqlalchemy as sa

    with write_txn(engine) as conn:
        have = {r.key for r in conn.execute(sa.select(meta.c.key))}
        for key, value in (("schema", SCHEMA_VERSION), ("lock", "0")):
            if key not in have:
                conn.execute(sa.insert(meta).values(key=key, value=value))


@contextlib.contextmanager
def write_txn(engine: Any) -> Iterator[Any]:
    """A transaction that holds the writers' lock until it commits (on leaving) or rolls back."""
    import sqlalchemy as sa

    meta = engine.popalign_tables["meta"] if hasattr(engine, "popalign_tables") else None
    with engine.connect().execution_options(popalign_write=True) as conn, conn.begin():
        if meta is not None and engine.dialect.name != "sqlite":
            conn.execute(sa.select(meta.c.value).where(meta.c.key == "lock").with_for_update()).first()
        yield conn


@contextlib.contextmanager
def read_txn(engine: Any) -> Iterator[Any]:
    """A read-only transaction: one consistent snapshot, runs beside writers."""
    with engine.connect() as conn, conn.begin():
        yield conn
