"""Runs side by side in spawned processes: each job once, after what it needs; errors reach the parent."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from popalign.testbed.workers import run_jobs


class Bar:
    def __init__(self):
        self.n, self.lines = 0, []

    def update(self, n: int = 1):
        self.n += n

    def set_postfix_str(self, text: str):
        self.lines.append(text)


def _job(cfg, key):
    run, seed = key
    if seed == cfg.get("fail"):
        raise ValueError(f"seed {seed} failed")
    log = Path(cfg["dir"], "log")
    # The dependency check: a run's baseline must have written its line before the run starts.
    if run != "dpo":
        assert f"end dpo {seed}" in log.read_text(), f"{run} seed {seed} started before its baseline"
    time.sleep(0.05 if run == "dpo" else 0.01)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"end {run} {seed}\n")
    return [f"{run}/seed-{seed}:{os.getpid()}"]


def _keys(runs, seeds):
    keys = [(r, s) for r in runs for s in seeds]
    return keys, {(r, s): ({("dpo", s)} if r != "dpo" else set()) for r, s in keys}


def test_every_job_runs_once_in_worker_processes_after_what_it_needs(tmp_path):
    (tmp_path / "log").write_text("")
    keys, needs = _keys(["dpo", "dpo-pop-random", "dpo-margin"], [0, 1, 2])
    bar = Bar()
    ran = run_jobs(_job, {"dir": str(tmp_path)}, keys, needs, 2, bar, label=lambda k: f"{k[0]} seed {k[1]}")
    assert sorted(r.split(":")[0] for r in ran) == sorted(f"{r}/seed-{s}" for r, s in keys)
    pids = {int(r.split(":")[1]) for r in ran}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert bar.n == 9 and sorted(bar.lines) == sorted(f"{r} seed {s}" for r, s in keys)
    assert len((tmp_path / "log").read_text().splitlines()) == 9


def test_an_error_in_a_job_reaches_the_parent(tmp_path):
    (tmp_path / "log").write_text("")
    keys, needs = _keys(["dpo"], [0, 1])
    with pytest.raises(ValueError, match="seed 1 failed"):
        run_jobs(_job, {"dir": str(tmp_path), "fail": 1}, keys, needs, 2, Bar())


def test_jobs_that_cannot_start_are_an_error_not_a_hang():
    with pytest.raises(ValueError, match="not jobs"):
        run_jobs(_job, {}, [("a", 0)], {("a", 0): {("b", 0)}}, 2, Bar())
    with pytest.raises(ValueError, match="wait on each other"):
        run_jobs(_job, {}, [("a", 0), ("b", 0)], {("a", 0): {("b", 0)}, ("b", 0): {("a", 0)}}, 2, Bar())


def _sleeper(cfg, key):
    Path(cfg["dir"], f"worker-{key[1]}.pid").write_text(str(os.getpid()))
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

    root = Path(__file__).resolve().parents[2]
    script = (
        "from tests.unit.test_testbed_workers import Bar, _sleeper\n"
        "from popalign.testbed.workers import run_jobs\n"
        f"run_jobs(_sleeper, {{'dir': {str(tmp_path)!r}}}, [('dpo', 0)], {{}}, 1, Bar())\n"
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


def test_the_schedule_starts_every_baseline_first_then_the_longest_runs():
    from popalign.config import load_config
    from popalign.testbed.plan import plan_runs
    from popalign.testbed.reproduce import schedule
    from popalign.testbed.settings import BASELINE, ReproduceConfig

    cfg = load_config(ReproduceConfig, None, ["seeds=[0,1]"])
    runs = plan_runs(cfg)
    keys, needs = schedule(cfg, runs)
    assert sorted(keys) == sorted((r.name, s) for r in runs for s in (0, 1))
    assert keys[:2] == [(BASELINE, 0), (BASELINE, 1)]
    long = {r.name for r in runs if r.uses_pop or r.matched_to}
    kinds = [name in long for name, _ in keys[2:]]
    assert kinds == sorted(kinds, reverse=True) and any(kinds) and not all(kinds)
    assert needs[(BASELINE, 1)] == set()
    assert all(needs[k] == {(BASELINE, k[1])} for k in keys[2:])
