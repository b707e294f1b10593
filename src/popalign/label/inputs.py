"""Reading request values: every id, number and choice is checked here, with bounds, before any query.

A bad value is a :class:`Refused` (400) that names the field, never a crash: ids larger than the
database's integers, negative ones, floats, booleans and strings of non-ASCII digits (``"²".isdigit()``
is true, ``int("²")`` fails) are all refused the same way.
"""

from __future__ import annotations

from typing import Any

from popalign.errors import PopalignError

# The largest id every backend stores (PostgreSQL's INTEGER); larger ones cannot name a row.
MAX_ID = 2**31 - 1
MAX_FIELD_CHARS = 1000


class Refused(PopalignError):
    """A request the server turns down; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_id(value: Any, field: str) -> int:
    """A positive id (a JSON integer, not a bool, float or string) up to :data:`MAX_ID`; else 400."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise Refused(400, f"{field} must be a whole number from 1 to {MAX_ID}")
    return value


def form_id(value: Any, field: str) -> int:
    """A positive id from a form field: ASCII digits only, then as :func:`parse_id`."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        return parse_id(int(value), field)
    raise Refused(400, f"{field} must be a whole number from 1 to {MAX_ID}")


def parse_choice(value: Any, field: str, allowed: tuple[str, ...] | dict[str, Any]) -> str:
    """One of ``allowed`` (exactly); else 400 naming ``field`` and the values it takes."""
    if not isinstance(value, str) or value not in allowed:
        raise Refused(400, f"{field} must be one of {', '.join(allowed)}")
    return value


def parse_text(value: Any, field: str, limit: int = MAX_FIELD_CHARS) -> str:
    """Free text (missing means empty) of at most ``limit`` characters; else 400 naming ``field``."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise Refused(400, f"{field} must be text of at most {limit:,} characters")
    return value.strip()
