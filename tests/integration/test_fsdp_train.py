"""``popalign train`` under accelerate's FSDP2 on two CPU processes equals one process with the same batch.

The launcher (``_device_group_launch.py``) lets accelerate run FSDP2 over gloo on the CPU. The runs use
the shipped ``fsdp.yaml`` settings that matter here (FSDP2, one group per decoder layer, sharded
checkpoints) and ``dpo-pop-random`` with a fast-moving target, so the sharded Polyak target, its update
and its gathered checkpoint all take part. Compared with the single-process run: the per-step metrics and
the final weights, for full fine-tuning (straight, and killed then resumed from a sharded checkpoint) and
for LoRA (the adapter merged on save).
"""

from __future__ import annotations

import pytest

from tests.integration._group_runs import LORA, assert_same_run, killed_and_resumed, single, two

FSDP = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer",
    "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
    "FSDP_RESHARD_AFTER_FORWARD": "true",
}


@pytest.mark.slow
def test_fsdp2_full_fine_tuning_equals_one_process(tmp_path, one, ultrafeedback_dir):
    out = two(tmp_path, ultrafeedback_dir, FSDP)
    assert (out / "checkpoint-3" / "pytorch_model_fsdp_0").is_dir()  # the policy's checkpoint is sharded
    assert (out / "checkpoint-3" / "popalign_target.pt").is_file()
    assert_same_run(one, out)


@pytest.mark.slow
def test_fsdp2_run_killed_and_resumed_equals_one_process(tmp_path, one, ultrafeedback_dir):
    assert_same_run(one, killed_and_resumed(tmp_path, ultrafeedback_dir, FSDP))


@pytest.mark.slow
def test_fsdp2_lora_equals_one_process(tmp_path, ultrafeedback_dir):
    reference = single(tmp_path / "single", ultrafeedback_dir, *LORA)
    assert_same_run(reference, two(tmp_path / "fsdp", ultrafeedback_dir, FSDP, *LORA))
