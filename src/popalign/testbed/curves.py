"""Training curves: each run's model at evenly spaced optimiser steps, evaluated like its final model.

During training a callback saves the policy at ``curve.points`` evenly spaced steps (the last is the final
model itself). Each point is then evaluated by the code behind ``popalign eval``: replies to the test prompts
sampled with the run's seed (``run_generate``, which also estimates ``KL(pi || pi_ref)`` against the SFT
model), judged by ``r*`` against vanilla DPO's final replies of the same seed (``run_judge``). Step 0, the SFT
model itself (KL exactly 0), is one shared origin per seed. The frontier (:mod:`popalign.testbed.frontier`)
is drawn from these points.

Layout: ``<run>/curve/step-000042/`` (the saved policy, removed once evaluated) and its ``eval/``;
``<output_dir>/origin/seed-<s>/eval`` for step 0. A point is finished when its ``judge.json`` exists, so an
interrupted evaluation resumes at the first unfinished point.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CURVE_DIR = "curve"


def curve_steps(total_steps: int, points: int) -> list[int]:
    """``points`` evenly spaced optimiser steps ending at ``total_steps`` (fewer when the run is shorter)."""
    if points < 1 or total_steps < 1:
        return []
    return sorted({max(1, round(total_steps * i / points)) for i in range(1, points + 1)})


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

    if (eval_dir / "judge.json").is_file():
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


def evaluate_curve(
    run_dir: Path,
    steps: list[int],
    final_step: int,
    final_eval: Path,
    evaluate: Callable[[Path, Path, int], None],
) -> list[dict[str, Any]]:
    """Evaluate every snapshot of a finished run with ``evaluate(model_dir, eval_dir, step)``.

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
        if not (eval_dir / "judge.json").is_file():
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
    judged = eval_dir / "judgements.jsonl"
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
