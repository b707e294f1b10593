"""A content-keyed cache of judge answers, durable after every answer, so no question is asked twice.

The key is a SHA-256 of the model name, the exact messages and the sampling settings (not the
endpoint's address: the same model behind another server or port answers the same question). The cache
is a SQLite file; each answer is committed in its own transaction as it arrives, so a run killed at any
moment keeps every answer it received and a rerun asks only what is missing. SQLite's journal makes
each commit atomic: a crash leaves the file as it was before or after an answer, never between.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from popalign.errors import PopalignError


@dataclass(frozen=True)
class Answer:
    """One judge reply: its text and the tokens the server counted (``None`` where it did not say)."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def question_key(model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
    """The cache key of one question (hex SHA-256 of its canonical JSON)."""
    blob = json.dumps(
        {"model": model, "messages": messages, "sampling": sampling},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AnswerCache:
    """``get``/``put`` answers by key; safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
                "prompt_tokens INTEGER, completion_tokens INTEGER)"
            )
            self._db.commit()
        except sqlite3.DatabaseError as exc:
            raise PopalignError(f"{self.path}: not a usable judge cache ({exc})") from None
        self._lock = threading.Lock()

    def get(self, key: str) -> Answer | None:
        with self._lock:
            row = self._db.execute(
                "SELECT text, prompt_tokens, completion_tokens FROM answers WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else Answer(*row)

    def put(self, key: str, answer: Answer) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)",
                (key, answer.text, answer.prompt_tokens, answer.completion_tokens),
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
