"""``popalign train`` under accelerate's DeepSpeed (ZeRO-2 and ZeRO-3) on two CPU processes.

The launcher (``_device_group_launch.py``) lets accelerate run DeepSpeed over gloo on the CPU (DeepSpeed's
own CPU accelerator). With ``dpo-pop-random`` and a fast-moving target, each run is compared with one
process that has the same global batch (per-step metrics and final weights to 1e-5): ZeRO-2 with full
fine-tuning (the target is a whole copy, as under DDP), straight and killed then resumed; ZeRO-3 with LoRA
(the target adapter is partitioned like the live one and the Polyak update gathers both, writing back
through rank 0); ZeRO-3 with full fine-tuning (the target, copied from whole weights before the engine
partitions them, stays whole; the update gathers the policy to read it).

DeepSpeed's overlapped and reduce-scatter gradient paths do not average correctly over gloo on the CPU
(vanilla DPO already drifts from one process there), so the configs turn them off; that concerns
DeepSpeed's communication, not popalign.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration._group_runs import LORA, assert_same_run, killed_and_resumed, single, two

pytest.importorskip("deepspeed")


def _zero(tmp_path: Path, stage: int) -> dict[str, str]:
    config = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {
            "stage": stage,
            "overlap_comm": False,
            "contiguous_gradients": False,
            "reduce_scatter": False,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
    }
    path = tmp_path / f"zero{stage}.json"
    path.write_text(json.dumps(config))
    return {
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path),
        "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false",
        "ACCELERATE_MIXED_PRECISION": "no",
    }


@pytest.mark.slow
def test_zero2_full_fine_tuning_equals_one_process(tmp_path, one, ultrafeedback_dir):
    assert_same_run(one, two(tmp_path, ultrafeedback_dir, _zero(tmp_path, 2)))


@pytest.mark.slow
def test_zero2_run_killed_and_resumed_equals_one_process(tmp_path, one, ultrafeedback_dir):
    # DeepSpeed resumes through its own loader, not the Trainer's _load_from_checkpoint: the target must
    # still come back from the checkpoint.
    assert_same_run(one, killed_and_resumed(tmp_path, ultrafeedback_dir, _zero(tmp_path, 2)))


@pytest.mark.slow
def test_zero3_lora_equals_one_process(tmp_path, ultrafeedback_dir):
    reference = single(tmp_path / "single", ultrafeedback_dir, *LORA)
    assert_same_run(reference, two(tmp_path / "zero3", ultrafeedback_dir, _zero(tmp_path, 3), *LORA))


@pytest.mark.slow
def test_zero3_full_fine_tuning_equals_one_process(tmp_path, one, ultrafeedback_dir):
    assert_same_run(one, two(tmp_path, ultrafeedback_dir, _zero(tmp_path, 3)))
