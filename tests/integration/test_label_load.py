"""Load: 20 annotators label 2,000 pairs at once over loopback HTTP; nothing is lost or served twice.

The server is the real ``popalign label serve`` (waitress, SQLite in WAL mode) in its own process. At
the end it is killed with SIGKILL, not stopped, so the database is read as a crash would leave it:
every label the server answered "recorded" for must be there.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("flask")
pytest.importorskip("waitress")
sa = pytest.importorskip("sqlalchemy")

from tests.integration._label_postgres import postgres_url  # noqa: E402

ANNOTATORS = 20
PER_ANNOTATOR = 100
TOTAL = ANNOTATORS * PER_ANNOTATOR
DEADLINE_S = 120.0  # the whole run stops by itself after this, pass or fail

# `popalign label ...` without going through popalign.cli.main, so the test does not depend on the
# command list there.
LABEL_CLI = (
    "import argparse, sys\n"
    "from popalign.cli import label\n"
    "p = argparse.ArgumentParser(prog='popalign')\n"
    "label.register(p.add_subparsers(), 'label')\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.func(a))\n"
)


def start_server(args: list[str], cwd: Path, log: list[str]) -> tuple[subprocess.Popen, str]:
    """Start ``popalign label serve``; its output lines go to ``log``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LABEL_CLI, "label", "serve", *args, "--host", "127.0.0.1", "--port", "0"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        m = re.search(r"listening on (http://127\.0\.0\.1:(\d+))", line)
        if m:
            # Keep draining its output so the server never blocks on a full pipe.
            threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True).start()
            return proc, m.group(2)
    proc.kill()
    raise AssertionError("the server did not start:\n" + "".join(seen))


class Client:
    """One annotator: a keep-alive HTTP connection and their token."""

    def __init__(self, port: str, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
        self.token = token

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        return resp.status, json.loads(resp.read())


def annotate(port: str, token: str, name: str, seed: int, out: list, errors: list, stop_at: float) -> None:
    rng = random.Random(seed)
    client = Client(port, token)
    try:
        for _ in range(PER_ANNOTATOR):
            if time.monotonic() > stop_at:
                errors.append(f"{name}: out of time")
                return
            status, body = client.call("GET", "/api/next")
            if status != 200 or body["assignment"] is None:
                errors.append(f"{name}: next -> {status} {body}")
                return
            pair = body["assignment"]
            choice = rng.choice("ab")
            status, ack = client.call(
                "POST", "/api/labels", {"assignment_id": pair["assignment_id"], "choice": choice}
            )
            if status != 200 or ack.get("status") != "recorded":
                errors.append(f"{name}: label -> {status} {ack}")
                return
            out.append((name, pair["assignment_id"], pair["a"]["id"], pair["b"]["id"], choice))
    except Exception as exc:  # a thread must report, never die silently
        errors.append(f"{name}: {exc!r}")
    finally:
        client.conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_twenty_annotators_label_two_thousand_pairs_with_nothing_lost(tmp_path, ultrafeedback_dir, backend):
    from popalign.label.accounts import add_annotator
    from popalign.label.db import build_metadata, make_engine

    if backend == "postgres":
        # A scratch database (POPALIGN_TEST_POSTGRES_URL, or a local cluster): its label tables are dropped.
        db = postgres_url()
        scratch = sa.create_engine(db)
        build_metadata().drop_all(scratch)
        scratch.dispose()
    else:
        db = tmp_path / "labels.sqlite"
    engine = make_engine(db)
    tokens = {f"ann{i:02d}": add_annotator(engine, f"ann{i:02d}") for i in range(ANNOTATORS)}
    engine.dispose()
    prefs = str(ultrafeedback_dir / "train.jsonl")
    log: list[str] = []
    proc, port = start_server(
        ["--prefs", prefs, "--db", str(db), "--strategy", "random", "--target", str(TOTAL), "--threads", "8"],
        tmp_path,
        log,
    )
    accepted: list[tuple] = []
    errors: list[str] = []
    try:
        stop_at = time.monotonic() + DEADLINE_S
        threads = [
            threading.Thread(target=annotate, args=(port, tok, name, i, accepted, errors, stop_at))
            for i, (name, tok) in enumerate(tokens.items())
        ]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE_S + 30)
        took = time.monotonic() - t0
        print(f"{backend}: {TOTAL:,} labels in {took:.1f} s, {TOTAL / took:.0f} labels/s")
        # With the target met, the server has nothing more to hand out.
        status, body = Client(port, tokens["ann00"]).call("GET", "/api/next")
        assert (status, body["assignment"]) == (200, None)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # a crash, not a clean shutdown
        proc.wait(10)
    assert errors == []
    assert len(accepted) == TOTAL
    # Queued requests are reported as one line per 10 s at most, never one line each.
    assert not any("Task queue depth" in line for line in log)
    assert sum("waiting for a free thread" in line for line in log) <= took / 10 + 1

    # Client side: 2,000 distinct assignments and 2,000 distinct unordered pairs.
    assert len({a[1] for a in accepted}) == TOTAL
    assert len({frozenset(a[2:4]) for a in accepted}) == TOTAL

    # Server side, as the crash left it: exactly the accepted labels, each once, by its annotator.
    engine = make_engine(db)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT n.name, l.assignment_id, p.id_a, p.id_b, l.choice FROM labels l "
                "JOIN pairs p ON p.pair_id = l.pair_id JOIN annotators n ON n.annotator_id = l.annotator_id"
            )
        ).all()
        n_assignments = conn.execute(sa.text("SELECT count(*) FROM assignments")).scalar_one()
        n_pairs = conn.execute(sa.text("SELECT count(*) FROM pairs")).scalar_one()
        open_left = conn.execute(sa.text("SELECT count(*) FROM assignments WHERE status='open'")).scalar_one()
    assert sorted(tuple(r) for r in rows) == sorted(accepted)
    assert (n_assignments, n_pairs, open_left) == (TOTAL, TOTAL, 0)
    per_annotator = {name: sum(a[0] == name for a in accepted) for name in tokens}
    assert set(per_annotator.values()) == {PER_ANNOTATOR}
