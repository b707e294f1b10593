"""``popalign train`` under accelerate's FSDP2 on two CPU processes equals one process with the same batch.

The launcher (``_device_group_launch.py``) lets accelerate run FSDP2 over gloo on the CPU. The runs use
the shipped ``fsdp.yaml`` settings that matter here (FSDP2, one group per decoder layer, sharded
checkpoints) and ``dpo-pop-random`` with a fast-moving target, so the sharded Polyak target, its update
and its gathered checkpoint all take part. Compared with the single-process run: the per-step metrics and
the final weights, for full fine-tuning (straight, and killed then resumed from a sharded checkpoint) and
for LoRA (the adapter merged on save), with padding-free batches, and for a PoP reward model; and
`popalign sft` under FSDP2.
"""

from __future__ import annotations

import json

import pytest

from tests.integration._group_runs import (
    LORA,
    PER_PROCESS,
    assert_same_run,
    killed_and_resumed,
    launch_ok,
    single,
    two,
)
from tests.integration.test_distributed import GLOBAL_BATCH, OVERRIDES, STEPS, _logged_steps

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
def test_fsdp2_padding_free_equals_one_padded_process(tmp_path, one, ultrafeedback_dir):
    # Each process packs its half of the batch (and the weak pair of the sharded target's pass) without
    # padding; the steps and weights must be the padded single process's.
    out = two(tmp_path, ultrafeedback_dir, FSDP, "training.padding_free=true")
    assert json.loads((out / "run_info.json").read_text())["padding_free"] is True
    assert_same_run(one, out)


@pytest.mark.slow
def test_fsdp2_run_killed_and_resumed_equals_one_process(tmp_path, one, ultrafeedback_dir):
    assert_same_run(one, killed_and_resumed(tmp_path, ultrafeedback_dir, FSDP))


@pytest.mark.slow
def test_fsdp2_lora_equals_one_process(tmp_path, ultrafeedback_dir):
    reference = single(tmp_path / "single", ultrafeedback_dir, *LORA)
    assert_same_run(reference, two(tmp_path / "fsdp", ultrafeedback_dir, FSDP, *LORA))


@pytest.mark.slow
def test_fsdp2_reward_model_equals_one_process(tmp_path, ultrafeedback_dir):
    # objective=reward-model with PoP: the target is a sharded copy of a sequence-classification model.
    reward_model = ("objective=reward-model", "method=pop-random")
    reference = single(tmp_path / "single", ultrafeedback_dir, *reward_model)
    assert_same_run(reference, two(tmp_path / "fsdp", ultrafeedback_dir, FSDP, *reward_model))


@pytest.mark.slow
def test_fsdp2_sft_equals_one_process(tmp_path, ultrafeedback_dir):
    from safetensors.torch import load_file

    from popalign.config import load_config
    from popalign.train.config import SFTConfig
    from popalign.train.sft import run_sft

    # The loss is a mean over response tokens; with two processes it must still be the global batch's.
    # The preference runs' settings, less those SFT does not have.
    train_only = ("method=", "target.", "training.save_steps=")
    common = [o for o in OVERRIDES if not o.startswith(train_only)] + [f"data.path={ultrafeedback_dir}"]
    one, other = tmp_path / "one", tmp_path / "two"
    batch = "training.per_device_train_batch_size"
    run_sft(load_config(SFTConfig, None, [*common, f"output_dir={one}", f"{batch}={GLOBAL_BATCH}"]))
    launch_ok(["sft", *common, f"output_dir={other}", f"{batch}={PER_PROCESS}"], FSDP, other)
    a, b = _logged_steps(one), _logged_steps(other)
    assert len(a) == len(b) == STEPS
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-5)
    w1, w2 = load_file(one / "model.safetensors"), load_file(other / "model.safetensors")
    assert w1.keys() == w2.keys()
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-5
