"""No request input makes a 500: random bytes, huge, negative, float and Unicode-digit ids, and wrong
types for every field of every route, through Flask's test client (which runs the app's own error
handlers). Under ``/api/`` every answer is JSON; elsewhere a page."""

from __future__ import annotations

import json
import random
import re

import pytest

pytest.importorskip("flask")
pytest.importorskip("sqlalchemy")

from popalign.label.accounts import add_annotator  # noqa: E402
from popalign.label.app import create_app  # noqa: E402
from popalign.label.project import LabelSettings  # noqa: E402
from popalign.label.server import build_context  # noqa: E402

ROWS = [{"id": f"p{i}", "prompt": f"q{i}", "chosen": "c", "rejected": "r"} for i in range(6)]
IDS = [
    100000000000000000000,
    2**63,
    2**63 - 1,
    2**31,
    -1,
    0,
    1.5,
    1e308,
    float("inf"),
    "²",
    "١٢",
    "1",
    "",
    " 1",
    "0x10",
    None,
    True,
    [],
    {},
    [1],
    {"$gt": 0},
]
TEXTS = ["a", "b", "same", "A", "", " ", "x" * 5000, "é", "\x00", "²", 1, 1.5, None, True, [], {}, ["a"]]
# JSON routes and the fields of their bodies.
API_POSTS = {
    "/api/labels": ("assignment_id", "choice"),
    "/api/skip": ("assignment_id", "reason", "note"),
    "/api/renew": ("assignment_id",),
    "/api/undo": (),
}
API_GETS = ("/api/next", "/api/progress", "/api/guidelines", "/api/admin/status", "/api/admin/export")
# Form routes and their fields (all also need csrf).
FORM_POSTS = {
    "/label": ("assignment_id", "choice"),
    "/skip": ("assignment_id", "reason", "note"),
    "/renew": ("assignment_id",),
    "/undo": (),
    "/guidelines/read": (),
    "/login": ("token",),
}
PAGES = ("/", "/guidelines", "/admin", "/admin/export.jsonl", "/admin/skips.csv", "/login")


@pytest.fixture()
def env(tmp_path):
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    guidelines = tmp_path / "guidelines.md"
    guidelines.write_text("# Read me\n", encoding="utf-8")
    ctx = build_context(tmp_path / "labels.sqlite", prefs, LabelSettings(target=10), guidelines=guidelines)
    token = add_annotator(ctx.store.engine, "boss", admin=True)
    app = create_app(ctx)
    app.testing = True
    browser = app.test_client()
    assert browser.post("/login", data={"token": token}).status_code == 303
    browser.post("/guidelines/read", data={"csrf": csrf_of(browser, "/guidelines")})
    return app, token, browser


def csrf_of(client, path: str = "/") -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', client.get(path).get_data(as_text=True)).group(1)


def check(response, path: str) -> None:
    assert response.status_code < 500, (path, response.status_code, response.get_data(as_text=True)[:300])
    if path.startswith("/api/") and response.status_code >= 400:
        body = response.get_json(silent=True)
        assert isinstance(body, dict) and "error" in body, (path, response.status_code)


def test_the_reported_crashes_are_clean_400s(env):
    app, token, browser = env
    api = app.test_client()
    h = {"Authorization": f"Bearer {token}"}
    for bad in (100000000000000000000, 2**63):
        got = api.post("/api/labels", json={"assignment_id": bad, "choice": "a"}, headers=h)
        assert got.status_code == 400 and "assignment_id" in got.get_json()["error"]
    got = browser.post("/label", data={"assignment_id": "²", "choice": "a", "csrf": csrf_of(browser)})
    assert got.status_code == 400 and "assignment_id" in got.get_data(as_text=True)
    # Form-encoded: %C2%B2 is the superscript two.
    raw = browser.post(
        "/label",
        data=f"assignment_id=%C2%B2&choice=a&csrf={csrf_of(browser)}",
        content_type="application/x-www-form-urlencoded",
    )
    assert raw.status_code == 400


def test_wrong_types_for_every_field_of_every_api_route(env):
    app, token, _ = env
    api = app.test_client()
    h = {"Authorization": f"Bearer {token}"}
    rng = random.Random(0)
    served = api.get("/api/next", headers=h).get_json()["assignment"]
    for path, fields in API_POSTS.items():
        for name in fields:
            for value in IDS + TEXTS:
                body = {f: (served["assignment_id"] if f == "assignment_id" else "a") for f in fields}
                body[name] = value
                check(api.post(path, data=json.dumps(body), content_type="application/json", headers=h), path)
        for _ in range(20):  # the whole body wrong
            body = rng.choice([[], "x", 1, None, {"extra": 1}, {str(rng.random()): rng.choice(IDS)}])
            check(api.post(path, data=json.dumps(body), content_type="application/json", headers=h), path)


def test_random_bytes_headers_and_queries_everywhere(env):
    app, token, browser = env
    rng = random.Random(1)
    api = app.test_client()
    paths = [*API_POSTS, *API_GETS, *FORM_POSTS, *PAGES, "/api/admin/skips", "/admin/export.%ff", "/api/x"]
    types = ["application/json", "application/x-www-form-urlencoded", "multipart/form-data", "text/plain", ""]
    for i in range(300):
        path = rng.choice(paths)
        body = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 16, 600))))
        query = "?" + "&".join(
            f"{rng.choice(['format', 'all', 'n', 'x'])}={rng.choice(['%ff', '²', 'csv', 'xml', '1', ''])}"
            for _ in range(rng.randrange(3))
        )
        headers = {"Authorization": rng.choice([f"Bearer {token}", "Bearer", "Basic x", "Bearer \u00e9"])}
        if rng.random() < 0.3:
            headers["Origin"] = rng.choice(["null", "http://localhost", "https://evil.example", "\u00e9://x"])
        client = browser if i % 2 else api
        method = rng.choice(["GET", "POST", "PUT", "DELETE"])
        got = client.open(
            path + query, method=method, data=body, content_type=rng.choice(types), headers=headers
        )
        check(got, path)


def test_every_form_field_with_hostile_values(env):
    _, _, browser = env
    csrf = csrf_of(browser)
    for path, fields in FORM_POSTS.items():
        for name in (*fields, "csrf"):
            for value in ["²", "١٢", "-1", "1.5", "9" * 30, "", "\x00", "x" * 20000, "%ff", "1 "]:
                form = {"csrf": csrf, **{f: "1" for f in fields}}
                form[name] = value
                check(browser.post(path, data=form), path)
            for many in (["1", "2"],):  # a field given twice
                check(browser.post(path, data={"csrf": csrf, name: many}), path)
