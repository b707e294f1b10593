"""HTML pages: sign-in and -out, the guidelines, the labelling page (one pair at a time), skip, undo,
lease renewal, and the admin status page.

Forms post back and redirect (303) to ``/``, so reloading never resubmits, and the page always shows
what the database holds. Keyboard shortcuts (``static/label.js``) only click these same buttons; the
page's script renews the lease through ``POST /renew`` while the page is open.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from popalign.label.accounts import authenticate, csrf_token, end_session, start_session
from popalign.label.auth import cookie_name, cookie_user, csrf_ok, same_origin
from popalign.label.context import LabelContext, message_page, pair_view
from popalign.label.downloads import export_response, skips_response
from popalign.label.guidelines import has_read, mark_read
from popalign.label.inputs import Refused, form_id
from popalign.label.store import SKIP_REASONS

COOKIE_MAX_AGE = 30 * 24 * 3600
# Notices after a redirect come from this fixed list, so the query string cannot inject text.
NOTICES = {
    "saved": "Saved.",
    "same": "Saved as about the same (no label).",
    "already": "That label was already saved.",
    "skipped": "Skipped; the reason is recorded.",
    "undone": "Undone: the pair is back. Judge it again.",
    "nothing": "Nothing to undo.",
}
LAST = {"a": "A stronger", "b": "B stronger", "same": "about the same", "skip": "skipped"}


def register(app: Any, ctx: LabelContext) -> None:
    """Add the pages to ``app``."""
    _register_labelling(app, ctx)
    _register_decisions(app, ctx)
    _register_sign_in(app, ctx)
    _register_admin(app, ctx)


def _form_user(ctx: LabelContext) -> tuple[Any, Any, Any]:
    """``(annotator, session secret, None)`` for a signed-in same-origin form post with the right CSRF
    value, else ``(None, None, refusal page)``."""
    from flask import request

    who, secret = cookie_user(ctx)
    if who is None:
        return None, None, message_page("Signed out", "Sign in with your token first.", 401)
    if not same_origin() or not csrf_ok(secret, request.form.get("csrf")):
        return None, None, message_page("Refused", "This form did not come from your labelling page.", 403)
    return who, secret, None


def _needs_guidelines(ctx: LabelContext, who: Any) -> bool:
    return ctx.guidelines_version is not None and not has_read(
        ctx.store.engine, who.annotator_id, ctx.guidelines_version
    )


def _register_labelling(app: Any, ctx: LabelContext) -> None:
    from flask import redirect, render_template, request

    @app.get("/")
    def index() -> Any:
        who, secret = cookie_user(ctx)
        if who is None:
            return redirect("/login", code=303)
        if _needs_guidelines(ctx, who):
            return redirect("/guidelines", code=303)
        served = ctx.store.next_for(who)
        progress = ctx.store.progress(who)
        last = ctx.store.last_decision(who)
        return render_template(
            "label.html",
            who=who,
            csrf=csrf_token(secret),
            pair=None if served is None else pair_view(ctx, served),
            expires_in=None if served is None else max(0.0, served.expires_at - ctx.store.clock()),
            progress=progress,
            share=min(1.0, progress.counted / max(1, progress.target)),
            last=None if last is None else LAST[last.choice],
            project=ctx.project,
            reasons=SKIP_REASONS,
            has_guidelines=ctx.guidelines is not None,
            notice=NOTICES.get(request.args.get("n", "")),
        )

    @app.get("/guidelines")
    def guidelines() -> Any:
        who, secret = cookie_user(ctx)
        if who is None:
            return redirect("/login", code=303)
        if ctx.guidelines is None:
            return message_page("Guidelines", "This project has no written guidelines.", 404)
        return render_template(
            "guidelines.html",
            who=who,
            csrf=csrf_token(secret),
            html=ctx.guidelines_html,
            first=_needs_guidelines(ctx, who),
        )

    @app.post("/guidelines/read")
    def guidelines_read() -> Any:
        who, _, refusal = _form_user(ctx)
        if refusal is not None:
            return refusal
        if ctx.guidelines_version is not None:
            mark_read(ctx.store.engine, who.annotator_id, ctx.guidelines_version)
        return redirect("/", code=303)


def _register_decisions(app: Any, ctx: LabelContext) -> None:
    from flask import redirect, request

    @app.post("/label")
    def label() -> Any:
        who, _, refusal = _form_user(ctx)
        if refusal is not None:
            return refusal
        choice = request.form.get("choice")
        try:
            assignment_id = form_id(request.form.get("assignment_id"), "assignment_id")
            outcome = ctx.store.submit(who, assignment_id, choice)
        except Refused as exc:
            return message_page("Not saved", str(exc), exc.status)
        notice = "already" if outcome != "recorded" else ("same" if choice == "same" else "saved")
        return redirect(f"/?n={notice}", code=303)

    @app.post("/skip")
    def skip() -> Any:
        who, _, refusal = _form_user(ctx)
        if refusal is not None:
            return refusal
        form = request.form
        try:
            assignment_id = form_id(form.get("assignment_id"), "assignment_id")
            ctx.store.skip(who, assignment_id, form.get("reason"), form.get("note"))
        except Refused as exc:
            return message_page("Not skipped", str(exc), exc.status)
        return redirect("/?n=skipped", code=303)

    @app.post("/renew")
    def renew() -> Any:
        # Called by the page's script; answers JSON like the API.
        who, secret = cookie_user(ctx)
        if who is None:
            return {"error": "signed out"}, 401
        if not same_origin() or not csrf_ok(secret, request.form.get("csrf")):
            return {"error": "refused"}, 403
        try:
            served = ctx.store.renew(who, form_id(request.form.get("assignment_id"), "assignment_id"))
        except Refused as exc:
            return {"error": str(exc)}, exc.status
        return {"expires_in": max(0.0, served.expires_at - ctx.store.clock())}

    @app.post("/undo")
    def undo() -> Any:
        who, _, refusal = _form_user(ctx)
        if refusal is not None:
            return refusal
        served = ctx.store.undo(who)
        return redirect("/?n=" + ("undone" if served is not None else "nothing"), code=303)


def _register_sign_in(app: Any, ctx: LabelContext) -> None:
    from flask import redirect, render_template, request

    @app.get("/login")
    def login_form() -> Any:
        return render_template("login.html", error=None, project=ctx.project.name)

    @app.post("/login")
    def login() -> Any:
        if not same_origin():
            return message_page("Refused", "Cross-site login refused.", 403)
        token = (request.form.get("token") or "").strip()
        who = authenticate(ctx.store.engine, token, ctx.project.project_id)
        if who is None:
            return render_template(
                "login.html", error="That token is not valid.", project=ctx.project.name
            ), 401
        response = redirect("/admin" if who.is_admin else "/", code=303)
        response.set_cookie(
            cookie_name(ctx),
            start_session(ctx.store.engine, who),
            max_age=COOKIE_MAX_AGE,
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
        )
        return response

    @app.post("/logout")
    def logout() -> Any:
        _, secret, refusal = _form_user(ctx)
        if refusal is not None:
            return refusal
        end_session(ctx.store.engine, secret)
        response = redirect("/login", code=303)
        response.delete_cookie(cookie_name(ctx), httponly=True, samesite="Strict", secure=request.is_secure)
        return response


def _register_admin(app: Any, ctx: LabelContext) -> None:
    from flask import redirect, render_template, request

    def _admin() -> tuple[Any, Any, Any]:
        who, secret = cookie_user(ctx)
        if who is None:
            return None, None, message_page("Signed out", "Sign in with your token first.", 401)
        if not who.is_admin:
            return None, None, message_page("Admins only", "This page is for admin accounts.", 403)
        return who, secret, None

    @app.get("/admin")
    def admin() -> Any:
        from popalign.label.status import project_status

        who, secret = cookie_user(ctx)
        if who is None:
            return redirect("/login", code=303)
        if not who.is_admin:
            return message_page("Admins only", "This page is for admin accounts.", 403)
        status = project_status(ctx.store.engine, ctx.project)
        return render_template(
            "admin.html", who=who, csrf=csrf_token(secret), status=status, project=asdict(ctx.project)
        )

    @app.get("/admin/export.<fmt>")
    def admin_export(fmt: str) -> Any:
        _, _, refusal = _admin()
        if refusal is not None:
            return refusal
        return export_response(ctx, fmt, request.args.get("all") == "1")

    @app.get("/admin/skips.<fmt>")
    def admin_skips(fmt: str) -> Any:
        _, _, refusal = _admin()
        if refusal is not None:
            return refusal
        return skips_response(ctx, fmt)
