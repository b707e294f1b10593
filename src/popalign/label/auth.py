"""Who is asking: the browser session (cookie), the API token (``Authorization: Bearer``), the forms'
CSRF value and the same-origin check.

Behind a trusted reverse proxy the server (waitress, ``--trusted-proxy``) has already replaced the
request's scheme and host with the proxy's ``X-Forwarded-Proto`` and ``X-Forwarded-Host``, so the
origin compared here is the one the browser used.
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import urlsplit

from popalign.label.accounts import Annotator, authenticate, csrf_token, session_user
from popalign.label.context import LabelContext

COOKIE_PREFIX = "popalign_label_"


def cookie_name(ctx: LabelContext) -> str:
    """One cookie per project: browsers share cookies across ports, so two servers on one host must
    not overwrite each other's sessions."""
    return COOKIE_PREFIX + ctx.project.name


def cookie_user(ctx: LabelContext) -> tuple[Annotator | None, str | None]:
    """The annotator of the session cookie and the session's secret (``(None, None)`` if none is live)."""
    from flask import request

    secret = request.cookies.get(cookie_name(ctx))
    who = session_user(ctx.store.engine, secret, ctx.project.project_id)
    return (who, secret) if who is not None else (None, None)


def bearer_user(ctx: LabelContext) -> Annotator | None:
    from flask import request

    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return authenticate(ctx.store.engine, token.strip(), ctx.project.project_id)


def csrf_ok(secret: str | None, sent: Any) -> bool:
    if not secret or not isinstance(sent, str):
        return False
    # As bytes: compare_digest refuses non-ASCII strings, and a form may send anything.
    return hmac.compare_digest(csrf_token(secret).encode(), sent.encode("utf-8", "replace"))


def same_origin() -> bool:
    """No ``Origin`` header, or one equal to this request's scheme and host.

    Browsers send ``Origin`` on cross-site POSTs; refusing a foreign one stops login CSRF too.
    """
    from flask import request

    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme == request.scheme and parts.netloc == request.host
