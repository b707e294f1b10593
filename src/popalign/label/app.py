"""The labelling web application (Flask): pages for annotators, a JSON API, admin status and export.

Who may do what:

* every page and API call needs an annotator's token — pages read it from an HttpOnly, SameSite=Strict
  cookie set by the login form; the API reads ``Authorization: Bearer <token>`` only;
* an annotator sees and judges only pairs assigned to them (a submission for anyone else's is 403);
* status and export are for admin accounts only;
* forms carry a CSRF value derived from the token, and POSTs to the API must be JSON, so another site
  can neither submit nor read anything with a visitor's cookie.

Dataset text is untrusted: it only ever reaches the page through Jinja2's autoescaping (the API returns
it as JSON strings), and the Content-Security-Policy allows scripts from this server's ``/static`` only.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from popalign.label.accounts import Annotator, authenticate, csrf_token
from popalign.label.project import Project
from popalign.label.render import blocks, prompt_turns, size_note
from popalign.label.store import LabelStore, Served

COOKIE = "popalign_label_token"
MAX_REQUEST_BYTES = 64 * 1024
HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass
class LabelContext:
    """What the app serves: the store, the project and the preference table the ids refer to."""

    store: LabelStore
    project: Project
    table: Any  # popalign.data.schema.PreferenceTable

    def preference(self, pref_id: str) -> dict[str, Any]:
        return self.table.row(self.table.index_of(pref_id))


def create_app(ctx: LabelContext) -> Any:
    """The Flask app for ``ctx`` (autoescaping Jinja2 templates, security headers on every response)."""
    from flask import Flask

    app = Flask(
        "popalign.label",
        template_folder=str(HERE / "templates"),
        static_folder=str(HERE / "static"),
        static_url_path="/static",
    )
    app.config.update(MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES)
    # Autoescape every template whatever its name (Flask's default covers .html only).
    app.jinja_env.autoescape = True
    app.extensions["popalign_label"] = ctx

    @app.after_request
    def _headers(response: Any) -> Any:
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    from popalign.label import routes_api, routes_pages

    routes_pages.register(app, ctx)
    routes_api.register(app, ctx)
    return app


def cookie_user(ctx: LabelContext) -> tuple[Annotator | None, str | None]:
    """The annotator of the session cookie and the raw token (``(None, None)`` if absent or invalid)."""
    from flask import request

    token = request.cookies.get(COOKIE)
    who = authenticate(ctx.store.engine, token)
    return (who, token) if who is not None else (None, None)


def bearer_user(ctx: LabelContext) -> Annotator | None:
    from flask import request

    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return authenticate(ctx.store.engine, token.strip())


def csrf_ok(token: str | None, sent: str | None) -> bool:
    return bool(token) and bool(sent) and hmac.compare_digest(csrf_token(token), str(sent))


def pair_view(ctx: LabelContext, served: Served) -> dict[str, Any]:
    """Both sides of a served pair with their text split into display blocks (still plain strings)."""
    sides = []
    for side, pref_id in (("a", served.id_a), ("b", served.id_b)):
        rec = ctx.preference(pref_id)
        sides.append(
            {
                "side": side,
                "id": pref_id,
                "turns": prompt_turns(rec["prompt"]),
                "chosen": blocks(rec["chosen"]),
                "rejected": blocks(rec["rejected"]),
                "chosen_size": size_note(rec["chosen"]),
                "rejected_size": size_note(rec["rejected"]),
            }
        )
    return {"assignment_id": served.assignment_id, "pair_id": served.pair_id, "sides": sides}


def pair_json(ctx: LabelContext, served: Served) -> dict[str, Any]:
    """A served pair for the API: ids and raw text (JSON-encoded, so safe to carry anything)."""
    out: dict[str, Any] = {
        "assignment_id": served.assignment_id,
        "pair_id": served.pair_id,
        "expires_at": served.expires_at,
    }
    for side, pref_id in (("a", served.id_a), ("b", served.id_b)):
        rec = ctx.preference(pref_id)
        out[side] = {key: rec[key] for key in ("id", "prompt", "chosen", "rejected")}
    return out
