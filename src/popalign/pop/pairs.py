"""PoP pairs: which preference is labelled stronger than which, and their file format.

A PoP dataset refers to preferences by position in a :class:`PreferenceTable`; the preference text
lives once in the preference dataset however many pairs use it. On disk a pair file holds one row per
pair with the columns ``strong_id``, ``weak_id`` (preference ids) and ``flipped`` (``True`` where label
noise swapped the pair, Appendix F), as Parquet (default) or JSON lines. Settings and statistics go to a
JSON sidecar named ``<pair file>.meta.json`` (``pop.parquet`` → ``pop.parquet.meta.json``), so several
pair files can share a folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from popalign.data.schema import PreferenceTable
from popalign.errors import DataError, PopalignError
from popalign.io import atomic_open, atomic_path, atomic_write_json

PAIR_COLUMNS = ("strong_id", "weak_id", "flipped")
FORMATS = (".parquet", ".jsonl")


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar beside a pair file: ``<path>.meta.json``."""
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise PopalignError(
            f"{path}: a PoP pair file must end in .parquet or .jsonl, not {suffix or '(none)'!r}"
        )
    return suffix


@dataclass
class PoPPairs:
    """``P`` PoP pairs over a preference table, with the labelled order.

    ``strong_idx[i]`` is the preference the (possibly noisy) annotator called stronger, ``weak_idx[i]``
    the other one; ``flipped[i]`` is ``True`` when noise swapped the pair, i.e. ``strong_idx[i]`` is truly
    the weaker. The training objective (Eq. 7) takes the strong pair's reward difference and the weak
    pair's clipped target reward difference as its margin.
    """

    strong_idx: np.ndarray  # int64 (P,), row positions in the PreferenceTable
    weak_idx: np.ndarray  # int64 (P,)
    flipped: np.ndarray  # bool (P,)
    meta: dict[str, Any] = field(default_factory=dict)  # settings + statistics (the sidecar content)

    def __post_init__(self) -> None:
        self.strong_idx = np.asarray(self.strong_idx, dtype=np.int64).reshape(-1)
        self.weak_idx = np.asarray(self.weak_idx, dtype=np.int64).reshape(-1)
        self.flipped = np.asarray(self.flipped, dtype=bool).reshape(-1)
        if not (len(self.strong_idx) == len(self.weak_idx) == len(self.flipped)):
            raise ValueError(
                f"PoPPairs: strong_idx {len(self.strong_idx)}, weak_idx {len(self.weak_idx)} and "
                f"flipped {len(self.flipped)} must have the same length"
            )

    def __len__(self) -> int:
        return int(len(self.strong_idx))

    def save(self, path: str | Path, table: PreferenceTable) -> None:
        """Write ``strong_id``/``weak_id``/``flipped`` to ``path`` and ``meta`` to its sidecar, atomically."""
        path = Path(path)
        fmt = _format_of(path)
        n = len(table)
        if len(self) and (
            min(self.strong_idx.min(), self.weak_idx.min()) < 0
            or max(self.strong_idx.max(), self.weak_idx.max()) >= n
        ):
            raise ValueError(f"PoPPairs.save: an index is outside the {n}-row preference table")
        import pyarrow as pa

        ids = _id_array(table)
        data = pa.table(
            {
                "strong_id": ids.take(pa.array(self.strong_idx)),
                "weak_id": ids.take(pa.array(self.weak_idx)),
                "flipped": pa.array(self.flipped, type=pa.bool_()),
            }
        )
        if fmt == ".parquet":
            import pyarrow.parquet as pq

            with atomic_path(path) as tmp:
                pq.write_table(data, tmp)
        else:
            with atomic_open(path, "w", encoding="utf-8") as fh:
                columns = [data.column(name).to_pylist() for name in PAIR_COLUMNS]
                for strong, weak, flipped in zip(*columns, strict=True):
                    rec = {"strong_id": strong, "weak_id": weak, "flipped": flipped}
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        atomic_write_json(sidecar_path(path), self.meta)

    @classmethod
    def load(cls, path: str | Path, table: PreferenceTable) -> PoPPairs:
        """Read a pair file, mapping ids back to positions in ``table``.

        Raises :class:`DataError` naming the file, row and field for a missing column, an id that is not
        in ``table``, a pair of a preference with itself or a ``flipped`` value that is not a boolean.
        ``meta`` comes from the sidecar when there is one, else is empty.
        """
        import pyarrow.compute as pc

        path = Path(path)
        fmt = _format_of(path)
        if not path.exists():
            raise DataError("PoP pair file not found", file=str(path))
        data, rows = _read_parquet(path) if fmt == ".parquet" else _read_jsonl(path)
        ids = _id_array(table)
        idx = {}
        for name in ("strong_id", "weak_id"):
            col = data.column(name)
            # Hash lookup of every id at once; ids written as numbers (a hand-made file) match as text.
            pos = pc.fill_null(pc.index_in(pc.cast(col, "string"), value_set=ids), -1).to_numpy()
            bad = np.flatnonzero(pos < 0)
            if bad.size:
                r = int(bad[0])
                raise DataError(
                    f"id {col[r].as_py()!r} is not in the preference dataset {table.source} "
                    f"({bad.size} unknown ids in this column)",
                    file=str(path),
                    row=int(rows[r]),
                    field=name,
                )
            idx[name] = pos.astype(np.int64)
        same = np.flatnonzero(idx["strong_id"] == idx["weak_id"])
        if same.size:
            raise DataError(
                "a preference is paired with itself", file=str(path), row=int(rows[same[0]]), field="weak_id"
            )
        flipped = _flipped_column(data, rows, path)
        meta_file = sidecar_path(path)
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.exists() else {}
        return cls(idx["strong_id"], idx["weak_id"], flipped, meta)


def _id_array(table: PreferenceTable):
    import pyarrow as pa

    return pa.array([str(x) for x in table.ids], type=pa.string())


def _flipped_column(data, rows: np.ndarray, path: Path) -> np.ndarray:
    """The ``flipped`` column as bool ``(P,)``; all ``False`` when a hand-made file omits it."""
    import pyarrow as pa

    if "flipped" not in data.column_names:
        return np.zeros(len(data), dtype=bool)
    col = data.column("flipped")
    if not pa.types.is_boolean(col.type) or col.null_count:
        values = col.to_pylist()
        r = next(i for i, v in enumerate(values) if not isinstance(v, bool))
        raise DataError(
            f"expected true or false, got {values[r]!r}", file=str(path), row=int(rows[r]), field="flipped"
        )
    return col.to_numpy().astype(bool)


def _read_parquet(path: Path):
    """``(pyarrow table, 1-based row numbers)``."""
    import pyarrow.parquet as pq

    try:
        data = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"not a readable Parquet file: {exc}", file=str(path)) from None
    for name in ("strong_id", "weak_id"):
        if name not in data.column_names:
            found = ", ".join(data.column_names) or "none"
            raise DataError(f"missing column (found: {found})", file=str(path), field=name)
    return data, np.arange(1, len(data) + 1)


def _read_jsonl(path: Path):
    """``(pyarrow table, line numbers)``; blank lines are skipped but keep the numbering."""
    import pyarrow as pa

    from popalign.data.formats import read_jsonl

    raw = read_jsonl(path)
    cols: dict[str, list] = {name: [] for name in PAIR_COLUMNS}
    for line_no, rec in zip(raw.row_numbers, raw.rows, strict=True):
        for name in ("strong_id", "weak_id"):
            if rec.get(name) is None:
                raise DataError("missing", file=str(path), row=line_no, field=name)
            cols[name].append(str(rec[name]))
        flipped = rec.get("flipped", False)
        if not isinstance(flipped, bool):
            raise DataError(
                f"expected true or false, got {flipped!r}", file=str(path), row=line_no, field="flipped"
            )
        cols["flipped"].append(flipped)
    lines = raw.row_numbers
    data = pa.table(
        {
            "strong_id": pa.array(cols["strong_id"], type=pa.string()),
            "weak_id": pa.array(cols["weak_id"], type=pa.string()),
            "flipped": pa.array(cols["flipped"], type=pa.bool_()),
        }
    )
    return data, np.asarray(lines, dtype=np.int64)
