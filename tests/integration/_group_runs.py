"""Helpers for the FSDP and DeepSpeed tests: two CPU processes through ``_device_group_launch.py``
compared with one process that has the same global batch (settings from ``test_distributed``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from popalign.config import load_config
from popalign.train.config import TrainConfig
from popalign.train.run import run_train
from tests.integration.test_distributed import (
    COMPARED,
    GLOBAL_BATCH,
    RELATIVE,
    STEPS,
    _free_port,
    _logged_steps,
    killed_by_signal,
)
from tests.integration.test_distributed import _overrides as _base_overrides

LAUNCHER = Path(__file__).with_name("_device_group_launch.py")
LORA = ("lora.enabled=true", "lora.r=4", "save_final=merged")
PER_PROCESS = GLOBAL_BATCH // 2


def overrides(data: Path, out: Path, cache: Path, per_device: int, *extra: str) -> list[str]:
    # A checkpoint every step, so a killed run resumes from the checkpoint of the step before.
    return [*_base_overrides(data, out, cache, per_device), "training.save_steps=1", *extra]


def torchrun(script: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """``script args`` in two CPU processes started by torchrun with ``env``, offline, one thread each."""
    env = {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        str(script),
        *args,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def launch(
    args: list[str], env_extra: dict[str, str], crash_at: int | None = None
) -> subprocess.CompletedProcess:
    """``popalign train args`` through the device-group launcher (``env_extra``: the FSDP/DeepSpeed setup)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "POPALIGN_TEST_CRASH_AT_STEP")
    }
    if crash_at is not None:
        env["POPALIGN_TEST_CRASH_AT_STEP"] = str(crash_at)
    return torchrun(LAUNCHER, args, {**env, **env_extra})


def check(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, f"launch failed ({done.returncode}); stderr ends:\n{done.stderr[-4000:]}"


def launch_ok(args: list[str], env_extra: dict[str, str], out: Path) -> None:
    """Launch into the empty folder ``out`` and require success (one fresh retry, see above)."""
    done = launch(args, env_extra)
    if killed_by_signal(done):
        shutil.rmtree(out, ignore_errors=True)
        done = launch(args, env_extra)
    check(done)


def single(root: Path, data: Path, *extra: str) -> Path:
    """The one-process run with the whole global batch; returns its output folder."""
    out = root / "run"
    run_train(load_config(TrainConfig, None, overrides(data, out, root / "cache", GLOBAL_BATCH, *extra)))
    return out


def two(root: Path, data: Path, env: dict[str, str], *extra: str) -> Path:
    """The two-process run with half the batch each; returns its output folder."""
    out = root / "run"
    launch_ok(overrides(data, out, root / "cache", PER_PROCESS, *extra), env, out)
    return out


def killed_and_resumed(root: Path, data: Path, env: dict[str, str], *extra: str) -> Path:
    """Two processes killed during step 2 (checkpoint-1 is the newest), then launched again."""
    out = root / "run"
    args = overrides(data, out, root / "cache", PER_PROCESS, *extra)
    for attempt in (1, 2):
        shutil.rmtree(out, ignore_errors=True)
        killed = launch(args, env, crash_at=2)
        if attempt == 1 and killed_by_signal(killed):
            continue
        assert killed.returncode != 0 and not (out / "model.safetensors").exists()
        assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
        done = launch(args, env)
        if attempt == 1 and killed_by_signal(done):
            continue
        check(done)
        return out
    raise AssertionError("unreachable")


def assert_same_run(one: Path, other: Path) -> None:
    """Same per-step metrics and final weights (to 1e-5) as the one-process run."""
    a, b = _logged_steps(one), _logged_steps(other)
    assert len(a) == len(b) == STEPS
    for step, (x, y) in enumerate(zip(a, b, strict=True), start=1):
        assert y["epoch"] == pytest.approx(x["epoch"])
        assert set(x) == set(y)
        for key in (k for k in COMPARED if k in x):  # a reward model logs no logps/*
            if step == 1 and key == "rewards/accuracies":
                continue  # policy = reference: the sign of float rounding
            rel = 1e-6 if key in RELATIVE else 0
            message = f"step {step} {key}: {y[key]} vs {x[key]}"
            assert y[key] == pytest.approx(x[key], rel=rel, abs=1e-5), message
    w1, w2 = load_file(one / "model.safetensors"), load_file(other / "model.safetensors")
    assert w1.keys() == w2.keys()
    worst = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert worst <= 1e-5, f"final weights differ by {worst}"
