"""The labelling page in a real headless Chromium: clicks, keys, undo, escaping, the export, Markdown,
the guidelines, skip with a reason, and lease renewal.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/install_browser_test_deps.sh``) and the
``selenium`` package; skips without them. Set ``POPALIGN_LABEL_SCREENSHOT=docs/img/label_app.png`` to
refresh the screenshot in the docs from the same run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("flask")
pytest.importorskip("sqlalchemy")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1440,1000",
]
# Rows of the UltraFeedback sample (0-based lines) whose responses hold code blocks.
CODE_ROWS = (47, 529, 871)

if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(
        "needs chromium and chromedriver (run scripts/install_browser_test_deps.sh)", allow_module_level=True
    )


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="popalign-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def served(tmp_path, ultrafeedback_dir):
    """A server on a free loopback port over three real preferences with code; yields (url, ctx, tokens)."""
    from popalign.label.accounts import add_annotator
    from popalign.label.project import LabelSettings
    from popalign.label.server import build_context, start_server

    lines = (ultrafeedback_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(lines[i] + "\n" for i in CODE_ROWS), encoding="utf-8")
    # min_gap=0: all three pairs are served (with the default gap of 1, two of their margins are too close).
    ctx = build_context(tmp_path / "labels.sqlite", prefs, LabelSettings(min_gap=0))
    tokens = {name: add_annotator(ctx.store.engine, name, admin=name == "boss") for name in ("ann", "boss")}
    with start_server(ctx) as server:
        yield server.url, ctx, tokens


def act_and_wait(driver, action) -> None:
    """Run ``action`` (a click or key press that posts a form) and wait for the next page."""
    old = driver.find_element(By.TAG_NAME, "html")
    action()
    WebDriverWait(driver, 15).until(EC.staleness_of(old))
    WebDriverWait(driver, 15).until(lambda d: d.execute_script("return document.readyState") == "complete")


def sign_in(driver, url: str, token: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{url}/login")
    driver.find_element(By.ID, "token").send_keys(token)
    act_and_wait(driver, driver.find_element(By.ID, "sign-in").click)
    assert driver.find_element(By.ID, "annotator").text


def shown_pair(driver) -> tuple[str, str]:
    return (
        driver.find_element(By.ID, "pref-a").get_attribute("data-id"),
        driver.find_element(By.ID, "pref-b").get_attribute("data-id"),
    )


def press(driver, key: str) -> None:
    act_and_wait(driver, lambda: driver.find_element(By.TAG_NAME, "body").send_keys(key))


def exported(url: str, token: str) -> list[dict]:
    req = urllib.request.Request(f"{url}/api/admin/export?format=jsonl")
    req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return [json.loads(line) for line in resp.read().decode().splitlines()]


def test_labelling_by_clicking_then_export(browser, served, tmp_path):
    url, _, tokens = served
    sign_in(browser, url, tokens["ann"])
    assert "0 / 3 labels" in browser.find_element(By.ID, "progress-text").text
    expected = []
    for button, stronger in (("choice-a", "a"), ("choice-same", None), ("choice-b", "b")):
        id_a, id_b = shown_pair(browser)
        act_and_wait(browser, browser.find_element(By.ID, button).click)
        if stronger:
            expected.append({"id_a": id_a, "id_b": id_b, "stronger": stronger})
        if button == "choice-a":
            assert browser.find_element(By.ID, "notice").text == "Saved."
            assert "1 / 3 labels" in browser.find_element(By.ID, "progress-text").text
            shot = tmp_path / "label_app.png"
            browser.save_screenshot(str(shot))
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            if os.environ.get("POPALIGN_LABEL_SCREENSHOT"):
                target = Path(os.environ["POPALIGN_LABEL_SCREENSHOT"])
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, target)
    # Three preferences have three pairs; "about the same" used one without counting, so none is left.
    assert browser.find_element(By.ID, "empty").text.startswith("Nothing to label right now")
    assert "you: 3 judged" in browser.find_element(By.ID, "mine").text
    assert exported(url, tokens["boss"]) == expected


def test_labelling_by_keyboard_with_undo_then_export(browser, served):
    url, _, tokens = served
    sign_in(browser, url, tokens["ann"])
    first = shown_pair(browser)
    press(browser, "1")  # A is stronger
    second = shown_pair(browser)
    assert second != first
    press(browser, "s")  # about the same
    press(browser, "u")  # undo: the second pair comes back
    assert shown_pair(browser) == second
    assert browser.find_element(By.ID, "notice").text.startswith("Undone")
    assert "last: A stronger" in browser.find_element(By.ID, "last").text
    press(browser, "b")  # judged again, now B is stronger
    third = shown_pair(browser)
    press(browser, "3")  # B is stronger
    assert exported(url, tokens["boss"]) == [
        {"id_a": first[0], "id_b": first[1], "stronger": "a"},
        {"id_a": second[0], "id_b": second[1], "stronger": "b"},
        {"id_a": third[0], "id_b": third[1], "stronger": "b"},
    ]


def test_keys_typed_into_the_token_field_do_not_label(browser, served):
    url, ctx, tokens = served
    browser.delete_all_cookies()
    browser.get(f"{url}/login")
    field = browser.find_element(By.ID, "token")
    field.send_keys("ab3")
    assert field.get_attribute("value") == "ab3" and browser.current_url.endswith("/login")


def test_hostile_dataset_text_stays_text_in_the_browser(browser, tmp_path):
    from popalign.label.accounts import add_annotator
    from popalign.label.server import build_context, start_server

    rows = [
        {
            "id": f"x{i}",
            "prompt": f"<script>window.pwned = {i}</script>Hi {i}",
            "chosen": f'<img src="nowhere" onerror="window.pwned = {i}">ok',
            "rejected": "```html\n<script>window.pwned = 9</script>\n```",
        }
        for i in range(2)
    ]
    prefs = tmp_path / "hostile.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ctx = build_context(tmp_path / "hostile.sqlite", prefs)
    token = add_annotator(ctx.store.engine, "ann")
    with start_server(ctx) as server:
        sign_in(browser, server.url, token)
        assert browser.execute_script("return window.pwned") is None
        assert browser.find_elements(By.CSS_SELECTOR, "main img, main script") == []
        text = browser.find_element(By.ID, "pref-a").text
        assert "<script>window.pwned" in text and '<img src="nowhere"' in text


def serve_rows(tmp_path, rows, **kwargs):
    """A server over ``rows`` with annotators ann and boss (admin); yields (url, ctx, tokens)."""
    from popalign.label.accounts import add_annotator
    from popalign.label.server import build_context, start_server

    prefs = tmp_path / "rows.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ctx = build_context(tmp_path / "rows.sqlite", prefs, **kwargs)
    tokens = {
        name: add_annotator(ctx.store.engine, name, admin=name == "boss") for name in ("ann", "bob", "boss")
    }
    return ctx, tokens, start_server(ctx)


MARKDOWN_ROWS = [
    {
        "id": f"md{i}",
        "prompt": "# Sorting\n\nWrite **two** ways to sort:\n\n1. in place\n2. a copy",
        "chosen": "| way | keeps input |\n|---|---|\n| `sorted(x)` | yes |\n| `x.sort()` | no |\n\n"
        "```python\nprint(sorted([3, 1, 2]))\n```",
        "rejected": "Use *bubble sort*. [docs](https://docs.python.org) [run](javascript:window.pwned=1) "
        '<a href="javascript:window.pwned=2">x</a> <details open ontoggle="window.pwned=3">',
    }
    for i in range(2)
]


def test_markdown_renders_as_markup_and_the_code_language_sits_above_the_code(browser, tmp_path):
    ctx, tokens, server = serve_rows(tmp_path, MARKDOWN_ROWS)
    with server:
        sign_in(browser, server.url, tokens["ann"])
        side = browser.find_element(By.ID, "pref-a")
        assert side.find_element(By.CSS_SELECTOR, ".prompt h1").text == "Sorting"
        assert side.find_element(By.CSS_SELECTOR, ".prompt strong").text == "two"
        assert len(side.find_elements(By.CSS_SELECTOR, ".prompt ol li")) == 2
        cells = [c.text for c in side.find_elements(By.CSS_SELECTOR, ".chosen table td")]
        assert cells == ["sorted(x)", "yes", "x.sort()", "no"]
        assert side.find_element(By.CSS_SELECTOR, ".rejected em").text == "bubble sort"
        pre = side.find_element(By.CSS_SELECTOR, ".chosen pre[data-lang='python']")
        assert pre.find_element(By.TAG_NAME, "code").text == "print(sorted([3, 1, 2]))"
        # The language tag is a line of its own: the code starts below it, not under it.
        gap = browser.execute_script(
            "var p = arguments[0], c = p.querySelector('code');"
            "return c.getBoundingClientRect().top - p.getBoundingClientRect().top;",
            pre,
        )
        label = browser.execute_script("return getComputedStyle(arguments[0], '::before').display;", pre)
        assert label == "block" and gap > 16
        # Only the safe link is a link; the others are text, and nothing ran.
        hrefs = [a.get_attribute("href") for a in side.find_elements(By.CSS_SELECTOR, ".rejected a")]
        assert "https://docs.python.org/" in hrefs and not any(
            h and h.startswith("javascript") for h in hrefs
        )
        for a in side.find_elements(By.CSS_SELECTOR, ".rejected a"):
            if not a.get_attribute("href"):
                a.click()
        assert browser.find_elements(By.CSS_SELECTOR, "main details[ontoggle]") == []
        assert browser.execute_script("return window.pwned") is None
        assert "[run](javascript:window.pwned=1)" in side.find_element(By.CSS_SELECTOR, ".rejected").text
        # The other layout: chosen and rejected side by side; the choice is remembered.
        browser.find_element(By.TAG_NAME, "body").send_keys("l")
        pair = browser.find_element(By.CSS_SELECTOR, ".pair")
        assert "responses-side-by-side" in pair.get_attribute("class")
        chosen, rejected = (
            side.find_element(By.CSS_SELECTOR, f".response.{k}") for k in ("chosen", "rejected")
        )
        assert (
            chosen.location["y"] == rejected.location["y"] and chosen.location["x"] < rejected.location["x"]
        )
        browser.refresh()
        assert "responses-side-by-side" in browser.find_element(By.CSS_SELECTOR, ".pair").get_attribute(
            "class"
        )
        browser.find_element(By.TAG_NAME, "body").send_keys("l")
        assert "responses-side-by-side" not in browser.find_element(By.CSS_SELECTOR, ".pair").get_attribute(
            "class"
        )


def test_guidelines_come_first_and_are_one_key_away(browser, tmp_path):
    guide = tmp_path / "guide.md"
    guide.write_text("# Judging\n\nPrefer **factual** answers.\n\n- ignore length\n", encoding="utf-8")
    ctx, tokens, server = serve_rows(tmp_path, MARKDOWN_ROWS, guidelines=guide)
    with server:
        sign_in(browser, server.url, tokens["ann"])
        assert browser.current_url.endswith("/guidelines")
        assert browser.find_element(By.CSS_SELECTOR, "#guidelines h1").text == "Judging"
        assert browser.find_element(By.CSS_SELECTOR, "#guidelines strong").text == "factual"
        press(browser, Keys.ENTER)  # "I have read these"
        assert browser.find_element(By.ID, "label-form")
        first = shown_pair(browser)
        press(browser, "g")
        assert browser.current_url.endswith("/guidelines") and "Back to labelling" in browser.page_source
        press(browser, Keys.ENTER)
        assert shown_pair(browser) == first  # the same pair, still reserved


def test_skip_with_a_reason(browser, tmp_path):
    ctx, tokens, server = serve_rows(tmp_path, MARKDOWN_ROWS)
    with server:
        sign_in(browser, server.url, tokens["ann"])
        skipped = shown_pair(browser)
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("k")
        assert browser.find_element(By.ID, "skip").get_attribute("open") is not None
        browser.find_element(By.ID, "reason-broken").click()
        note = browser.find_element(By.ID, "skip-note")
        note.send_keys("ab")  # typed into the note: no shortcut fires
        assert browser.find_element(By.ID, "skip").get_attribute("open") is not None
        act_and_wait(browser, browser.find_element(By.ID, "skip-submit").click)
        assert browser.find_element(By.ID, "notice").text == "Skipped; the reason is recorded."
        assert "last: skipped" in browser.find_element(By.ID, "last").text
        req = urllib.request.Request(f"{server.url}/api/admin/skips?format=jsonl")
        req.add_header("Authorization", f"Bearer {tokens['boss']}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            rows = [json.loads(line) for line in resp.read().decode().splitlines()]
        assert [(r["id_a"], r["id_b"], r["annotator"], r["reason"], r["note"]) for r in rows] == [
            (*skipped, "ann", "broken", "ab")
        ]
        assert exported(server.url, tokens["boss"]) == []  # a skip is never a label


def test_the_open_page_keeps_its_pair_and_warns_when_it_cannot(browser, tmp_path):
    import time

    from popalign.label.project import LabelSettings

    rows = [{**MARKDOWN_ROWS[0], "id": f"r{i}"} for i in range(4)]
    ctx, tokens, server = serve_rows(tmp_path, rows, settings=LabelSettings(lease_s=3))
    with server:
        sign_in(browser, server.url, tokens["ann"])
        mine = shown_pair(browser)
        time.sleep(5)  # longer than the lease: the page renewed it meanwhile
        req = urllib.request.Request(f"{server.url}/api/next")
        req.add_header("Authorization", f"Bearer {tokens['bob']}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            bobs = json.loads(resp.read())["assignment"]
        assert {bobs["a"]["id"], bobs["b"]["id"]} != set(mine)
        assert not browser.find_element(By.ID, "lease-warning").is_displayed()
        act_and_wait(browser, browser.find_element(By.ID, "choice-a").click)
        assert browser.find_element(By.ID, "notice").text == "Saved."
        # Now the session ends on the server: renewals fail and the page counts down.
        with ctx.store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE sessions SET revoked_at = 1")
        warning = browser.find_element(By.ID, "lease-warning")
        WebDriverWait(browser, 15).until(lambda d: warning.is_displayed())
        assert "you are signed out" in warning.text and (
            "reserved for you for 0:0" in warning.text or "ended" in warning.text
        )
        WebDriverWait(browser, 15).until(lambda d: "has ended" in warning.text)
