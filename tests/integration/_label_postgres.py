"""A scratch PostgreSQL for the label tests: ``POPALIGN_TEST_POSTGRES_URL`` if set, else a throwaway
cluster started from the installed server binaries (Debian's ``postgresql`` package, which
``scripts/install_label_server_test_deps.sh`` installs), else a skip that says why — never a failure.

The cluster lives in a temporary folder, listens on a free loopback port and a private socket
folder, runs as the ``postgres`` user when the tests run as root (the server refuses root), and is
stopped and removed when the test process ends, however it ends: at exit, or by a watcher process
when the test process is killed (SIGTERM and SIGKILL skip ``atexit``). One cluster serves the whole
test session.
"""

from __future__ import annotations

import atexit
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

URL_VAR = "POPALIGN_TEST_POSTGRES_URL"
_state: dict[str, str] = {}

# Runs detached: waits for the test process to go, then stops the cluster and removes its folder.
_WATCHER = """
import json, os, shutil, subprocess, sys, time
pid, stop, root = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
while os.path.isdir(root):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        subprocess.run(stop, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        break
    time.sleep(1)
"""


def _bin_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return None if initdb is None else os.path.dirname(initdb)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start() -> str:
    """Start a cluster and return its URL; raises ``RuntimeError`` saying why it could not."""
    bindir = _bin_dir()
    if bindir is None:
        raise RuntimeError("no PostgreSQL server binaries (run scripts/install_label_server_test_deps.sh)")
    prefix: list[str] = []
    root = tempfile.mkdtemp(prefix="popalign-pg-")
    if os.geteuid() == 0:
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root and there is no 'postgres' user to run the server") from None
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = [shutil.which("runuser") or "runuser", "-u", "postgres", "--"]
    data, port = os.path.join(root, "data"), _free_port()

    def run(*cmd: str) -> None:
        done = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(
                f"{os.path.basename(cmd[0])} failed: {(done.stderr or done.stdout).strip()[-500:]}"
            )

    run(f"{bindir}/initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off"
    run(
        f"{bindir}/pg_ctl", "-D", data, "-o", opts, "-l", os.path.join(root, "log"), "-w", "-t", "60", "start"
    )

    stop_cmd = [*prefix, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"]

    def stop() -> None:
        subprocess.run(stop_cmd, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)

    atexit.register(stop)
    subprocess.Popen(
        [sys.executable, "-c", _WATCHER, str(os.getpid()), json.dumps(stop_cmd), root],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run(f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "popalign_labels")
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/popalign_labels"


def postgres_url() -> str:
    """The scratch database's URL, or ``pytest.skip`` with the reason (psycopg missing, no server...)."""
    pytest.importorskip("psycopg", reason="PostgreSQL tests need psycopg (the label extra installs it)")
    if os.environ.get(URL_VAR):
        return os.environ[URL_VAR]
    if "url" not in _state and "error" not in _state:
        try:
            _state["url"] = _start()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            _state["error"] = str(exc)
    if "error" in _state:
        pytest.skip(f"no PostgreSQL to test against: set {URL_VAR}, or {_state['error']}")
    return _state["url"]
