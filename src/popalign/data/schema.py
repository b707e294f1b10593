"""The normalised preference record and the table that holds many of them.

Every loader produces a :class:`PreferenceTable`: columnar, so that PoP building and statistics work on
numpy arrays of margins without touching the text, and the text is stored once however many PoP
pairs refer to a preference.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A prompt is a string for single-turn data, or the list of chat messages that precede the final
# assistant turn for multi-turn data ({"role": ..., "content": ...} dicts).
Prompt = str | list[dict[str, str]]

COLUMNS = ("id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected")


@dataclass
class PreferenceTable:
    """Preferences ``(x, y+, y-)`` with optional scores and an optional margin column.

    Two different things, kept under two names:

    - the **score difference** ``score_chosen - score_rejected`` (:attr:`margins`, the ground-truth
      margin of the paper), derived from ``score_chosen``/``score_rejected``: float arrays of shape
      ``(N,)``, or ``None`` when the source has no scores (e.g. preferences whose strength comes only
      from PoP labels);
    - the **margin column** (:attr:`margin_column`): a per-row margin given by the data itself (a
      ``margin`` field, the convention of TRL's reward trainer), ``(N,)`` float or ``None``; it is what
      the ``column`` margin source reads, and the only thing written to a file's ``margin`` field.
    """

    ids: list[str]
    prompts: list[Prompt]
    chosen: list[str]
    rejected: list[str]
    score_chosen: np.ndarray | None = None
    score_rejected: np.ndarray | None = None
    source: str = "<memory>"
    # The source row of each preference (as error messages number them), when it came from a file.
    row_numbers: list[int] | None = field(default=None, repr=False, compare=False)
    margin_column: np.ndarray | None = None
    _index: dict[str, int] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("prompts", "chosen", "rejected"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"PreferenceTable: column {name} has {len(getattr(self, name))} rows, ids {n}"
                )
        if (self.score_chosen is None) != (self.score_rejected is None):
            raise ValueError("PreferenceTable: give both score columns or neither")
        if self.score_chosen is not None:
            self.score_chosen = np.asarray(self.score_chosen, dtype=np.float64)
            self.score_rejected = np.asarray(self.score_rejected, dtype=np.float64)
        if self.margin_column is not None:
            self.margin_column = np.asarray(self.margin_column, dtype=np.float64)
            if self.margin_column.shape != (n,):
                raise ValueError(
                    f"PreferenceTable: the margin column has shape {self.margin_column.shape}, "
                    f"expected ({n},)"
                )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_scores(self) -> bool:
        return self.score_chosen is not None

    @property
    def margins(self) -> np.ndarray:
        """The score differences (ground-truth margins) ``score_chosen - score_rejected``, shape ``(N,)``;
        never the data's margin column (:attr:`margin_column`)."""
        if self.score_chosen is None or self.score_rejected is None:
            raise ValueError(f"{self.source}: this dataset has no scores, so it has no margins")
        return self.score_chosen - self.score_rejected

    def index_of(self, pref_id: str) -> int:
        """Row position of a preference id (raises ``KeyError`` for an unknown id)."""
        if self._index is None:
            self._index = {pid: i for i, pid in enumerate(self.ids)}
        return self._index[pref_id]

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as a file stores it: ``margin`` only when the data has a margin column, so that a
        file written and read back never gains one."""
        rec: dict[str, Any] = {
            "id": self.ids[i],
            "prompt": self.prompts[i],
            "chosen": self.chosen[i],
            "rejected": self.rejected[i],
        }
        if self.score_chosen is not None and self.score_rejected is not None:
            rec["score_chosen"] = float(self.score_chosen[i])
            rec["score_rejected"] = float(self.score_rejected[i])
        if self.margin_column is not None:
            rec["margin"] = float(self.margin_column[i])
        return rec

    def to_records(self) -> list[dict[str, Any]]:
        return [self.row(i) for i in range(len(self))]

    def select(self, indices: np.ndarray | list[int]) -> PreferenceTable:
        idx = [int(i) for i in indices]
        return PreferenceTable(
            ids=[self.ids[i] for i in idx],
            prompts=[self.prompts[i] for i in idx],
            chosen=[self.chosen[i] for i in idx],
            rejected=[self.rejected[i] for i in idx],
            score_chosen=None if self.score_chosen is None else self.score_chosen[idx],
            score_rejected=None if self.score_rejected is None else self.score_rejected[idx],
            source=self.source,
            row_numbers=None if self.row_numbers is None else [self.row_numbers[i] for i in idx],
            margin_column=None if self.margin_column is None else self.margin_column[idx],
        )

    def fingerprint(self) -> str:
        """A content hash (ids, text, scores, margin column); caches keyed on it see any edit."""
        h = hashlib.sha256()
        for i in range(len(self)):
            h.update(json.dumps(self._hashed(i), sort_keys=True, ensure_ascii=False).encode("utf-8"))
            h.update(b"\x00")
        return h.hexdigest()[:16]

    def _hashed(self, i: int) -> dict[str, Any]:
        """Row ``i`` as fingerprints have always hashed it: with the score difference under ``margin``
        when there is no margin column. Files no longer carry it (:meth:`row`), but fingerprints stay what
        they were, so label files, label projects and caches made before still match their data."""
        rec = self.row(i)
        if self.margin_column is None and self.score_chosen is not None and self.score_rejected is not None:
            rec["margin"] = float(self.score_chosen[i] - self.score_rejected[i])
        return rec


def concat_tables(tables: list[PreferenceTable], prefixes: list[str]) -> PreferenceTable:
    """Several tables as one, each id prefixed by its table's prefix (``train:17``) so that none collide.

    Scores are kept only when every table has them (a mixed stack has no margins); the margin column
    likewise.
    """
    if len(tables) != len(prefixes):
        raise ValueError("concat_tables: one prefix per table")
    if len(tables) == 1:
        return tables[0]
    scored = all(t.has_scores for t in tables)
    with_column = all(t.margin_column is not None for t in tables)
    return PreferenceTable(
        ids=[f"{p}:{i}" for t, p in zip(tables, prefixes, strict=True) for i in t.ids],
        prompts=[x for t in tables for x in t.prompts],
        chosen=[x for t in tables for x in t.chosen],
        rejected=[x for t in tables for x in t.rejected],
        score_chosen=np.concatenate([t.score_chosen for t in tables]) if scored else None,
        score_rejected=np.concatenate([t.score_rejected for t in tables]) if scored else None,
        source=" + ".join(t.source for t in tables),
        margin_column=np.concatenate([t.margin_column for t in tables]) if with_column else None,
    )
