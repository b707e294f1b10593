"""Two CPU processes under ``accelerate launch`` train exactly like one process with the same global batch.

One process with 4 examples per step is compared with two processes with 2 each (DDP over gloo). The
method is ``dpo-pop-random``, so the Polyak target and the weak pair take part. Plain SGD without clipping
keeps the comparison about the gradients: Adam's first step is about ``lr * sign(gradient)``, which turns
float rounding of near-zero gradients into full-size differences.

The launch uses accelerate's torchrun launcher with ``ACCELERATE_USE_CPU=true``: accelerate's own
``--cpu --num_processes 2`` (and ``distributed_type: MULTI_CPU``) starts a single process unless MPI is
installed, and without the variable the two processes would not join into one group.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from popalign.config import load_config
from popalign.train.config import TrainConfig
from popalign.train.run import run_train

STEPS = 3
GLOBAL_BATCH = 4
OVERRIDES = [
    "model.name_or_path=random:tiny-llama",
    "method=dpo-pop-random",
    "data.limit=48",
    "tokenize.max_length=96",
    "tokenize.max_prompt_length=48",
    f"training.max_steps={STEPS}",
    "training.gradient_accumulation_steps=1",
    "training.optim=sgd",
    "training.learning_rate=0.5",
    "training.max_grad_norm=0",
    "training.warmup_ratio=0",
    "training.logging_steps=1",
    "training.save_steps=1000",
    "training.report_to=none",
    "training.progress=false",
    # A large rate makes the target move visibly within three steps.
    "target.tau=0.5",
]
# Sums of a few hundred float32 token log-probs (~ -300) are only exact to ~3e-5; everything else to 1e-5.
RELATIVE = ("logps/chosen", "logps/rejected")
COMPARED = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "pop/target_margin",
    "pop/raw_margin",
    *RELATIVE,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(data: Path, out: Path, cache: Path, per_device: int) -> list[str]:
    return [
        *OVERRIDES,
        f"data.path={data}",
        f"output_dir={out}",
        f"reference.cache_dir={cache}",
        f"training.per_device_train_batch_size={per_device}",
    ]


def killed_by_signal(done: subprocess.CompletedProcess) -> bool:
    # torchrun reports a worker that died by a signal with a negative exit code. Now and then gloo aborts a
    # process in interpreter teardown ("terminate called without an active exception") after all its work
    # is written: that is the machine, not the training, and earns one fresh try. A Python error (exit
    # code 1) or a wrong result fails at once.
    return done.returncode != 0 and "(exitcode: -" in done.stderr


def _launch_two(overrides: list[str], *, use_cpu: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",
    }
    env.pop("ACCELERATE_USE_CPU", None)
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={_free_port()}",
        "-m",
        "popalign.cli.main",
        "train",
        *overrides,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if killed_by_signal(done):
        out = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir="))
        shutil.rmtree(out, ignore_errors=True)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    return done


def _logged_steps(run: Path) -> list[dict]:
    state = json.loads((run / "trainer_state.json").read_text())
    return [h for h in state["log_history"] if "loss" in h]


def _reference_cache(cache: Path) -> tuple[str, dict[str, np.ndarray]]:
    (path,) = (cache / "reference").glob("*.npz")
    with np.load(path) as z:
        return path.name, {k: z[k] for k in z.files}


def _same_steps(single: Path, launched: Path) -> tuple[list[dict], list[dict]]:
    """Every logged step of ``launched`` equals ``single``'s; returns both logs."""
    one, two = _logged_steps(single), _logged_steps(launched)
    assert len(one) == len(two) == STEPS
    for step, (a, b) in enumerate(zip(one, two, strict=True), start=1):
        # The same epoch fraction after each step means the same number of examples per step: a launch that
        # fell back to one process with batch 2 would report half of it.
        assert b["epoch"] == pytest.approx(a["epoch"]), f"step {step}: {b['epoch']} vs {a['epoch']}"
        for key in COMPARED:
            if step == 1 and key == "rewards/accuracies":
                # Policy = reference at step 1: every reward is float rounding (checked to be < 1e-5 below),
                # so the accuracy is the sign of that noise.
                continue
            # Per-step means over the 4 examples fingerprint the batch: equal values mean rank 0 and rank 1
            # received the two halves of the batch the single process saw.
            rel = 1e-6 if key in RELATIVE else 0
            assert b[key] == pytest.approx(a[key], rel=rel, abs=1e-5), (
                f"step {step} {key}: {b[key]} vs {a[key]}"
            )
    return one, two


def _same_weights(single: Path, launched: Path) -> None:
    w1, w2 = load_file(single / "model.safetensors"), load_file(launched / "model.safetensors")
    assert w1.keys() == w2.keys()
    worst = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert worst <= 1e-5, f"final weights differ by {worst}"


@pytest.fixture(scope="module")
def single(tmp_path_factory, ultrafeedback_dir) -> dict[str, Path]:
    """The single-process run with the whole global batch on one device; its cache is shared later."""
    root = tmp_path_factory.mktemp("single")
    paths = {"data": ultrafeedback_dir, "out": root / "run", "cache": root / "cache"}
    cfg = load_config(
        TrainConfig, None, _overrides(paths["data"], paths["out"], paths["cache"], GLOBAL_BATCH)
    )
    run_train(cfg)
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["empty", "shared"])
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path, single, cache):
    # empty: both processes split the reference precompute and gather it; shared: both read the file the
    # single-process run wrote.
    cache_dir = tmp_path / "cache" if cache == "empty" else single["cache"]
    out = tmp_path / "run"
    done = _launch_two(_overrides(single["data"], out, cache_dir, GLOBAL_BATCH // 2))
    assert done.returncode == 0, f"launch failed ({done.returncode}); stderr ends:\n{done.stderr[-4000:]}"

    reference = json.loads((out / "run_info.json").read_text())["reference"]
    if cache == "empty":
        assert reference["cache"] == "miss" and reference["processes"] == 2
        name, split = _reference_cache(cache_dir)
        single_name, whole = _reference_cache(single["cache"])
        assert name == single_name  # same model and data fingerprints in every process
        for side in ("chosen", "rejected"):
            assert np.all(split[side] < 0)  # every row was filled by one of the processes
            np.testing.assert_allclose(split[side], whole[side], rtol=1e-6)
    else:
        assert reference["cache"] == "hit"

    one, two = _same_steps(single["out"], out)
    assert abs(one[0]["rewards/margins"]) < 1e-5 and abs(two[0]["rewards/margins"]) < 1e-5
    assert any(abs(s["rewards/margins"]) > 1e-3 for s in one)  # training moved the policy
    assert any(s["pop/target_margin"] > 1e-4 for s in one)  # the target moved with it

    _same_weights(single["out"], out)


@pytest.mark.slow
def test_two_padding_free_processes_equal_one_padded_process(tmp_path, single):
    # Padding-free batches under DDP: each process packs its half of the batch (chosen, rejected and the weak
    # pair of the target pass) into rows without padding; the gathered step must be the padded one's.
    out = tmp_path / "run"
    overrides = [
        *_overrides(single["data"], out, single["cache"], GLOBAL_BATCH // 2),
        "training.padding_free=true",
    ]
    done = _launch_two(overrides)
    assert done.returncode == 0, f"launch failed ({done.returncode}); stderr ends:\n{done.stderr[-4000:]}"
    # The layouts really differ: run_info records whether the collator packed (after the model's check).
    assert json.loads((out / "run_info.json").read_text())["padding_free"] is True
    assert json.loads((single["out"] / "run_info.json").read_text())["padding_free"] is False
    _same_steps(single["out"], out)
    _same_weights(single["out"], out)


def test_processes_that_do_not_join_are_refused(tmp_path, monkeypatch):
    # What each process of a torchrun-style launch sees on a machine without GPUs when ACCELERATE_USE_CPU is
    # not set: WORLD_SIZE=2, but a process group of one. Each would train alone on all the data.
    from popalign.errors import PopalignError
    from popalign.train.config import TrainingSpec
    from popalign.train.recipe import training_arguments

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(
        PopalignError, match="2 processes were launched but training sees 1.*ACCELERATE_USE_CPU"
    ):
        training_arguments(TrainingSpec(report_to=["none"]), tmp_path)
