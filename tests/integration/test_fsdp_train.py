"""``popalign train`` under accelerate's FSDP2 on two CPU processes equals one process with the same batch.

The launcher (``_fsdp_launch.py``) lets accelerate run FSDP2 over gloo on the CPU. The runs use the
shipped ``fsdp.yaml`` settings that matter here (FSDP2, one group per decoder layer, sharded checkpoints)
and ``dpo-pop-random`` with a fast-moving target, so the sharded Polyak target, its update and its
gathered checkpoint all take part. Compared with the single-process run: the per-step metrics and the
final weights, for full fine-tuning (straight, and killed then resumed from a sharded checkpoint) and for
LoRA (the adapter merged on save).
"""

from __future__ import annotations

import os
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
)
from tests.integration.test_distributed import _overrides as _base_overrides

LAUNCHER = Path(__file__).with_name("_fsdp_launch.py")
FSDP_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer",
    "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
    "FSDP_RESHARD_AFTER_FORWARD": "true",
}
LORA = ["lora.enabled=true", "lora.r=4", "save_final=merged"]


def _overrides(data: Path, out: Path, cache: Path, per_device: int, *extra: str) -> list[str]:
    # A checkpoint every step, so the killed run resumes from a sharded one.
    return [*_base_overrides(data, out, cache, per_device), "training.save_steps=1", *extra]


def _launch_fsdp(overrides: list[str], crash_at: int | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **FSDP_ENV,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    env.pop("ACCELERATE_USE_CPU", None)
    env.pop("POPALIGN_TEST_CRASH_AT_STEP", None)
    if crash_at is not None:
        env["POPALIGN_TEST_CRASH_AT_STEP"] = str(crash_at)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        str(LAUNCHER),
        *overrides,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _single(root: Path, data: Path, *extra: str) -> Path:
    out = root / "run"
    cfg = load_config(TrainConfig, None, _overrides(data, out, root / "cache", GLOBAL_BATCH, *extra))
    run_train(cfg)
    return out


def _assert_same_run(one: Path, two: Path) -> None:
    a, b = _logged_steps(one), _logged_steps(two)
    assert len(a) == len(b) == STEPS
    for step, (x, y) in enumerate(zip(a, b, strict=True), start=1):
        assert y["epoch"] == pytest.approx(x["epoch"])
        for key in COMPARED:
            if step == 1 and key == "rewards/accuracies":
                continue  # policy = reference: the sign of float rounding
            rel = 1e-6 if key in RELATIVE else 0
            assert y[key] == pytest.approx(x[key], rel=rel, abs=1e-5), (
                f"step {step} {key}: {y[key]} vs {x[key]}"
            )
    w1, w2 = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert w1.keys() == w2.keys()
    worst = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert worst <= 1e-5, f"final weights differ by {worst}"


def _check(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, f"launch failed ({done.returncode}); stderr ends:\n{done.stderr[-4000:]}"


@pytest.fixture(scope="module")
def single(tmp_path_factory, ultrafeedback_dir) -> Path:
    return _single(tmp_path_factory.mktemp("single"), ultrafeedback_dir)


@pytest.mark.slow
def test_fsdp2_full_fine_tuning_equals_one_process(tmp_path, single, ultrafeedback_dir):
    out = tmp_path / "run"
    _check(_launch_fsdp(_overrides(ultrafeedback_dir, out, tmp_path / "cache", GLOBAL_BATCH // 2)))
    assert (out / "checkpoint-3" / "pytorch_model_fsdp_0").is_dir()  # the policy's checkpoint is sharded
    assert (out / "checkpoint-3" / "popalign_target.pt").is_file()
    _assert_same_run(single, out)


@pytest.mark.slow
def test_fsdp2_run_killed_and_resumed_equals_one_process(tmp_path, single, ultrafeedback_dir):
    out = tmp_path / "run"
    overrides = _overrides(ultrafeedback_dir, out, tmp_path / "cache", GLOBAL_BATCH // 2)
    # Killed during step 2, before its checkpoint: the resume starts from checkpoint-1.
    killed = _launch_fsdp(overrides, crash_at=2)
    assert killed.returncode != 0 and not (out / "model.safetensors").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    _check(_launch_fsdp(overrides))
    # The steps before the kill are logged in the first launch; the resumed state carries them over.
    _assert_same_run(single, out)


@pytest.mark.slow
def test_fsdp2_lora_equals_one_process(tmp_path, ultrafeedback_dir):
    one = _single(tmp_path / "single", ultrafeedback_dir, *LORA)
    out = tmp_path / "fsdp" / "run"
    _check(
        _launch_fsdp(
            _overrides(ultrafeedback_dir, out, tmp_path / "fsdp" / "cache", GLOBAL_BATCH // 2, *LORA)
        )
    )
    _assert_same_run(one, out)
