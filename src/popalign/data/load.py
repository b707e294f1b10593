"""Load preference data from any supported source into a :class:`PreferenceTable`, and save it back.

``load_preferences("data/train.jsonl")`` reads the file, detects its layout, maps columns, validates
every row and returns the table with a :class:`LoadReport` of what was read, kept and skipped. Nothing
is dropped silently: rows are skipped only when asked (``skip_bad_rows=True``, ``tie_policy="skip"``)
and every skip is counted in the report. See ``docs/data_formats.md`` for the accepted layouts.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from popalign.config import ConfigError
from popalign.data.formats import RowError, read_rows
from popalign.data.schema import PreferenceTable
from popalign.data.spec import DataSpec
from popalign.data.validate import TARGETS, RowNormaliser, check_column_targets, detect_layout
from popalign.errors import DataError, PopalignError
from popalign.io import atomic_open, atomic_path

MAX_EXAMPLES = 5


@dataclass
class LoadReport:
    """What loading did: counts, skip reasons with examples, the detected layout and column sources."""

    source: str
    rows_read: int
    rows_kept: int
    skipped: dict[str, int]
    examples: list[str]
    schema: str
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        lines = [
            f"source: {self.source}",
            f"schema: {self.schema}",
            f"rows: {self.rows_read} read, {self.rows_kept} kept, {self.rows_skipped} skipped",
        ]
        if self.columns:
            lines.append("columns: " + ", ".join(f"{t} <- {s}" for t, s in self.columns.items()))
        for reason, count in sorted(self.skipped.items(), key=lambda kv: -kv[1]):
            lines.append(f"  skipped {count}: {reason}")
        if self.examples:
            lines.append("  first skipped rows:")
            lines.extend(f"    {e}" for e in self.examples)
        lines.extend(self.notes)
        return "\n".join(lines)


def parse_column_map(text: str) -> dict[str, str]:
    """``"prompt=question,chosen=good"`` -> ``{"prompt": "question", "chosen": "good"}``.

    Raises :class:`ConfigError` for an item without ``=``, an empty side, a target given twice or an
    unknown target.
    """
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        target, sep, source = item.partition("=")
        target, source = target.strip(), source.strip()
        if not sep or not target or not source:
            raise ConfigError(
                f"--columns: {item.strip()!r} is not TARGET=SOURCE "
                "(e.g. --columns prompt=question,chosen=good)"
            )
        if target in out:
            raise ConfigError(f"--columns: {target} is given twice ({out[target]!r} and {source!r})")
        out[target] = source
    check_column_targets(out)
    return out


def _resolve_spec(spec: DataSpec | str | Path, overrides: dict[str, Any]) -> DataSpec:
    if isinstance(spec, str | Path):
        spec = DataSpec(path=str(spec))
    names = {f.name for f in dataclasses.fields(DataSpec)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise PopalignError(
            f"load_preferences: unknown option(s) {', '.join(unknown)}; options: {', '.join(names)}"
        )
    if isinstance(overrides.get("columns"), str):
        overrides = {**overrides, "columns": parse_column_map(overrides["columns"])}
    if "path" in overrides:
        overrides["path"] = str(overrides["path"])
    spec = dataclasses.replace(spec, **overrides)
    spec.validate()
    return spec


class _Collector:
    """Accumulates valid rows, skip counts and the first few skip messages."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.ids: list[str] = []
        self.prompts: list[Any] = []
        self.chosen: list[str] = []
        self.rejected: list[str] = []
        self.sc: list[float | None] = []
        self.sr: list[float | None] = []
        self.row_numbers: list[int] = []
        self.seen: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.examples: list[str] = []

    def skip_row(self, reason: str, message: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(message)

    def bad(self, err: RowError) -> None:
        if not self.skip:
            raise err
        self.skip_row(err.reason, str(err))

    def add(self, rec: tuple, row_number: int, source: str) -> None:
        pref_id = rec[0]
        if pref_id in self.seen:
            self.bad(
                RowError(
                    f"duplicate id {pref_id!r} (also row {self.seen[pref_id]})",
                    reason="duplicate id",
                    file=source,
                    row=row_number,
                    field="id",
                )
            )
            return
        self.seen[pref_id] = row_number
        self.row_numbers.append(row_number)
        for column, value in zip(
            (self.ids, self.prompts, self.chosen, self.rejected, self.sc, self.sr), rec, strict=True
        ):
            column.append(value)


def _empty_reply_note(out: _Collector) -> list[str]:
    """Kept rows with an empty reply are legal but worth seeing; name the first few rows."""
    rows = [
        n
        for n, c, r in zip(out.row_numbers, out.chosen, out.rejected, strict=True)
        if not c.strip() or not r.strip()
    ]
    if not rows:
        return []
    first = ", ".join(map(str, rows[:MAX_EXAMPLES])) + (", ..." if len(rows) > MAX_EXAMPLES else "")
    return [
        f"note: {len(rows)} kept rows have an empty chosen or rejected reply "
        f"(rows {first}; empty_replies=keep)"
    ]


def load_preferences(
    spec: DataSpec | str | Path, *, default_split: str = "train", **overrides: Any
) -> tuple[PreferenceTable, LoadReport]:
    """Read, map and validate preferences; returns ``(table, report)``.

    ``spec`` is a :class:`DataSpec` or just a path; keyword ``overrides`` replace its fields
    (``columns`` may be given as ``"a=b,c=d"``). Raises :class:`DataError` naming file, row and field
    at the first bad row, unless ``skip_bad_rows=True``, which skips bad rows and counts them in the
    report. Scores are ``None`` in the table when the source has none. ``default_split`` is the split of
    a folder or Hub dataset read when ``spec.split`` is unset (evaluation reads ``test``).
    """
    spec = _resolve_spec(spec, overrides)
    raw = read_rows(spec.path, spec.split, skip_bad=spec.skip_bad_rows, default_split=default_split)
    if not raw.rows:
        detail = f" ({len(raw.bad)} unreadable rows, e.g. {raw.bad[0]})" if raw.bad else ""
        raise DataError(f"no rows to read{detail}", file=raw.source)
    layout = detect_layout(raw.rows[0], spec.columns, raw.source, raw.row_numbers[0])
    normalise = RowNormaliser(layout, raw.source, spec.tie_policy, spec.empty_replies)
    out = _Collector(skip=spec.skip_bad_rows)
    for err in raw.bad:
        out.bad(err)
    rows_read, ties_skipped, notes = len(raw.bad), 0, []
    for row, number in zip(raw.rows, raw.row_numbers, strict=True):
        if spec.limit is not None and len(out.ids) >= spec.limit:
            notes.append(f"limit: kept the first {spec.limit} valid rows; stopped before row {number}")
            break
        rows_read += 1
        try:
            # Without an id column the id is the 0-based row number (for JSONL: line number - 1).
            rec = normalise(row, number, number - 1)
        except RowError as err:
            if err.reason == "tie":
                raise  # tie_policy="error" asks for an explicit decision; skipping bad rows is not one
            out.bad(err)
            continue
        if rec is None:
            ties_skipped += 1
            continue
        out.add(rec, number, raw.source)
    if ties_skipped:
        out.skipped["tie (tie_policy=skip)"] = ties_skipped
    notes.extend(_empty_reply_note(out))
    report = LoadReport(
        source=raw.source,
        rows_read=rows_read,
        rows_kept=len(out.ids),
        skipped=out.skipped,
        examples=out.examples,
        schema=layout.schema,
        columns={t: layout.columns[t] for t in TARGETS if t in layout.columns},
        notes=notes,
    )
    if not out.ids:
        raise DataError("no valid rows left\n" + report.summary(), file=raw.source)
    table = PreferenceTable(
        ids=out.ids,
        prompts=out.prompts,
        chosen=out.chosen,
        rejected=out.rejected,
        score_chosen=np.asarray(out.sc, dtype=np.float64) if layout.has_scores else None,
        score_rejected=np.asarray(out.sr, dtype=np.float64) if layout.has_scores else None,
        source=raw.source,
        row_numbers=out.row_numbers,
        margin_column=_margin_column(raw, out.row_numbers),
    )
    return table, report


def _margin_column(raw: Any, kept: list[int]) -> np.ndarray | None:
    """The optional per-row ``margin`` column of the kept rows (TRL's reward-trainer convention), or None."""
    if not isinstance(raw.rows[0], dict) or "margin" not in raw.rows[0]:
        return None
    by_number = dict(zip(raw.row_numbers, raw.rows, strict=True))
    values = []
    for number in kept:
        value = by_number[number].get("margin")
        try:
            number_value = float(value)
        except (TypeError, ValueError):
            number_value = float("nan")
        if isinstance(value, bool) or not np.isfinite(number_value):
            raise DataError(
                f"a margin must be a finite number, got {value!r}",
                file=raw.source,
                row=number,
                field="margin",
            )
        values.append(number_value)
    return np.asarray(values, dtype=np.float64)


def _prompt_as_messages(prompt: Any) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def save_preferences(table: PreferenceTable, path: str | Path) -> None:
    """Write ``table`` as ``.jsonl`` or ``.parquet``, atomically; :func:`load_preferences` reads it back.

    Columns: ``id``, ``prompt`` (text, or a message list for multi-turn prompts), ``chosen``,
    ``rejected``, with scores ``score_chosen`` and ``score_rejected``, and ``margin`` only where the data
    has a margin column of its own (never the scores' difference: a file read back must not gain a
    margin column that the ``column`` margin source would then train on). In Parquet a
    column has one type, so when any prompt is multi-turn every prompt is stored as messages; a lone
    user message reads back as text.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with atomic_open(path, "w", encoding="utf-8") as fh:
            for i in range(len(table)):
                fh.write(json.dumps(table.row(i), ensure_ascii=False) + "\n")
        return
    if suffix != ".parquet":
        raise DataError("unknown extension for saving preferences; use .jsonl or .parquet", file=str(path))
    import pyarrow as pa
    import pyarrow.parquet as pq

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    if any(not isinstance(p, str) for p in table.prompts):
        prompt_type, prompts = pa.list_(message), [_prompt_as_messages(p) for p in table.prompts]
    else:
        prompt_type, prompts = pa.string(), list(table.prompts)
    arrays = {
        "id": pa.array(table.ids, pa.string()),
        "prompt": pa.array(prompts, prompt_type),
        "chosen": pa.array(table.chosen, pa.string()),
        "rejected": pa.array(table.rejected, pa.string()),
    }
    if table.score_chosen is not None and table.score_rejected is not None:
        arrays["score_chosen"] = pa.array(table.score_chosen, pa.float64())
        arrays["score_rejected"] = pa.array(table.score_rejected, pa.float64())
    if table.margin_column is not None:
        arrays["margin"] = pa.array(table.margin_column, pa.float64())
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(arrays), tmp)
