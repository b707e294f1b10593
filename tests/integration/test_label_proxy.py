"""The app behind a loopback reverse proxy that rewrites ``Host`` and says ``X-Forwarded-Proto: https``.

The proxy is Debian's nginx running the ``location /`` block of the example in ``docs/labelling.md``
(verbatim but for the upstream port, and ``https`` for ``$scheme`` since this loopback nginx speaks
plain HTTP), or, where nginx is not installed, a small Python proxy that does the same. With
``--trusted-proxy`` the session cookie is ``Secure`` and sign-in, labelling and sign-out pass the
same-origin check; with the proxy not trusted, the forwarded headers are ignored and the check
refuses, as it must.
"""

from __future__ import annotations

import http.client
import http.server
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("flask")
pytest.importorskip("waitress")
pytest.importorskip("sqlalchemy")

from popalign.label.accounts import add_annotator  # noqa: E402
from popalign.label.project import LabelSettings  # noqa: E402
from popalign.label.server import build_context, start_server  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs" / "labelling.md"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
PUBLIC = "labels.example.org"  # the name browsers use; the proxy forwards to 127.0.0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def docs_location_block() -> str:
    text = DOCS.read_text(encoding="utf-8")
    m = re.search(r"```nginx\n.*?(    location / \{\n.*?\n    \})\n", text, re.S)
    assert m, "docs/labelling.md lost its nginx example"
    return m.group(1)


NGINX_CONF = """@USER@
daemon off;
worker_processes 1;
pid @TMP@/nginx.pid;
error_log stderr warn;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path @TMP@/body;
  proxy_temp_path @TMP@/proxy;
  fastcgi_temp_path @TMP@/fcgi;
  uwsgi_temp_path @TMP@/uwsgi;
  scgi_temp_path @TMP@/scgi;
  server {
    listen 127.0.0.1:@PORT@;
    client_max_body_size 64k;
@LOCATION@
  }
}
"""


class NginxProxy:
    def __init__(self, upstream: int, tmp: Path) -> None:
        self.port = free_port()
        block = docs_location_block().replace("127.0.0.1:8000", f"127.0.0.1:{upstream}")
        block = block.replace("$scheme", "https")
        conf = tmp / "nginx.conf"
        # As root, nginx's workers would switch to "nobody", who cannot write the temp folders here.
        user = "user root;" if Path("/proc/self").owner() == "root" else ""
        conf.write_text(
            NGINX_CONF.replace("@USER@", user)
            .replace("@TMP@", str(tmp))
            .replace("@PORT@", str(self.port))
            .replace("@LOCATION@", block)
        )
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(conf), "-p", str(tmp)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("nginx did not start:\n" + self.proc.stdout.read())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError("nginx did not listen in time")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class PythonProxy:
    """What the docs' nginx block does: rewrite Host to the upstream, add the X-Forwarded-* headers."""

    def __init__(self, upstream: int, tmp: Path) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                headers.update(
                    {
                        "Host": f"127.0.0.1:{upstream}",
                        "X-Forwarded-Proto": "https",
                        "X-Forwarded-Host": self.headers.get("Host", ""),
                        "X-Forwarded-For": self.client_address[0],
                    }
                )
                conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=30)
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = _forward

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


PROXIES = [
    pytest.param(
        NginxProxy, id="nginx", marks=pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
    ),
    pytest.param(PythonProxy, id="python"),
]


class Browser:
    """Requests as a browser on https://labels.example.org would send them, through the proxy."""

    def __init__(self, port: int) -> None:
        self.port, self.cookie = port, None

    def request(self, method: str, path: str, form: dict | None = None, origin: str = f"https://{PUBLIC}"):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Host": PUBLIC}
        if method == "POST":
            headers["Origin"] = origin
        if self.cookie:
            headers["Cookie"] = self.cookie
        body = None
        if form is not None:
            from urllib.parse import urlencode

            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read().decode("utf-8", "replace")
        conn.close()
        return resp, data


@pytest.fixture()
def served(tmp_path):
    prefs = tmp_path / "prefs.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"q{i}", "chosen": "c", "rejected": "r"} for i in range(4)]
    prefs.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ctx = build_context(tmp_path / "labels.sqlite", prefs, LabelSettings(target=3))
    return ctx, add_annotator(ctx.store.engine, "ann")


@pytest.mark.parametrize("proxy_kind", PROXIES)
def test_sign_in_label_and_sign_out_through_an_https_proxy(served, tmp_path, proxy_kind):
    ctx, token = served
    with start_server(ctx, trusted_proxy="::1, 127.0.0.1") as app:
        proxy = proxy_kind(int(app.url.rsplit(":", 1)[1]), tmp_path)
        try:
            browser = Browser(proxy.port)
            resp, _ = browser.request("POST", "/login", {"token": token})
            assert resp.status == 303, resp.status
            cookie = resp.getheader("Set-Cookie")
            assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
            browser.cookie = cookie.split(";", 1)[0]
            resp, page = browser.request("GET", "/")
            assert resp.status == 200 and 'id="label-form"' in page
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
            assignment = re.search(r'name="assignment_id" value="(\d+)"', page).group(1)
            resp, _ = browser.request(
                "POST", "/label", {"csrf": csrf, "assignment_id": assignment, "choice": "a"}
            )
            assert resp.status == 303 and resp.getheader("Location").endswith("/?n=saved")
            # A foreign origin is still refused behind the proxy, and so is the plain-http one.
            for origin in ("https://evil.example", f"http://{PUBLIC}"):
                resp, _ = browser.request("POST", "/logout", {"csrf": csrf}, origin=origin)
                assert resp.status == 403
            resp, _ = browser.request("POST", "/logout", {"csrf": "0" * 32})
            assert resp.status == 403  # sign-out needs the CSRF value
            resp, _ = browser.request("POST", "/logout", {"csrf": csrf})
            assert resp.status == 303 and "Max-Age=0" in resp.getheader("Set-Cookie")
            resp, _ = browser.request("GET", "/")  # the old cookie, replayed: the session is over
            assert resp.status == 303 and resp.getheader("Location").endswith("/login")
        finally:
            proxy.stop()
    with ctx.store.engine.connect() as conn:
        from sqlalchemy import text

        assert conn.execute(text("SELECT count(*) FROM labels")).scalar_one() == 1


@pytest.mark.parametrize("proxy_kind", PROXIES)
def test_forwarded_headers_from_an_untrusted_peer_are_ignored(served, tmp_path, proxy_kind):
    ctx, token = served
    with start_server(ctx, trusted_proxy="10.255.255.1") as app:  # not the proxy's address
        proxy = proxy_kind(int(app.url.rsplit(":", 1)[1]), tmp_path)
        try:
            resp, _ = Browser(proxy.port).request("POST", "/login", {"token": token})
            # The origin https://labels.example.org is not what the app sees (http, 127.0.0.1:port).
            assert resp.status == 403
        finally:
            proxy.stop()
