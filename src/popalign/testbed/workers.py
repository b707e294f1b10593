"""Seeds side by side: each seed's runs in its own process, with progress reported to the parent.

Seeds are independent once the data and the SFT model exist (every run of a seed is judged against vanilla
DPO of that same seed), so ``reproduce`` hands whole seeds to a pool of ``workers`` processes. Each process
runs its seed's jobs in order, exactly as one process would, and puts a line on a queue after each job;
the parent turns those into its progress bar. Processes are spawned, not forked: the parent has loaded
torch and may hold threads. A worker whose parent dies (killed, not interrupted) stops at once rather than
train on unwatched: a rerun would otherwise race it for the same run folders.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

SeedJob = Callable[[Any, int, Any], list[str]]


def run_seeds(job: SeedJob, cfg: Any, seeds: list[int], workers: int, bar: Any) -> list[str]:
    """``job(cfg, seed, queue)`` for every seed in up to ``workers`` processes; what each ran, in order done.

    ``job`` must be a module-level function (it is pickled by reference) and put one line on ``queue``
    after each finished job; ``bar`` (a tqdm bar) advances by one per line. An error in any seed is raised
    here once the pool has stopped; finished runs keep their markers, so a rerun resumes.
    """
    ran: list[str] = []
    context = multiprocessing.get_context("spawn")
    # The queue reaches the workers when they start (no manager process that could outlive us).
    lines = context.Queue()
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(seeds)),
        mp_context=context,
        initializer=_start_worker,
        initargs=(lines, os.getpid()),
    )
    with pool:
        pending = {pool.submit(_run_job, job, cfg, seed) for seed in seeds}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                _drain(lines, bar)
                for future in done:
                    ran += future.result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    # The workers have exited, so their queue feeders have flushed: the last lines are in the pipe.
    _drain(lines, bar, wait=0.2)
    return ran


_LINES: Any = None


def _start_worker(lines: Any, parent: int) -> None:
    """Keep the progress queue, and exit as soon as ``parent`` is gone (the worker is re-parented)."""
    global _LINES
    _LINES = lines

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _run_job(job: SeedJob, cfg: Any, seed: int) -> list[str]:
    return job(cfg, seed, _LINES)


def _drain(lines: Any, bar: Any, wait: float = 0.0) -> None:
    while True:
        try:
            line = lines.get(timeout=wait) if wait else lines.get_nowait()
        except queue_module.Empty:
            return
        bar.set_postfix_str(line)
        bar.update()
