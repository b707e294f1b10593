"""Annotator accounts: one secret token each, created by an admin command; only its hash is stored.

A token is 32 random bytes (URL-safe base64). The database keeps ``sha256(token)``, so a copy of the
database does not let anyone label as someone else; a lost token is replaced with ``--reset``.
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

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{20,128}$")


@dataclass(frozen=True)
class Annotator:
    annotator_id: int
    name: str
    is_admin: bool


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def csrf_token(token: str) -> str:
    """The value forms must echo back: derived from the session's token, unknowable to other sites."""
    return hmac.new(token.encode("utf-8"), b"popalign-label-form", hashlib.sha256).hexdigest()[:32]


def add_annotator(engine: Any, name: str, *, admin: bool = False, reset: bool = False) -> str:
    """Create the account ``name`` (or give it a new token with ``reset``); returns the token.

    The token is shown once: only its hash is stored. Raises :class:`PopalignError` for a bad name,
    an existing name without ``reset``, or ``reset`` of an unknown name.
    """
    import sqlalchemy as sa

    if not NAME_RE.match(name):
        raise PopalignError(
            f"annotator name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit"
        )
    table = engine.popalign_tables["annotators"]
    token = secrets.token_urlsafe(32)
    with write_txn(engine) as conn:
        row = conn.execute(sa.select(table.c.annotator_id).where(table.c.name == name)).first()
        if row is not None and not reset:
            raise PopalignError(f"annotator {name!r} exists; add --reset to give them a new token")
        if row is None and reset:
            raise PopalignError(f"no annotator named {name!r} to reset")
        if row is None:
            conn.execute(
                sa.insert(table).values(
                    name=name, token_hash=hash_token(token), is_admin=admin, created_at=time.time()
                )
            )
        else:
            conn.execute(
                sa.update(table)
                .where(table.c.annotator_id == row.annotator_id)
                .values(token_hash=hash_token(token), is_admin=admin)
            )
    return token


def authenticate(engine: Any, token: str | None) -> Annotator | None:
    """The account a token belongs to, or ``None`` for a missing, malformed or unknown token."""
    import sqlalchemy as sa

    if not token or not TOKEN_RE.match(token):
        return None
    table = engine.popalign_tables["annotators"]
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(table.c.annotator_id, table.c.name, table.c.is_admin).where(
                table.c.token_hash == hash_token(token)
            )
        ).first()
    return None if row is None else Annotator(row.annotator_id, row.name, bool(row.is_admin))


def list_annotators(engine: Any) -> list[Annotator]:
    import sqlalchemy as sa

    table = engine.popalign_tables["annotators"]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.annotator_id, table.c.name, table.c.is_admin).order_by(table.c.annotator_id)
        ).all()
    return [Annotator(r.annotator_id, r.name, bool(r.is_admin)) for r in rows]
