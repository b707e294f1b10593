"""Files for download (the admin page's links and the API): the PoP label file and the skipped pairs,
written by the same code as ``popalign label export``; and the API's JSON error shape."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from popalign.label.context import LabelContext

EXPORT_TYPES = {
    "jsonl": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}


def _download(data: bytes, fmt: str, stem: str) -> Any:
    from flask import Response

    return Response(
        data,
        mimetype=EXPORT_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{stem}.{fmt}"'},
    )


def export_response(ctx: LabelContext, fmt: str, all_pairs: bool) -> Any:
    """The label file as a download (written by the same code as ``popalign label export``)."""
    from popalign.label.export import judgements, label_rows, write_labels

    if fmt not in EXPORT_TYPES:
        return api_error(f"format must be one of {', '.join(EXPORT_TYPES)}", 400)
    rows = label_rows(judgements(ctx.store.engine, ctx.project.project_id), ctx.project, all_pairs=all_pairs)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_labels(rows, Path(tmp) / f"labels.{fmt}").read_bytes()
    return _download(data, fmt, "pop_labels")


def skips_response(ctx: LabelContext, fmt: str) -> Any:
    """The skipped pairs as a download (as ``popalign label export --skips``)."""
    from popalign.label.export import SKIP_FORMATS, write_skips

    if f".{fmt}" not in SKIP_FORMATS:
        return api_error(f"format must be one of {', '.join(s.lstrip('.') for s in SKIP_FORMATS)}", 400)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_skips(ctx.store.engine, ctx.project.project_id, Path(tmp) / f"skips.{fmt}").read_bytes()
    return _download(data, fmt, "skips")


def api_error(message: str, status: int) -> Any:
    """``{"error": message}`` with ``status`` (and the Bearer challenge for 401)."""
    headers = {"WWW-Authenticate": 'Bearer realm="popalign-label"'} if status == 401 else {}
    return {"error": message}, status, headers
