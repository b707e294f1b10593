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
