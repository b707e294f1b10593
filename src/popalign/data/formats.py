"""Read raw rows from every supported source: JSONL, JSON, Parquet, CSV, ``datasets`` folders, the Hub.

Readers know nothing about preferences; they return plain dicts plus the 1-based row number each
error message should show. For JSONL that number is the line of the file, so an editor's "go to
line" lands on it; for every other format it is the position of the record (1 = first record,
after any CSV header). Library errors (``json``, ``csv``, ``pyarrow``, ``datasets``) are wrapped in
:class:`~popalign.errors.DataError` naming the file, so a user never sees a traceback from deep
inside a library.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from popalign.errors import DataError

EXTENSIONS = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")
HUB_PREFIX = "hub:"
# ``owner/name`` as the Hub spells dataset ids; only consulted for paths that do not exist locally.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class RowError(DataError):
    """A problem confined to one row; ``reason`` is the short key skip reports count by."""

    def __init__(self, message: str, *, reason: str, file: str, row: int, field: str | None = None):
        super().__init__(message, file=file, row=row, field=field)
        self.reason = reason


@dataclass
class RawRows:
    """Rows as read, before any preference logic.

    ``row_numbers[i]`` is the 1-based number messages show for ``rows[i]``; ``bad`` holds rows that
    could not be parsed at all (only collected when the caller asked to skip bad rows).
    """

    source: str
    rows: list[dict[str, Any]]
    row_numbers: list[int]
    bad: list[RowError] = field(default_factory=list)


def _positional(source: str, rows: list[Any]) -> RawRows:
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"expected an object per row, got {type(row).__name__}", file=source, row=i + 1)
    return RawRows(source, rows, list(range(1, len(rows) + 1)))


def looks_like_hub_id(path: str) -> bool:
    return bool(_HUB_ID.match(path)) and Path(path).suffix.lower() not in EXTENSIONS


def read_rows(
    path: str, split: str | None = None, skip_bad: bool = False, default_split: str = "train"
) -> RawRows:
    """Dispatch on what ``path`` is: a file, a folder, or (only when asked) a Hub dataset id.

    ``split`` picks a folder's ``<split>`` file or a dataset's split (``None``: ``default_split``). A single
    file holds one split, so an explicit ``split`` there is an error unless the file is named after it
    (``test.jsonl``) or is a JSON object with that key: evaluating every row of a file that also holds
    training rows must never happen silently. The Hub is used for ``hub:owner/name`` and for a path that
    does not exist locally but looks like ``owner/name``; nothing else ever reaches the network.
    """
    if not path:
        raise DataError("no data path given")
    chosen_split = split or default_split
    if path.startswith(HUB_PREFIX):
        return read_hub(path[len(HUB_PREFIX) :], chosen_split)
    p = Path(path).expanduser()
    if p.is_dir():
        return read_folder(p, chosen_split, skip_bad)
    if p.is_file():
        if split is not None and p.stem != split and p.suffix.lower() != ".json":
            raise DataError(
                f"--split {split}: a single file has no splits, so every row would be read; give the "
                f"folder that holds {split}.jsonl, leave --split out, or cut the file in two with "
                "`popalign data split`",
                file=str(p),
            )
        return read_file(p, skip_bad, split)
    if looks_like_hub_id(path):
        return read_hub(path, chosen_split)
    raise DataError(
        "no such file or folder (a Hugging Face Hub dataset is loaded only as hub:owner/name)", file=path
    )


def read_file(path: Path, skip_bad: bool = False, split: str | None = None) -> RawRows:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return read_jsonl(path, skip_bad)
    if suffix == ".json":
        return read_json(path, skip_bad, split)
    if suffix == ".parquet":
        return read_parquet(path)
    if suffix == ".csv":
        return read_csv(path)
    raise DataError(
        f"unknown file extension {suffix or '(none)'!r}; supported: {', '.join(EXTENSIONS)}", file=path
    )


def _open_text(path: Path):
    try:
        # utf-8-sig: files saved by spreadsheet tools often start with a byte-order mark.
        return open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise DataError(f"cannot read the file: {exc.strerror or exc}", file=str(path)) from None


def read_jsonl(path: Path, skip_bad: bool = False) -> RawRows:
    """One JSON object per line; blank lines are ignored but still counted, so row = line."""
    source = str(path)
    rows: list[dict[str, Any]] = []
    numbers: list[int] = []
    bad: list[RowError] = []
    with _open_text(path) as fh:
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    problem = (
                        None if isinstance(obj, dict) else f"expected a JSON object, got {type(obj).__name__}"
                    )
                except json.JSONDecodeError as exc:
                    problem = f"line {lineno} is not valid JSON ({exc.msg} at column {exc.colno})"
                if problem is None:
                    rows.append(obj)
                    numbers.append(lineno)
                    continue
                err = RowError(problem, reason="unreadable row", file=source, row=lineno)
                if not skip_bad:
                    raise err
                bad.append(err)
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text ({exc.reason})", file=source) from None
    return RawRows(source, rows, numbers, bad)


def read_json(path: Path, skip_bad: bool = False, split: str | None = None) -> RawRows:
    """A JSON list of objects, or an object holding that list under ``data`` (or under the split).

    An explicit ``split`` must be a key of the object (or the file's name, ``test.json``).
    """
    source = str(path)
    with _open_text(path) as fh:
        try:
            obj = json.load(fh)
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data" and exc.lineno > 1:
                # Many ``.json`` files in the wild are JSON lines; read them as such.
                _check_split_of(path, split, None)
                return read_jsonl(path, skip_bad)
            raise DataError(
                f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}", file=source
            ) from None
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text ({exc.reason})", file=source) from None
    _check_split_of(path, split, obj)
    if isinstance(obj, dict):
        for key in (split, "data") if split else ("data", "train"):
            if isinstance(obj.get(key), list):
                obj = obj[key]
                break
        else:
            raise DataError(
                'expected a list of objects, or {"data": [...]}; found an object with keys '
                + ", ".join(map(str, list(obj)[:10])),
                file=source,
            )
    if not isinstance(obj, list):
        raise DataError(f"expected a list of objects, got {type(obj).__name__}", file=source)
    return _positional(source, obj)


def _check_split_of(path: Path, split: str | None, obj: Any) -> None:
    if split is None or path.stem == split or (isinstance(obj, dict) and isinstance(obj.get(split), list)):
        return
    held = [k for k, v in obj.items() if isinstance(v, list)] if isinstance(obj, dict) else []
    raise DataError(
        f"--split {split}: this file has no split {split!r} "
        f"({'splits here: ' + ', '.join(held) if held else 'a single file holds one split'}); leave --split "
        "out, or cut the file in two with `popalign data split`",
        file=str(path),
    )


def read_parquet(path: Path) -> RawRows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read as Parquet: {exc}", file=str(path)) from None
    return _positional(str(path), rows)


def read_csv(path: Path) -> RawRows:
    """A header row, then one preference per record (quoted fields may span lines)."""
    source = str(path)
    rows: list[dict[str, Any]] = []
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        try:
            for rec in reader:
                rec.pop(None, None)  # values beyond the header have no column name to map
                rows.append(rec)
        except csv.Error as exc:
            raise DataError(f"malformed CSV near line {reader.line_num}: {exc}", file=source) from None
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text ({exc.reason})", file=source) from None
    return _positional(source, rows)


def _dataset_rows(ds: Any, source: str) -> RawRows:
    # Here and below: any failure inside ``datasets`` becomes one clear message, not its traceback.
    try:
        rows = ds.to_list()
    except Exception as exc:
        raise DataError(f"cannot read the dataset: {exc}", file=source) from None
    return _positional(source, rows)


def read_folder(path: Path, split: str, skip_bad: bool = False) -> RawRows:
    """A ``datasets.save_to_disk`` folder (Dataset or DatasetDict) or a folder of ``<split>.<ext>`` files."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise DataError(f"cannot load the saved dataset: {exc}", file=str(path)) from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"no split {split!r}; available splits: {', '.join(ds)}", file=str(path))
            return _dataset_rows(ds[split], f"{path}[{split}]")
        return _dataset_rows(ds, str(path))
    for ext in EXTENSIONS:
        candidate = path / f"{split}{ext}"
        if candidate.is_file():
            return read_file(candidate, skip_bad, split)
    found = sorted(p.name for p in path.iterdir())[:20]
    raise DataError(
        f"no {split}.jsonl/.json/.parquet/.csv here and not a datasets save_to_disk folder; "
        f"found: {', '.join(found) or '(empty folder)'}",
        file=str(path),
    )


def read_hub(name: str, split: str) -> RawRows:
    """Load ``name`` from the Hugging Face Hub (or its local cache) through ``datasets.load_dataset``."""
    source = f"hub:{name}[{split}]"
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:
        raise DataError(
            f"not a local file or folder, and loading it from the Hugging Face Hub failed "
            f"({type(exc).__name__}: {exc})",
            file=source,
        ) from None
    return _dataset_rows(ds, source)
