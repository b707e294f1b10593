"""Training curves: each run's model at checkpoints spaced by KL, evaluated like its final model.

A frontier read at matched KL is only as good as its checkpoints near each budget (see
:mod:`popalign.testbed.frontier`): a run that jumps from KL 1 to 38 between two checkpoints says nothing
about KL 10. So checkpoints are chosen by KL, not by step:

1. **Snapshots.** During training a callback saves the policy every ``curve.every`` optimiser steps (the
   same spacing in every run, so a run with twice the steps has twice the snapshots).
2. **Screen.** A snapshot's ``KL(pi || pi_SFT)`` is estimated cheaply from replies to the first
   ``curve.screen_prompts`` test prompts: every ``curve.screen_every``-th snapshot, then, by bisection,
   the snapshots inside any gap where KL grows faster than the spacing below allows (:func:`screen_curve`;
   recorded in ``curve/screen.json``).
3. **Select.** A rule on the screened KL alone (never on r*) keeps the subset :func:`select_points` of the
   screened snapshots: each kept one is the last before the KL would grow past ``curve.max_ratio`` times
   (and ``curve.min_gap`` nats beyond) the previous kept one, so kept points are dense where KL grows fast
   and sparse where it is flat. Nothing beyond ``curve.max_kl`` is screened densely or kept but the final
   model, which is always kept.
4. **Evaluate.** Each kept point is evaluated by the code behind ``popalign eval``: replies to all test
   prompts sampled with the run's seed (``run_generate``, with the KL estimate against the SFT model),
   judged by ``r*`` against vanilla DPO's final replies of the same seed (``run_judge``).

Step 0, the SFT model itself (KL exactly 0), is one shared origin per seed. Layout:
``<run>/curve/step-000042/`` (the saved policy, removed once screened and, if kept, evaluated) and its
``eval/``; ``<output_dir>/origin/seed-<s>/eval`` for step 0. A point is finished when its ``judge.json``
exists and a screen when ``screen.json`` has it, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from popalign.eval.kinds import KINDS
from popalign.eval.report import JUDGEMENTS

CURVE_DIR = "curve"


SCREEN_FILE = "screen.json"


def curve_steps(total_steps: int, every: int) -> list[int]:
    """A snapshot every ``every`` optimiser steps, ending at ``total_steps`` (none when ``every`` is 0)."""
    if every < 1 or total_steps < 1:
        return []
    return sorted({*range(every, total_steps + 1, every), total_steps})


def select_points(
    kls: list[float], max_ratio: float, min_gap: float, max_kl: float = float("inf")
) -> list[int]:
    """Indices of the snapshots to evaluate, chosen on their screened KL ``kls`` (training order).

    Walking forward from the start (KL 0), a snapshot is kept when the next one's KL would exceed both
    ``max_ratio`` times and ``min_gap`` nats more than the last kept KL; the last snapshot (the final
    model) is always kept. Consecutive kept points are thus at most ``max_ratio`` apart wherever the
    snapshots are dense enough to allow it. Beyond ``max_kl`` nothing but the final model is kept: no
    budget is compared there, so those checkpoints would cost evaluations for the picture alone.
    """
    kept: list[int] = []
    last = 0.0
    for i in range(len(kls)):
        final = i == len(kls) - 1
        if not final and kls[i] > max_kl:
            continue
        if final or kls[i + 1] > max(max_ratio * last, last + min_gap):
            kept.append(i)
            last = kls[i]
    return kept


def point_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CURVE_DIR / f"step-{step:06d}"


def snapshot_callback(run_dir: Path, steps: list[int], final_step: int):
    """A ``TrainerCallback`` saving the policy (and tokenizer) at ``steps`` other than the final one.

    Saved into a temporary folder and renamed, so a snapshot on disk is always whole; a resumed run skips
    the snapshots it already has.
    """
    from transformers import TrainerCallback

    wanted = {s for s in steps if s != final_step}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            step = state.global_step
            if step not in wanted or not state.is_world_process_zero:
                return
            dest = point_dir(run_dir, step)
            if dest.is_dir():
                return
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)
            if processing_class is not None:
                processing_class.save_pretrained(tmp)
            os.replace(tmp, dest)

    return Snapshot()


def evaluate_point(
    model_dir: Path,
    eval_dir: Path,
    *,
    name: str,
    data: str,
    spec: Any,
    reference: str,
    baseline: Path,
    score_fn: str,
    boot: Any,
) -> None:
    """Replies of ``model_dir`` with their KL to ``reference``, judged by r* against ``baseline``'s."""
    from popalign.eval.pipeline import run_generate, run_judge

    if (eval_dir / KINDS["judge"].file).is_file():
        return
    run_generate(
        [str(model_dir)],
        data,
        spec=spec,
        split="test",
        out=str(eval_dir),
        names=[name],
        device="cpu",
        reference=reference,
        boot=boot,
        progress=False,
    )
    run_judge(
        [str(eval_dir)],
        str(baseline),
        score_fn=score_fn,
        out=str(eval_dir),
        boot=boot,
        progress=False,
        plots=False,
    )


def screen_curve(
    run_dir: Path,
    steps: list[int],
    final_step: int,
    final_kl: float,
    screen: Callable[[Path], float],
    *,
    every: int,
    max_ratio: float,
    min_gap: float,
    max_kl: float = float("inf"),
) -> dict[int, float]:
    """The screened KL of the snapshots worth screening: ``{step: kl}`` in step order (final: ``final_kl``).

    Every ``every``-th snapshot is screened first; wherever KL then grows past :func:`select_points`'
    spacing between two screened neighbours with unscreened snapshots between them, the middle one is
    screened too, until every such gap is closed or has no snapshot left inside (bisection). KL is screened
    densely where it grows fast and sparsely where it is flat; gaps that start beyond ``max_kl`` are left
    alone (nothing is compared there). ``screen(model_dir)`` estimates one
    snapshot's KL; each answer is recorded in ``curve/screen.json`` at once, so a resumed run screens only
    what is missing. The file ends with the final model's KL too.
    """
    from popalign.io import atomic_write_json

    path = Path(run_dir) / CURVE_DIR / SCREEN_FILE
    done: dict[int, float] = {}
    if path.is_file():
        done = {int(k): float(v) for k, v in json.loads(path.read_text("utf-8")).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    done[final_step] = float(final_kl)
    available = sorted(set(steps) | {final_step})

    def measure(step: int) -> None:
        if step in done:
            return
        folder = point_dir(run_dir, step)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: the snapshot of step {step} is missing")
        done[step] = float(screen(folder))
        atomic_write_json(path, {str(k): v for k, v in sorted(done.items())})

    for step in available[every - 1 :: every]:
        measure(step)
    while True:
        points = [(0, 0.0), *sorted((s, done[s]) for s in done if s in available)]
        wide = [
            (a, b)
            for (a, ka), (b, kb) in itertools.pairwise(points)
            if ka <= max_kl and kb > max(max_ratio * ka, ka + min_gap) and any(a < s < b for s in available)
        ]
        if not wide:
            break
        for a, b in wide:
            inside = [s for s in available if a < s < b]
            measure(inside[len(inside) // 2])
    atomic_write_json(path, {str(k): v for k, v in sorted(done.items())})
    return {s: done[s] for s in available if s in done}


def drop_snapshots(run_dir: Path, keep: list[int]) -> None:
    """Remove the snapshot folders of steps not in ``keep`` (their screen stays in ``screen.json``)."""
    for folder in (Path(run_dir) / CURVE_DIR).glob("step-*"):
        if int(folder.name.split("-")[1].split(".")[0]) not in keep:
            shutil.rmtree(folder, ignore_errors=True)


def evaluate_curve(
    run_dir: Path,
    steps: list[int],
    final_step: int,
    final_eval: Path,
    evaluate: Callable[[Path, Path, int], None],
) -> list[dict[str, Any]]:
    """Evaluate the kept snapshots ``steps`` of a finished run with ``evaluate(model_dir, eval_dir, step)``.

    The final step reuses the run's own evaluation ``final_eval``. Each snapshot's weights are removed once
    it is evaluated. Returns ``[{"step", "eval"}]`` in step order.
    """
    out = []
    for step in steps:
        if step == final_step:
            out.append({"step": step, "eval": str(final_eval)})
            continue
        folder = point_dir(run_dir, step)
        eval_dir = folder / "eval"
        if not (eval_dir / KINDS["judge"].file).is_file():
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"{folder}: the snapshot of step {step} is missing")
            evaluate(folder, eval_dir, step)
        for item in folder.iterdir():
            if item.name != "eval":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        out.append({"step": step, "eval": str(eval_dir)})
    return out


@dataclass
class Curve:
    """One run's training curve on the test prompts, aligned on the run's test ids.

    ``steps`` ``(P,)`` starts with 0 (the SFT model); ``kl``, ``reward`` and ``advantage`` are ``(P, N)``:
    each reply's KL term to the SFT model, its r*, and its r* advantage over vanilla DPO's final reply.
    """

    steps: np.ndarray
    kl: np.ndarray
    reward: np.ndarray
    advantage: np.ndarray


def read_point(eval_dir: Path, ids: list[str], score: Callable[[str, str], float]):
    """``(kl, reward, advantage)`` per test id of one evaluated point."""
    outputs = {str(r["id"]): r for r in json.loads((eval_dir / "model_outputs.json").read_text("utf-8"))}
    rows = [outputs[i] for i in ids]
    judged = eval_dir / JUDGEMENTS
    if judged.is_file():
        with open(judged, encoding="utf-8") as fh:
            adv = {str(r["id"]): r["advantage"] for r in map(json.loads, filter(str.strip, fh))}
        advantage = np.array([adv[i] for i in ids], dtype=np.float64)
    else:  # vanilla DPO's final replies, the baseline itself: no judgement, advantage 0
        advantage = np.zeros(len(ids))
    return (
        np.array([r["kl"] for r in rows], dtype=np.float64),
        np.array([score(r["instruction"], r["output"]) for r in rows], dtype=np.float64),
        advantage,
    )


def load_curve(points: list[tuple[int, Path]], ids: list[str], score: Callable[[str, str], float]) -> Curve:
    """The :class:`Curve` of ``[(step, eval_dir)]`` (step 0 first)."""
    read = [read_point(d, ids, score) for _, d in points]
    return Curve(
        steps=np.array([s for s, _ in points]),
        kl=np.stack([r[0] for r in read]),
        reward=np.stack([r[1] for r in read]),
        advantage=np.stack([r[2] for r in read]),
    )
