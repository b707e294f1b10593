"""Errors a user can act on. The CLI prints their message alone, never a traceback."""

from __future__ import annotations


class PopalignError(Exception):
    """Base class for errors caused by input or settings rather than by a bug."""


class DataError(PopalignError, ValueError):
    """Bad input data. The message names the file, the row (1-based) and the field."""

    def __init__(
        self, message: str, *, file: str | None = None, row: int | None = None, field: str | None = None
    ):
        self.file, self.row, self.field = file, row, field
        where = ", ".join(
            part
            for part in (
                str(file) if file is not None else None,
                f"row {row}" if row is not None else None,
                f"field {field!r}" if field is not None else None,
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)
