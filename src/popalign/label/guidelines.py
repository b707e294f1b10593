"""The project's written guidelines (``--guidelines FILE``, Markdown) and who has read which version.

An annotator sees the guidelines before their first pair, and again whenever the file changes: a read
is recorded per annotator and per version (the text's SHA-256).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from popalign.errors import PopalignError
from popalign.label.db import write_txn

MAX_GUIDELINES_BYTES = 256 * 1024


def read_guidelines(path: str | Path) -> str:
    """The guidelines file's text; :class:`PopalignError` naming the file if it is missing, not UTF-8,
    empty or over 256 KiB."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PopalignError(f"cannot read the guidelines file {path}: {exc.strerror}") from None
    if len(data) > MAX_GUIDELINES_BYTES:
        raise PopalignError(f"the guidelines file {path} is over {MAX_GUIDELINES_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PopalignError(f"the guidelines file {path} is not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise PopalignError(f"the guidelines file {path} is empty")
    return text


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def has_read(engine: Any, annotator_id: int, version: str) -> bool:
    import sqlalchemy as sa

    t = engine.popalign_tables["guideline_reads"]
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(t.c.read_at).where(t.c.annotator_id == annotator_id, t.c.digest == version)
        ).first()
    return row is not None


def mark_read(engine: Any, annotator_id: int, version: str) -> None:
    import sqlalchemy as sa

    t = engine.popalign_tables["guideline_reads"]
    with write_txn(engine) as conn:
        seen = conn.execute(
            sa.select(t.c.read_at).where(t.c.annotator_id == annotator_id, t.c.digest == version)
        ).first()
        if seen is None:
            conn.execute(sa.insert(t).values(annotator_id=annotator_id, digest=version, read_at=time.time()))
