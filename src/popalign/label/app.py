"""The labelling web application (Flask): pages for annotators, a JSON API, admin status and export.

Who may do what:

* every page and API call needs an annotator of the served project — pages read a session from an
  HttpOnly, SameSite=Strict cookie set by the login form (``Secure`` over HTTPS, also behind a
  trusted proxy); the API reads ``Authorization: Bearer <token>`` only;
* an annotator sees and judges only pairs assigned to them (a submission for anyone else's is 403);
* status and export are for admin accounts only;
* forms (sign-out included) carry a CSRF value derived from the session and must come from the same
  origin, and POSTs to the API must be JSON, so another site can neither submit nor read anything
  with a visitor's cookie.

Dataset text is untrusted: it reaches the page only as sanitised Markdown HTML
(:mod:`popalign.label.render`) or through Jinja2's autoescaping (the API returns it as JSON strings),
and the Content-Security-Policy allows scripts from this server's ``/static`` only.

No request input makes a 500: values are parsed with bounds (:mod:`popalign.label.inputs`), and any
error — a crash included — is answered as JSON under ``/api/`` and as a page elsewhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from popalign.label import routes_api, routes_pages
from popalign.label.context import LabelContext, message_page

MAX_REQUEST_BYTES = 64 * 1024
HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# status: (the page's title, the page's text); the API answers {"error": <lowercase HTTP phrase>}.
ERROR_PAGES = {
    400: ("Bad request", "The request could not be read."),
    404: ("Not found", "There is no such page."),
    405: ("Not allowed", "This page does not accept that request."),
    413: ("Too large", "The request is too large."),
    500: ("Server error", "Something went wrong on the server; nothing was saved by this request."),
}
log = logging.getLogger("popalign.label")


def create_app(ctx: LabelContext) -> Any:
    """The Flask app for ``ctx`` (autoescaping Jinja2 templates, security headers on every response)."""
    from flask import Flask

    app = Flask(
        "popalign.label",
        template_folder=str(HERE / "templates"),
        static_folder=str(HERE / "static"),
        static_url_path="/static",
    )
    app.config.update(MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES, MAX_FORM_MEMORY_SIZE=MAX_REQUEST_BYTES)
    # Autoescape every template whatever its name (Flask's default covers .html only).
    app.jinja_env.autoescape = True
    app.extensions["popalign_label"] = ctx

    @app.after_request
    def _headers(response: Any) -> Any:
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    routes_pages.register(app, ctx)
    routes_api.register(app, ctx)
    _register_errors(app)
    return app


def _register_errors(app: Any) -> None:
    """Every error status as JSON under ``/api/`` and as a readable page elsewhere; crashes too."""
    from flask import request
    from werkzeug.exceptions import HTTPException, InternalServerError

    def handle(exc: Exception) -> Any:
        if not isinstance(exc, HTTPException):
            log.exception("unexpected error on %s %s", request.method, request.path)
            exc = InternalServerError()
        status = exc.code or 500
        headers = dict(exc.get_headers()) if status == 405 else {}
        headers.pop("Content-Type", None)
        if request.path.startswith("/api/"):
            return {"error": (exc.name or "error").lower()}, status, headers
        title, text = ERROR_PAGES.get(status, (exc.name, exc.description or exc.name))
        body, status = message_page(title, text, status)
        return body, status, headers

    app.register_error_handler(HTTPException, handle)
    app.register_error_handler(Exception, handle)
