"""HTML pages: login, the labelling page (one pair at a time), undo, and the admin status page.

Forms post back and redirect (303) to ``/``, so reloading never resubmits, and the page always shows
what the database holds. Keyboard shortcuts (``static/label.js``) only click these same buttons.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

from popalign.label.accounts import authenticate, csrf_token
from popalign.label.app import COOKIE, LabelContext, cookie_user, csrf_ok, pair_view
from popalign.label.store import Refused

COOKIE_MAX_AGE = 30 * 24 * 3600
# Notices after a redirect come from this fixed list, so the query string cannot inject text.
NOTICES = {
    "saved": "Saved.",
    "same": "Saved as about the same (no label).",
    "already": "That label was already saved.",
    "undone": "Undone: the pair is back. Judge it again.",
    "nothing": "Nothing to undo.",
}


def _same_origin() -> bool:
    # Browsers send Origin on cross-site POSTs; refusing a foreign one stops login CSRF too.
    from flask import request

    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


def message_page(title: str, message: str, status: int) -> Any:
    from flask import render_template

    return render_template("message.html", title=title, message=message, status=status), status


def register(app: Any, ctx: LabelContext) -> None:
    """Add the pages to ``app``."""
    _register_labelling(app, ctx)
    _register_sign_in(app, ctx)
    _register_admin(app, ctx)
    _register_errors(app)


def _form_user(ctx: LabelContext) -> tuple[Any, Any]:
    """``(annotator, None)`` for a signed-in same-origin form post with the right CSRF value, else
    ``(None, refusal page)``."""
    from flask import request

    who, token = cookie_user(ctx)
    if who is None:
        return None, message_page("Signed out", "Sign in with your token first.", 401)
    if not _same_origin() or not csrf_ok(token, request.form.get("csrf")):
        return None, message_page("Refused", "This form did not come from your labelling page.", 403)
    return who, None


def _register_labelling(app: Any, ctx: LabelContext) -> None:
    from flask import redirect, render_template, request

    @app.get("/")
    def index() -> Any:
        who, token = cookie_user(ctx)
        if who is None:
            return redirect("/login", code=303)
        served = ctx.store.next_for(who)
        progress = ctx.store.progress(who)
        return render_template(
            "label.html",
            who=who,
            csrf=csrf_token(token),
            pair=None if served is None else pair_view(ctx, served),
            progress=progress,
            share=min(1.0, progress.counted / max(1, progress.target)),
            last=ctx.store.last_label(who),
            project=ctx.project,
            notice=NOTICES.get(request.args.get("n", "")),
        )

    @app.post("/label")
    def label() -> Any:
        who, refusal = _form_user(ctx)
        if refusal is not None:
            return refusal
        raw = request.form.get("assignment_id", "")
        assignment_id = int(raw) if raw.isdigit() and len(raw) < 12 else -1
        choice = request.form.get("choice")
        try:
            outcome = ctx.store.submit(who, assignment_id, choice)
        except Refused as exc:
            return message_page("Not saved", str(exc), exc.status)
        notice = "already" if outcome != "recorded" else ("same" if choice == "same" else "saved")
        return redirect(f"/?n={notice}", code=303)

    @app.post("/undo")
    def undo() -> Any:
        who, refusal = _form_user(ctx)
        if refusal is not None:
            return refusal
        served = ctx.store.undo(who)
        return redirect("/?n=" + ("undone" if served is not None else "nothing"), code=303)


def _register_sign_in(app: Any, ctx: LabelContext) -> None:
    from flask import redirect, render_template, request

    @app.get("/login")
    def login_form() -> Any:
        return render_template("login.html", error=None)

    @app.post("/login")
    def login() -> Any:
        if not _same_origin():
            return message_page("Refused", "Cross-site login refused.", 403)
        token = (request.form.get("token") or "").strip()
        who = authenticate(ctx.store.engine, token)
        if who is None:
            return render_template("login.html", error="That token is not valid."), 401
        response = redirect("/admin" if who.is_admin else "/", code=303)
        response.set_cookie(
            COOKIE,
            token,
            max_age=COOKIE_MAX_AGE,
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
        )
        return response

    @app.post("/logout")
    def logout() -> Any:
        response = redirect("/login", code=303)
        response.delete_cookie(COOKIE)
        return response


def _register_admin(app: Any, ctx: LabelContext) -> None:
    from flask import redirect, render_template, request

    @app.get("/admin")
    def admin() -> Any:
        from popalign.label.status import project_status

        who, _ = cookie_user(ctx)
        if who is None:
            return redirect("/login", code=303)
        if not who.is_admin:
            return message_page("Admins only", "This page is for admin accounts.", 403)
        status = project_status(ctx.store.engine, ctx.project)
        return render_template("admin.html", who=who, status=status, project=asdict(ctx.project))

    @app.get("/admin/export.<fmt>")
    def admin_export(fmt: str) -> Any:
        from popalign.label.routes_api import export_response

        who, _ = cookie_user(ctx)
        if who is None:
            return message_page("Signed out", "Sign in with your token first.", 401)
        if not who.is_admin:
            return message_page("Admins only", "Export is for admin accounts.", 403)
        return export_response(ctx, fmt, request.args.get("all") == "1")


# status: (the API's error text, the page's title, the page's text)
_ERRORS = {
    400: ("bad request", "Bad request", "The request could not be read."),
    404: ("not found", "Not found", "There is no such page."),
    405: ("method not allowed", "Not allowed", "This page does not accept that request."),
    413: ("request too large", "Too large", "The request is too large."),
}


def _register_errors(app: Any) -> None:
    """JSON errors under ``/api/``, readable pages elsewhere."""
    from flask import request

    def handler(status: int) -> Any:
        api_text, title, text = _ERRORS[status]

        def handle(_exc: Any) -> Any:
            if request.path.startswith("/api/"):
                return {"error": api_text}, status
            return message_page(title, text, status)

        return handle

    for status in _ERRORS:
        app.register_error_handler(status, handler(status))
