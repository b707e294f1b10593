"""The JSON API (``Authorization: Bearer <token>``), used by scripts, load tests and other front ends.

========================  ======  ===================================================================
path                      method  what
========================  ======  ===================================================================
``/api/next``             GET     ``{"assignment": {...} | null, "progress": {...}}``
``/api/labels``           POST    body ``{"assignment_id": int, "choice": "a" | "b" | "same"}``
``/api/undo``             POST    removes your latest label; ``{"assignment": {...} | null}``
``/api/progress``         GET     your and the project's progress
``/api/admin/status``     GET     admin: the project status (as ``popalign label status --json``)
``/api/admin/export``     GET     admin: the PoP label file; ``?format=jsonl|csv|parquet&all=1``
========================  ======  ===================================================================

Errors are ``{"error": message}`` with 400 (bad input), 401 (no or unknown token), 403 (not yours, or
not an admin), 404, 409 (already labelled differently) or 415 (a POST that is not JSON).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from popalign.label.app import LabelContext, bearer_user, pair_json
from popalign.label.store import Refused

EXPORT_TYPES = {
    "jsonl": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}


def _error(message: str, status: int) -> Any:
    headers = {"WWW-Authenticate": 'Bearer realm="popalign-label"'} if status == 401 else {}
    return {"error": message}, status, headers


def export_response(ctx: LabelContext, fmt: str, all_pairs: bool) -> Any:
    """The label file as a download (written by the same code as ``popalign label export``)."""
    from flask import Response

    from popalign.label.export import judgements, label_rows, write_labels

    if fmt not in EXPORT_TYPES:
        return _error(f"format must be one of {', '.join(EXPORT_TYPES)}", 400)
    rows = label_rows(judgements(ctx.store.engine), ctx.project, all_pairs=all_pairs)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_labels(rows, Path(tmp) / f"labels.{fmt}").read_bytes()
    return Response(
        data,
        mimetype=EXPORT_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="pop_labels.{fmt}"'},
    )


def register(app: Any, ctx: LabelContext) -> None:
    from flask import request

    def _user() -> Any:
        who = bearer_user(ctx)
        return (who, None) if who is not None else (None, _error("a valid annotator token is required", 401))

    def _progress(who: Any) -> dict[str, Any]:
        return asdict(ctx.store.progress(who))

    @app.get("/api/next")
    def api_next() -> Any:
        who, err = _user()
        if err:
            return err
        served = ctx.store.next_for(who)
        return {
            "assignment": None if served is None else pair_json(ctx, served),
            "progress": _progress(who),
        }

    @app.post("/api/labels")
    def api_label() -> Any:
        who, err = _user()
        if err:
            return err
        if not request.is_json:
            return _error("send JSON (Content-Type: application/json)", 415)
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error("the body must be a JSON object", 400)
        unknown = set(body) - {"assignment_id", "choice"}
        if unknown:
            return _error(f"unknown fields: {', '.join(sorted(map(str, unknown)))}", 400)
        try:
            outcome = ctx.store.submit(who, body.get("assignment_id"), body.get("choice"))
        except Refused as exc:
            return _error(str(exc), exc.status)
        return {"status": outcome, "progress": _progress(who)}

    @app.post("/api/undo")
    def api_undo() -> Any:
        who, err = _user()
        if err:
            return err
        served = ctx.store.undo(who)
        return {"assignment": None if served is None else pair_json(ctx, served), "progress": _progress(who)}

    @app.get("/api/progress")
    def api_progress() -> Any:
        who, err = _user()
        if err:
            return err
        return _progress(who)

    @app.get("/api/admin/status")
    def api_status() -> Any:
        from popalign.label.status import project_status

        who, err = _user()
        if err:
            return err
        if not who.is_admin:
            return _error("admin accounts only", 403)
        return project_status(ctx.store.engine, ctx.project)

    @app.get("/api/admin/export")
    def api_export() -> Any:
        who, err = _user()
        if err:
            return err
        if not who.is_admin:
            return _error("admin accounts only", 403)
        return export_response(ctx, request.args.get("format", "jsonl"), request.args.get("all") == "1")
