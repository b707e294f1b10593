"""PoP labels collected from people or a judge, with no scores: ``(id_a, id_b, stronger)`` rows.

The paper simulates annotators with UltraFeedback scores (Section 4.1) but the method needs only the
ordinal label "preference a is stronger than preference b". A label file (``.jsonl``, ``.csv`` or
``.parquet``), or a ``datasets`` folder written by ``save_to_disk`` (``popalign label export --format
hf``), has one row per judged pair:

* ``id_a``, ``id_b`` — ids of two different preferences of the preference dataset;
* ``stronger`` — ``"a"`` or ``"b"`` (any case), or the id of the stronger preference itself (the
  letters are read as letters first).

Every row is checked against the preference dataset; a problem raises :class:`DataError` naming the
file, the 1-based row (the line for ``.jsonl``; the data row, header not counted, for ``.csv``) and the
field.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from popalign.data.formats import read_file, read_folder
from popalign.data.schema import PreferenceTable
from popalign.errors import DataError, PopalignError
from popalign.io import atomic_open, atomic_path
from popalign.pop.build import META_FORMAT
from popalign.pop.pairs import PoPPairs
from popalign.pop.stats import pair_statistics

LABEL_COLUMNS = ("id_a", "id_b", "stronger")
LABEL_FORMATS = (".jsonl", ".csv", ".parquet")


def read_label_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number, record)`` for each label row, read by the preference data layer's readers."""
    raw = read_folder(path, "train") if path.is_dir() else read_file(path)
    yield from zip(raw.row_numbers, raw.rows, strict=True)


def _present(rec: dict[str, Any], name: str, file: str, row: int) -> str:
    value = rec.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError("missing", file=file, row=row, field=name)
    return str(value).strip()


def _stronger_is_a(value: str, id_a: str, id_b: str, file: str, row: int) -> bool:
    # The letters win over ids, so ids that are themselves "a" or "b" cannot make a row ambiguous.
    low = value.lower()
    if low in ("a", "b"):
        return low == "a"
    if value in (id_a, id_b):
        return value == id_a
    raise DataError(
        f"{value!r} is neither 'a', 'b', nor one of the pair's ids ({id_a!r}, {id_b!r})",
        file=file,
        row=row,
        field="stronger",
    )


SAME = "same"  # "about the same": a verdict, but no label (only where ``open_verdicts``)


def iter_labels(
    path: str | Path, table: PreferenceTable, open_verdicts: bool = False
) -> Iterator[tuple[int, dict[str, Any], int, int, int | str | None]]:
    """``(row number, record, a, b, verdict)`` per row, ``a``/``b`` row positions in ``table``.

    ``verdict`` is the stronger row position; with ``open_verdicts`` also :data:`SAME` or ``None`` (an
    empty ``stronger``: no verdict), as a judge's records file has. Raises :class:`DataError` naming the
    file, row and field for an unknown id, a pair of a preference with itself, a bad ``stronger`` value,
    a missing field or a pair judged twice (in either order).
    """
    path = Path(path)
    file = str(path)
    if path.suffix.lower() not in LABEL_FORMATS and not path.is_dir():
        raise DataError(f"a PoP label file must end in {', '.join(LABEL_FORMATS)} or be a folder", file=file)
    if not path.exists():
        raise DataError("PoP label file not found", file=file)
    position = {str(pid): i for i, pid in enumerate(table.ids)}
    seen: dict[tuple[int, int], int] = {}
    for row, rec in read_label_rows(path):
        id_a, id_b = (_present(rec, name, file, row) for name in ("id_a", "id_b"))
        for name, pid in (("id_a", id_a), ("id_b", id_b)):
            if pid not in position:
                raise DataError(
                    f"id {pid!r} is not in the preference dataset {table.source}",
                    file=file,
                    row=row,
                    field=name,
                )
        a, b = position[id_a], position[id_b]
        if a == b:
            raise DataError(
                f"a preference ({id_a!r}) is paired with itself", file=file, row=row, field="id_b"
            )
        key = (min(a, b), max(a, b))
        if key in seen:
            raise DataError(
                f"the pair ({id_a!r}, {id_b!r}) was already labelled in row {seen[key]}",
                file=file,
                row=row,
                field="id_b",
            )
        seen[key] = row
        raw = rec.get("stronger")
        if open_verdicts and (raw is None or not str(raw).strip()):
            yield row, rec, a, b, None
            continue
        stronger = _present(rec, "stronger", file, row)
        if open_verdicts and stronger.lower() == SAME:
            yield row, rec, a, b, SAME
            continue
        yield row, rec, a, b, a if _stronger_is_a(stronger, id_a, id_b, file, row) else b


def load_pop_labels(path: str | Path, table: PreferenceTable) -> PoPPairs:
    """Read people's PoP labels into :class:`PoPPairs` over ``table`` (``flipped`` all ``False``).

    ``table`` needs no scores; when it has them, ``meta["appearances"]`` also counts the labels that
    disagree with the score margins. Rows are checked as :func:`iter_labels` says.
    """
    strong: list[int] = []
    weak: list[int] = []
    for _, _, a, b, winner in iter_labels(path, table):
        strong.append(winner)
        weak.append(b if winner == a else a)
    strong_idx = np.asarray(strong, dtype=np.int64)
    weak_idx = np.asarray(weak, dtype=np.int64)
    flipped = np.zeros(strong_idx.size, dtype=bool)
    meta = {
        "format": META_FORMAT,
        "settings": {"strategy": "labels"},
        "source": {
            "labels": str(path),
            "path": table.source,
            "fingerprint": table.fingerprint(),
            "preferences": len(table),
        },
        "counts": {"pairs": int(strong_idx.size), "flipped": 0},
        "appearances": pair_statistics(
            strong_idx, weak_idx, flipped, len(table), table.margins if table.has_scores else None
        ),
    }
    return PoPPairs(strong_idx, weak_idx, flipped, meta)


def write_labels(rows: list[dict], path: str | Path) -> Path:
    """Write the rows as ``.jsonl``, ``.csv`` or ``.parquet`` (by suffix), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LABEL_FORMATS:
        raise PopalignError(f"the label file must end in {', '.join(LABEL_FORMATS)} (got {path.name})")
    if suffix == ".jsonl":
        with atomic_open(path, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif suffix == ".csv":
        with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=LABEL_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {name: pa.array([r[name] for r in rows], type=pa.string()) for name in LABEL_COLUMNS}
        with atomic_path(path) as tmp:
            pq.write_table(pa.table(columns), tmp)
    return path
