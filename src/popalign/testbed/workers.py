"""Runs side by side: each (run, seed) in a pool of worker processes, as soon as what it needs is done.

Runs are independent once the data and the SFT model exist, except that every run of a seed is judged
against vanilla DPO of that same seed, so ``reproduce`` hands single runs to a pool of ``workers``
processes with those dependencies. Scheduling runs rather than whole seeds keeps both processes busy to the
end (five seeds on two workers would otherwise leave one idle for the last seed's whole length), and the
longest runs can start first. Each job trains and evaluates exactly as one process would. Processes are
spawned, not forked: the parent has loaded torch and may hold threads. A worker whose parent dies (killed,
not interrupted) stops at once rather than train on unwatched: a rerun would otherwise race it for the same
run folders.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

Job = Callable[[Any, Any], list[str]]


def run_jobs(
    job: Job,
    cfg: Any,
    keys: list[Hashable],
    needs: Mapping[Hashable, set[Hashable]],
    workers: int,
    bar: Any,
    label: Callable[[Hashable], str] = str,
) -> list[str]:
    """``job(cfg, key)`` for every key in up to ``workers`` processes; what each ran, in the order done.

    A key starts once every key in ``needs[key]`` has finished, and among the ready ones in the order of
    ``keys`` (put the longest first). At most ``workers`` jobs are handed out at once, so that order holds
    for jobs that become ready later. ``job`` must be a module-level function (it is pickled by reference);
    ``bar`` (a tqdm bar) advances by one per finished job, showing ``label(key)``. An error in any job is
    raised here once the running ones have stopped; finished runs keep their markers, so a rerun resumes.
    """
    missing = {k: n - set(keys) for k, n in needs.items() if n - set(keys)}
    if missing:
        raise ValueError(f"jobs wait on keys that are not jobs: {missing}")
    ran: list[str] = []
    finished: set[Hashable] = set()
    waiting = list(keys)
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=max(1, min(workers, len(keys))),
        mp_context=context,
        initializer=_start_worker,
        initargs=(os.getpid(),),
    )
    running: dict[Future, Hashable] = {}
    with pool:
        try:
            while waiting or running:
                for key in [k for k in waiting if needs.get(k, set()) <= finished]:
                    if len(running) >= workers:
                        break
                    waiting.remove(key)
                    running[pool.submit(job, cfg, key)] = key
                if not running:
                    raise ValueError(f"jobs wait on each other: {waiting}")
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    key = running.pop(future)
                    ran += future.result()
                    finished.add(key)
                    bar.set_postfix_str(label(key))
                    bar.update()
        except BaseException:
            for future in running:
                future.cancel()
            raise
    return ran


def _start_worker(parent: int) -> None:
    """Exit as soon as ``parent`` is gone (the worker is re-parented)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
