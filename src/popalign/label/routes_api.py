"""The JSON API (``Authorization: Bearer <token>``), used by scripts, load tests and other front ends.

========================  ======  ===================================================================
path                      method  what
========================  ======  ===================================================================
``/api/next``             GET     ``{"assignment": {...} | null, "progress": {...}}``
``/api/labels``           POST    body ``{"assignment_id": int, "choice": "a" | "b" | "same"}``
``/api/skip``             POST    body ``{"assignment_id": int, "reason": str, "note": str}``
``/api/renew``            POST    body ``{"assignment_id": int}``: extends the lease
``/api/undo``             POST    removes your latest label or skip; ``{"assignment": {...} | null}``
``/api/progress``         GET     your and the project's progress
``/api/guidelines``       GET     ``{"guidelines": markdown | null}``
``/api/admin/status``     GET     admin: the project status (as ``popalign label status --json``)
``/api/admin/export``     GET     admin: the PoP label file; ``?format=jsonl|csv|parquet&all=1``
``/api/admin/skips``      GET     admin: the skipped pairs with reasons; ``?format=jsonl|csv``
========================  ======  ===================================================================

Errors are ``{"error": message}`` with 400 (bad input, naming the field), 401 (no or unknown token),
403 (not yours, or not an admin), 404, 409 (already decided differently) or 415 (a POST that is not
JSON).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from popalign.label.auth import bearer_user
from popalign.label.context import LabelContext, pair_json
from popalign.label.downloads import api_error, export_response, skips_response
from popalign.label.inputs import Refused


def _body(allowed: set[str]) -> dict[str, Any]:
    """The JSON object of a POST, with no fields beyond ``allowed``; :class:`Refused` otherwise."""
    from flask import request

    if not request.is_json:
        raise Refused(415, "send JSON (Content-Type: application/json)")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise Refused(400, f"unknown fields: {', '.join(sorted(map(str, unknown)))}")
    return body


def register(app: Any, ctx: LabelContext) -> None:
    from flask import request

    def route(rule: str, methods: tuple[str, ...], admin: bool = False) -> Any:
        """A view that gets the token's annotator; :class:`Refused` becomes its JSON error."""

        def wrap(view: Any) -> Any:
            def handler() -> Any:
                who = bearer_user(ctx)
                if who is None:
                    return api_error("a valid annotator token is required", 401)
                if admin and not who.is_admin:
                    return api_error("admin accounts only", 403)
                try:
                    return view(who)
                except Refused as exc:
                    return api_error(str(exc), exc.status)

            app.add_url_rule(rule, endpoint=view.__name__, view_func=handler, methods=list(methods))
            return view

        return wrap

    def _progress(who: Any) -> dict[str, Any]:
        return asdict(ctx.store.progress(who))

    def _assignment(served: Any) -> Any:
        return None if served is None else pair_json(ctx, served)

    @route("/api/next", ("GET",))
    def api_next(who: Any) -> Any:
        return {"assignment": _assignment(ctx.store.next_for(who)), "progress": _progress(who)}

    @route("/api/labels", ("POST",))
    def api_label(who: Any) -> Any:
        body = _body({"assignment_id", "choice"})
        outcome = ctx.store.submit(who, body.get("assignment_id"), body.get("choice"))
        return {"status": outcome, "progress": _progress(who)}

    @route("/api/skip", ("POST",))
    def api_skip(who: Any) -> Any:
        body = _body({"assignment_id", "reason", "note"})
        outcome = ctx.store.skip(who, body.get("assignment_id"), body.get("reason"), body.get("note"))
        return {"status": outcome, "progress": _progress(who)}

    @route("/api/renew", ("POST",))
    def api_renew(who: Any) -> Any:
        served = ctx.store.renew(who, _body({"assignment_id"}).get("assignment_id"))
        return {"assignment_id": served.assignment_id, "expires_at": served.expires_at}

    @route("/api/undo", ("POST",))
    def api_undo(who: Any) -> Any:
        return {"assignment": _assignment(ctx.store.undo(who)), "progress": _progress(who)}

    @route("/api/progress", ("GET",))
    def api_progress(who: Any) -> Any:
        return _progress(who)

    @route("/api/guidelines", ("GET",))
    def api_guidelines(who: Any) -> Any:
        return {"guidelines": ctx.guidelines}

    @route("/api/admin/status", ("GET",), admin=True)
    def api_status(who: Any) -> Any:
        from popalign.label.status import project_status

        return project_status(ctx.store.engine, ctx.project)

    @route("/api/admin/export", ("GET",), admin=True)
    def api_export(who: Any) -> Any:
        return export_response(ctx, request.args.get("format", "jsonl"), request.args.get("all") == "1")

    @route("/api/admin/skips", ("GET",), admin=True)
    def api_skips(who: Any) -> Any:
        return skips_response(ctx, request.args.get("format", "jsonl"))
