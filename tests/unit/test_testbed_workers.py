"""Seeds side by side in spawned processes: each seed runs once; progress and errors reach the parent."""

from __future__ import annotations

import os

import pytest

from popalign.testbed.workers import run_seeds


class Bar:
    def __init__(self):
        self.n, self.lines = 0, []

    def update(self, n: int = 1):
        self.n += n

    def set_postfix_str(self, text: str):
        self.lines.append(text)


def _job(cfg, seed, lines):
    if seed == cfg["fail"]:
        raise ValueError(f"seed {seed} failed")
    for run in cfg["runs"]:
        lines.put(f"{run} seed {seed}")
    return [f"{run}/seed-{seed}:{os.getpid()}" for run in cfg["runs"]]


def test_every_seed_runs_once_in_worker_processes():
    bar = Bar()
    ran = run_seeds(_job, {"runs": ["dpo", "dpo-pop-random"], "fail": None}, [0, 1, 2], 2, bar)
    names = sorted(r.split(":")[0] for r in ran)
    assert names == sorted(f"{r}/seed-{s}" for r in ("dpo", "dpo-pop-random") for s in (0, 1, 2))
    pids = {int(r.split(":")[1]) for r in ran}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert bar.n == 6 and sorted(bar.lines) == sorted(
        f"{r} seed {s}" for r in ("dpo", "dpo-pop-random") for s in (0, 1, 2)
    )


def test_an_error_in_a_seed_reaches_the_parent():
    with pytest.raises(ValueError, match="seed 1 failed"):
        run_seeds(_job, {"runs": ["dpo"], "fail": 1}, [0, 1], 2, Bar())


def _sleeper(cfg, seed, lines):
    import time
    from pathlib import Path

    Path(cfg["dir"], f"worker-{seed}.pid").write_text(str(os.getpid()))
    time.sleep(120)
    return []


def _alive(pid: int) -> bool:
    # An exited process that nobody reaped yet is a zombie ("Z"): gone for this purpose.
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_stop_when_the_parent_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    script = (
        "from tests.unit.test_testbed_workers import Bar, _sleeper\n"
        "from popalign.testbed.workers import run_seeds\n"
        f"run_seeds(_sleeper, {{'dir': {str(tmp_path)!r}}}, [0], 1, Bar())\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=root)
    pid_file = tmp_path / "worker-0.pid"
    deadline = time.time() + 60
    while not pid_file.is_file() and time.time() < deadline:
        time.sleep(0.2)
    worker = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 15
    while time.time() < deadline:
        if not _alive(worker):
            return
        time.sleep(0.2)
    os.kill(worker, signal.SIGKILL)
    pytest.fail("the worker outlived its killed parent")
