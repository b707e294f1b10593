"""Annotator accounts and browser sessions; only hashes of secrets are stored.

An account belongs to one project and has one secret token (32 random bytes, URL-safe base64),
created by an admin command. The database keeps ``sha256(token)``, so a copy of the database does not
let anyone label as someone else; a lost token is replaced with ``--reset``. API clients send the
token itself. Signing in on the web page trades the token for a *session*: a fresh secret in the
cookie, its hash in ``sessions``. Signing out revokes that row, so a copied cookie stops working,
while the token (and any other session) stays valid.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from popalign.errors import PopalignError
from popalign.label.db import write_txn
from popalign.label.project import DEFAULT_PROJECT, check_name, project_row

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{20,128}$")
SESSION_S = 30 * 24 * 3600


@dataclass(frozen=True)
class Annotator:
    annotator_id: int
    name: str
    is_admin: bool
    project_id: int = 1


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def csrf_token(secret: str) -> str:
    """The value forms must echo back: derived from the session's secret, unknowable to other sites."""
    return hmac.new(secret.encode("utf-8"), b"popalign-label-form", hashlib.sha256).hexdigest()[:32]


def add_annotator(
    engine: Any, name: str, *, admin: bool = False, reset: bool = False, project: str = DEFAULT_PROJECT
) -> str:
    """Create the account ``name`` in ``project`` (or give it a new token with ``reset``); returns the token.

    The token is shown once: only its hash is stored. A reset also ends the account's sessions.
    Raises :class:`PopalignError` for a bad name, an existing name without ``reset``, or ``reset`` of
    an unknown name.
    """
    import sqlalchemy as sa

    check_name(name, "annotator name")
    table, sessions = engine.popalign_tables["annotators"], engine.popalign_tables["sessions"]
    token = secrets.token_urlsafe(32)
    with write_txn(engine) as conn:
        project_id = project_row(conn, engine.popalign_tables, project, create=True).project_id
        row = conn.execute(
            sa.select(table.c.annotator_id).where(table.c.name == name, table.c.project_id == project_id)
        ).first()
        if row is not None and not reset:
            raise PopalignError(f"annotator {name!r} exists; add --reset to give them a new token")
        if row is None and reset:
            raise PopalignError(f"no annotator named {name!r} to reset in project {project!r}")
        if row is None:
            conn.execute(
                sa.insert(table).values(
                    project_id=project_id,
                    name=name,
                    token_hash=hash_token(token),
                    is_admin=admin,
                    created_at=time.time(),
                )
            )
        else:
            conn.execute(
                sa.update(table)
                .where(table.c.annotator_id == row.annotator_id)
                .values(token_hash=hash_token(token), is_admin=admin)
            )
            conn.execute(sa.delete(sessions).where(sessions.c.annotator_id == row.annotator_id))
    return token


def _columns(table: Any) -> tuple[Any, ...]:
    return (table.c.annotator_id, table.c.name, table.c.is_admin, table.c.project_id)


def _annotator(row: Any) -> Annotator:
    return Annotator(row.annotator_id, row.name, bool(row.is_admin), row.project_id)


def authenticate(engine: Any, token: str | None, project_id: int | None = None) -> Annotator | None:
    """The account a token belongs to (in ``project_id``, if given), or ``None`` if there is none."""
    import sqlalchemy as sa

    if not isinstance(token, str) or not TOKEN_RE.match(token):
        return None
    table = engine.popalign_tables["annotators"]
    query = sa.select(*_columns(table)).where(table.c.token_hash == hash_token(token))
    if project_id is not None:
        query = query.where(table.c.project_id == project_id)
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else _annotator(row)


def start_session(engine: Any, who: Annotator, now: float | None = None) -> str:
    """A new session for ``who``; returns its secret (for the cookie), shown nowhere else."""
    import sqlalchemy as sa

    now = time.time() if now is None else now
    secret = secrets.token_urlsafe(32)
    with write_txn(engine) as conn:
        conn.execute(
            sa.insert(engine.popalign_tables["sessions"]).values(
                secret_hash=hash_token(secret),
                annotator_id=who.annotator_id,
                created_at=now,
                expires_at=now + SESSION_S,
            )
        )
    return secret


def session_user(
    engine: Any, secret: str | None, project_id: int, now: float | None = None
) -> Annotator | None:
    """The annotator of a live, unrevoked session in ``project_id``, or ``None``."""
    import sqlalchemy as sa

    if not isinstance(secret, str) or not TOKEN_RE.match(secret):
        return None
    now = time.time() if now is None else now
    t, s = engine.popalign_tables["annotators"], engine.popalign_tables["sessions"]
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(*_columns(t))
            .join(s, s.c.annotator_id == t.c.annotator_id)
            .where(
                s.c.secret_hash == hash_token(secret),
                s.c.revoked_at.is_(None),
                s.c.expires_at > now,
                t.c.project_id == project_id,
            )
        ).first()
    return None if row is None else _annotator(row)


def end_session(engine: Any, secret: str) -> None:
    """Revoke the session (signing out); its cookie no longer signs anyone in."""
    import sqlalchemy as sa

    s = engine.popalign_tables["sessions"]
    with write_txn(engine) as conn:
        conn.execute(
            sa.update(s)
            .where(s.c.secret_hash == hash_token(secret), s.c.revoked_at.is_(None))
            .values(revoked_at=time.time())
        )


def list_annotators(engine: Any, project_id: int | None = None) -> list[Annotator]:
    import sqlalchemy as sa

    table = engine.popalign_tables["annotators"]
    query = sa.select(*_columns(table)).order_by(table.c.annotator_id)
    if project_id is not None:
        query = query.where(table.c.project_id == project_id)
    with engine.connect() as conn:
        return [_annotator(r) for r in conn.execute(query)]
