"""The labelling app through HTTP (Flask's test client): who may do what, escaping, forms and the API."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("flask")
sa = pytest.importorskip("sqlalchemy")

from popalign.label.accounts import add_annotator  # noqa: E402
from popalign.label.app import create_app  # noqa: E402
from popalign.label.project import LabelSettings  # noqa: E402
from popalign.label.server import build_context  # noqa: E402

# Every row carries markup and script in every field: whichever pair is served, the page must show it
# as text.
HOSTILE = [
    {
        "id": f"h{i}",
        "prompt": f'<script>alert("prompt {i}")</script> Question {i}?',
        "chosen": f"Answer {i}:\n```html\n<img src=x onerror=alert({i})>\n```\nuse `<b>` tags",
        "rejected": f'"><iframe src="javascript:alert({i})"></iframe> & {{{{ 7 * 7 }}}}',
    }
    for i in range(4)
]


@pytest.fixture()
def app_env(tmp_path):
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in HOSTILE), encoding="utf-8")
    ctx = build_context(tmp_path / "labels.sqlite", prefs, LabelSettings(target=6))
    engine = ctx.store.engine
    tokens = {
        "alice": add_annotator(engine, "alice"),
        "bob": add_annotator(engine, "bob"),
        "boss": add_annotator(engine, "boss", admin=True),
    }
    app = create_app(ctx)
    app.testing = True
    return app, ctx, tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def labels_in_db(ctx) -> int:
    with ctx.store.engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM labels")).scalar_one()


COOKIE = "popalign_label_default"


def signed_in(app, token):
    client = app.test_client()
    assert client.post("/login", data={"token": token}).status_code == 303
    return client


def csrf_of(client) -> str:
    """The CSRF value of the client's session, as its labelling page carries it."""
    html = client.get("/").get_data(as_text=True)
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


def test_nothing_works_without_a_valid_token(app_env):
    app, ctx, tokens = app_env
    client = app.test_client()
    page = client.get("/")
    assert page.status_code == 303 and page.headers["Location"].endswith("/login")
    for headers in ({}, bearer("not-a-token"), bearer("x" * 43), {"Authorization": tokens["alice"]}):
        got = client.get("/api/next", headers=headers)
        assert got.status_code == 401 and got.headers["WWW-Authenticate"].startswith("Bearer")
        assert (
            client.post("/api/labels", json={"assignment_id": 1, "choice": "a"}, headers=headers).status_code
            == 401
        )
        assert client.post("/api/undo", headers=headers).status_code == 401
        assert client.get("/api/admin/export", headers=headers).status_code == 401
    assert client.post("/label", data={"assignment_id": "1", "choice": "a", "csrf": "x"}).status_code == 401
    assert client.post("/undo", data={"csrf": "x"}).status_code == 401
    assert client.get("/admin/export.jsonl").status_code == 401
    bad = client.post("/login", data={"token": "wrong"})
    assert bad.status_code == 401 and COOKIE not in bad.headers.get("Set-Cookie", "")
    client.set_cookie(COOKIE, "forged-token-value-1234567890")
    assert client.get("/").status_code == 303
    assert labels_in_db(ctx) == 0


def test_an_annotator_cannot_see_or_judge_another_annotators_pair(app_env):
    app, ctx, tokens = app_env
    client = app.test_client()
    alices = client.get("/api/next", headers=bearer(tokens["alice"])).get_json()["assignment"]
    bobs = client.get("/api/next", headers=bearer(tokens["bob"])).get_json()["assignment"]
    assert alices["assignment_id"] != bobs["assignment_id"]
    assert {alices["a"]["id"], alices["b"]["id"]} != {bobs["a"]["id"], bobs["b"]["id"]}
    stolen = client.post(
        "/api/labels",
        json={"assignment_id": alices["assignment_id"], "choice": "a"},
        headers=bearer(tokens["bob"]),
    )
    assert stolen.status_code == 403
    # The same through bob's own signed-in page, with bob's own valid CSRF value.
    bob_page = signed_in(app, tokens["bob"])
    form = {"assignment_id": str(alices["assignment_id"]), "choice": "b", "csrf": csrf_of(bob_page)}
    assert bob_page.post("/label", data=form).status_code == 403
    assert labels_in_db(ctx) == 0
    # Alice's pair is still hers, untouched.
    ok = client.post(
        "/api/labels",
        json={"assignment_id": alices["assignment_id"], "choice": "a"},
        headers=bearer(tokens["alice"]),
    )
    assert ok.status_code == 200 and ok.get_json()["status"] == "recorded"


def test_status_and_export_are_for_admins_only(app_env):
    app, _, tokens = app_env
    client = app.test_client()
    for path in ("/api/admin/status", "/api/admin/export", "/api/admin/export?format=csv"):
        assert client.get(path, headers=bearer(tokens["alice"])).status_code == 403
        assert client.get(path, headers=bearer(tokens["boss"])).status_code == 200
    alice = signed_in(app, tokens["alice"])
    assert alice.get("/admin").status_code == 403
    assert alice.get("/admin/export.jsonl").status_code == 403
    boss = signed_in(app, tokens["boss"])
    assert (
        app.test_client()
        .post("/login", data={"token": tokens["boss"]})
        .headers["Location"]
        .endswith("/admin")
    )
    assert boss.get("/admin").status_code == 200
    assert boss.get("/admin/export.csv").data.decode().splitlines() == ["id_a,id_b,stronger"]
    assert client.get("/api/admin/export?format=xml", headers=bearer(tokens["boss"])).status_code == 400


def test_dataset_text_is_escaped_everywhere_on_the_page(app_env):
    app, _, tokens = app_env
    page = signed_in(app, tokens["alice"]).get("/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    # The only script element is the app's own; no markup from the data survived as markup.
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/label.js">']
    # (Inside text, quotes need no escaping, so the script's text may show as is; it is not a script.)
    for raw in ("<img", "<iframe", "<b>", "<script>alert"):
        assert raw not in html
    # Escaped, as text: the quotes may be written either way (they are harmless in text).
    assert re.search(r"&lt;script&gt;alert\((&#34;|&quot;|\")prompt", html)
    assert "&lt;img src=x onerror=alert(" in html
    assert re.search(r"(&#34;|&quot;|\")&gt;&lt;iframe", html)
    # Data is not a template either. The page carries random hex tokens, so "49" may occur inside
    # one; only a standalone 49 would mean the expression was evaluated.
    assert "&amp; {{ 7 * 7 }}" in html
    assert re.search(r"(?<!\w)49(?!\w)", html) is None
    assert "<code>&lt;b&gt;</code>" in html
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"


def test_labelling_through_the_forms_with_undo(app_env):
    app, ctx, tokens = app_env
    client = signed_in(app, tokens["alice"])
    csrf = csrf_of(client)
    html = client.get("/").get_data(as_text=True)
    assignment = re.search(r'name="assignment_id" value="(\d+)"', html).group(1)
    saved = client.post("/label", data={"assignment_id": assignment, "choice": "b", "csrf": csrf})
    assert saved.status_code == 303 and saved.headers["Location"].endswith("/?n=saved")
    html = client.get("/?n=saved").get_data(as_text=True)
    assert "Saved." in html and "last: B stronger" in html and "you: 1 judged" in html
    assert re.search(r'name="assignment_id" value="(\d+)"', html).group(1) != assignment
    assert labels_in_db(ctx) == 1
    undone = client.post("/undo", data={"csrf": csrf})
    assert undone.headers["Location"].endswith("/?n=undone") and labels_in_db(ctx) == 0
    html = client.get("/").get_data(as_text=True)
    assert re.search(r'name="assignment_id" value="(\d+)"', html).group(1) == assignment  # back to fix it
    assert client.post("/undo", data={"csrf": csrf}).headers["Location"].endswith("/?n=nothing")
    assert client.get("/?n=<script>").status_code == 200  # unknown notices are ignored, not echoed


def test_forms_need_the_csrf_value_and_a_same_origin(app_env):
    app, ctx, tokens = app_env
    client = signed_in(app, tokens["alice"])
    html = client.get("/").get_data(as_text=True)
    assignment = re.search(r'name="assignment_id" value="(\d+)"', html).group(1)
    for csrf in ("", "0" * 32, csrf_of(signed_in(app, tokens["bob"]))):
        got = client.post("/label", data={"assignment_id": assignment, "choice": "a", "csrf": csrf})
        assert got.status_code == 403
    good = {"assignment_id": assignment, "choice": "a", "csrf": csrf_of(client)}
    assert client.post("/label", data=good, headers={"Origin": "http://evil.example"}).status_code == 403
    assert (
        client.post(
            "/login", data={"token": tokens["bob"]}, headers={"Origin": "http://evil.example"}
        ).status_code
        == 403
    )
    assert labels_in_db(ctx) == 0
    assert client.post("/label", data=good, headers={"Origin": "http://localhost"}).status_code == 303
    assert labels_in_db(ctx) == 1


def test_api_input_is_validated(app_env):
    app, ctx, tokens = app_env
    client = app.test_client()
    h = bearer(tokens["alice"])
    pair = client.get("/api/next", headers=h).get_json()["assignment"]
    assert set(pair) == {"assignment_id", "pair_id", "expires_at", "a", "b"}
    assert set(pair["a"]) == {"id", "prompt", "chosen", "rejected"}  # no scores: they would bias people
    aid = pair["assignment_id"]
    cases = [
        (dict(data="assignment_id=1&choice=a", content_type="application/x-www-form-urlencoded"), 415),
        (dict(data="{not json", content_type="application/json"), 400),
        (dict(json=[aid, "a"]), 400),
        (dict(json={"assignment_id": aid, "choice": "a", "extra": 1}), 400),
        (dict(json={"assignment_id": aid, "choice": "A"}), 400),
        (dict(json={"assignment_id": str(aid), "choice": "a"}), 400),
        (dict(json={"assignment_id": 10**9, "choice": "a"}), 404),
        (dict(json={"assignment_id": aid, "choice": "a" * 100_000}), 413),
    ]
    for kwargs, status in cases:
        got = client.post("/api/labels", headers=h, **kwargs)
        assert got.status_code == status, kwargs
        assert "error" in got.get_json()
    assert labels_in_db(ctx) == 0
    assert (
        client.post("/api/labels", headers=h, json={"assignment_id": aid, "choice": "same"}).status_code
        == 200
    )
    assert client.get("/api/progress", headers=h).get_json() == {
        "mine": 1,
        "mine_same": 1,
        "mine_skipped": 0,
        "counted": 0,
        "target": 6,
        "in_flight": 0,
    }


def test_when_the_target_is_met_the_page_says_so(app_env):
    app, ctx, tokens = app_env
    client = app.test_client()
    h = bearer(tokens["alice"])
    for _ in range(6):  # the 4 preferences have exactly 6 pairs; the target is 6
        pair = client.get("/api/next", headers=h).get_json()["assignment"]
        client.post("/api/labels", headers=h, json={"assignment_id": pair["assignment_id"], "choice": "a"})
    assert client.get("/api/next", headers=h).get_json()["assignment"] is None
    html = signed_in(app, tokens["bob"]).get("/").get_data(as_text=True)
    assert "Target reached" in html and "choice-a" not in html
    exported = client.get("/api/admin/export?format=jsonl", headers=bearer(tokens["boss"])).get_data(
        as_text=True
    )
    assert len(exported.splitlines()) == 6


def test_errors_are_json_under_the_api_and_pages_elsewhere(app_env):
    app, _, tokens = app_env
    client = app.test_client()
    api = client.get("/api/no-such-thing", headers=bearer(tokens["alice"]))
    assert api.status_code == 404 and api.get_json() == {"error": "not found"}
    page = client.get("/no-such-page")
    assert page.status_code == 404 and "There is no such page." in page.get_data(as_text=True)
    wrong = client.delete("/login")
    assert wrong.status_code == 405 and "does not accept that request" in wrong.get_data(as_text=True)


def test_sign_out_needs_the_csrf_value_and_ends_the_session_on_the_server(app_env):
    app, ctx, tokens = app_env
    client = signed_in(app, tokens["alice"])
    cookie = client.get_cookie(COOKIE).value
    assert cookie != tokens["alice"]  # the cookie holds a session secret, never the token
    assert client.post("/logout", data={}).status_code == 403
    assert (
        client.post(
            "/logout", data={"csrf": csrf_of(client)}, headers={"Origin": "http://evil.example"}
        ).status_code
        == 403
    )
    assert client.get("/").status_code == 200  # still signed in
    assert client.post("/logout", data={"csrf": csrf_of(client)}).status_code == 303
    replay = app.test_client()
    replay.set_cookie(COOKIE, cookie)  # a copy of the cookie taken before signing out
    assert replay.get("/").headers["Location"].endswith("/login")
    assert (
        app.test_client().get("/api/next", headers=bearer(tokens["alice"])).status_code == 200
    )  # token lives


def test_skip_through_the_form_records_the_reason_and_undo_brings_it_back(app_env):
    app, ctx, tokens = app_env
    client = signed_in(app, tokens["alice"])
    html = client.get("/").get_data(as_text=True)
    assignment = re.search(r'name="assignment_id" value="(\d+)"', html).group(1)
    assert 'value="broken"' in html and 'id="skip-form"' in html
    csrf = csrf_of(client)
    refused = client.post("/skip", data={"csrf": csrf, "assignment_id": assignment, "reason": "other"})
    assert refused.status_code == 400 and "note" in refused.get_data(as_text=True)
    done = client.post(
        "/skip", data={"csrf": csrf, "assignment_id": assignment, "reason": "broken", "note": "cut"}
    )
    assert done.headers["Location"].endswith("/?n=skipped")
    html = client.get("/?n=skipped").get_data(as_text=True)
    assert "Skipped; the reason is recorded." in html and "last: skipped" in html
    assert labels_in_db(ctx) == 0
    skips = app.test_client().get("/api/admin/skips?format=jsonl", headers=bearer(tokens["boss"]))
    assert [json.loads(line)["reason"] for line in skips.get_data(as_text=True).splitlines()] == ["broken"]
    assert client.post("/undo", data={"csrf": csrf}).headers["Location"].endswith("/?n=undone")
    assert (
        re.search(r'name="assignment_id" value="(\d+)"', client.get("/").get_data(as_text=True)).group(1)
        == assignment
    )


def test_the_page_renews_its_lease_through_renew(app_env):
    app, ctx, tokens = app_env
    client = signed_in(app, tokens["alice"])
    html = client.get("/").get_data(as_text=True)
    assignment = re.search(r'name="assignment_id" value="(\d+)"', html).group(1)
    assert re.search(r'data-expires-in="(\d+\.\d)" data-lease="600\.0"', html)
    csrf = csrf_of(client)
    got = client.post("/renew", data={"csrf": csrf, "assignment_id": assignment})
    assert got.status_code == 200 and 599 < got.get_json()["expires_in"] <= 600
    assert client.post("/renew", data={"csrf": "x", "assignment_id": assignment}).status_code == 403
    bob = signed_in(app, tokens["bob"])
    theirs = client.post("/renew", data={"csrf": csrf_of(bob), "assignment_id": assignment})
    assert theirs.status_code == 403  # bob's CSRF value is not alice's
    other = bob.post("/renew", data={"csrf": csrf_of(bob), "assignment_id": assignment})
    assert other.status_code == 403 and "not (or no longer) assigned to you" in other.get_json()["error"]
    api = app.test_client().post(
        "/api/renew", json={"assignment_id": int(assignment)}, headers=bearer(tokens["alice"])
    )
    assert api.status_code == 200 and api.get_json()["assignment_id"] == int(assignment)


def test_guidelines_come_before_the_first_pair_and_again_when_they_change(tmp_path):
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in HOSTILE), encoding="utf-8")
    guide = tmp_path / "guide.md"
    guide.write_text("# How to judge\n\n1. Read both.\n2. <script>alert(1)</script>\n", encoding="utf-8")
    ctx = build_context(tmp_path / "labels.sqlite", prefs, guidelines=guide)
    token = add_annotator(ctx.store.engine, "alice")
    app = create_app(ctx)
    client = signed_in(app, token)
    assert client.get("/").headers["Location"].endswith("/guidelines")
    page = client.get("/guidelines").get_data(as_text=True)
    assert "<h1>How to judge</h1>" in page and "<ol>" in page and "&lt;script&gt;" in page
    assert "start labelling" in page
    assert client.post("/guidelines/read", data={"csrf": "bad"}).status_code == 403
    assert (
        client.post("/guidelines/read", data={"csrf": csrf_of_page(client, "/guidelines")}).status_code == 303
    )
    html = client.get("/").get_data(as_text=True)
    assert 'id="label-form"' in html and 'id="guidelines-link"' in html
    assert "Back to labelling" in client.get("/guidelines").get_data(as_text=True)  # one key away, no gate
    api = app.test_client().get("/api/guidelines", headers=bearer(token)).get_json()
    assert api["guidelines"].startswith("# How to judge")
    guide.write_text("# How to judge, version 2\n", encoding="utf-8")
    again = create_app(build_context(tmp_path / "labels.sqlite", prefs, guidelines=guide))
    client2 = signed_in(again, token)
    assert client2.get("/").headers["Location"].endswith("/guidelines")


def csrf_of_page(client, path: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', client.get(path).get_data(as_text=True)).group(1)


def test_markdown_in_the_data_is_rendered_and_still_safe(tmp_path):
    rows = [
        {
            "id": f"m{i}",
            "prompt": "## Task\n\nCompare **these** in a table:",
            "chosen": "| a | b |\n|---|---|\n| 1 | 2 |\n\n- item\n\n"
            "[ok](https://example.org) [bad](javascript:alert(1))",
            "rejected": "```python\nprint('<x>')\n```\n\n<img src=x onerror=alert(1)> *fine*",
        }
        for i in range(2)
    ]
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ctx = build_context(tmp_path / "labels.sqlite", prefs)
    token = add_annotator(ctx.store.engine, "alice")
    html = signed_in(create_app(ctx), token).get("/").get_data(as_text=True)
    for piece in ("<h2>Task</h2>", "<strong>these</strong>", "<table>", "<li>item</li>", "<em>fine</em>"):
        assert piece in html
    assert '<pre data-lang="python"><code>print(&#39;&lt;x&gt;&#39;)' in html or "print('&lt;x&gt;')" in html
    assert (
        'href="https://example.org"' in html
        and "javascript:" not in html.split("<main>")[1].split("[bad]")[0]
    )
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
