"""DPO-PoP's Polyak target under FSDP2 full fine-tuning, on two CPU processes (torchrun, gloo).

The target is a second FSDP2 module sharded like the policy (:mod:`popalign.train.fsdp`). The worker
(``_fsdp_target_worker.py``) checks against whole-tensor arithmetic in one process that the copy starts
equal to the policy, holds half of the weights per process, follows the policy by exactly
``lerp(theta_hat, theta, tau)`` shard by shard, computes the same log-probs as an unsharded model with
those weights, leaves the policy's backward intact, and survives a checkpoint round trip.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration._group_runs import torchrun
from tests.integration.test_distributed import killed_by_signal

WORKER = Path(__file__).with_name("_fsdp_target_worker.py")


@pytest.mark.slow
def test_sharded_target_matches_whole_tensor_arithmetic(tmp_path):
    out, state = tmp_path / "result.json", tmp_path / "target.pt"
    done = torchrun(WORKER, [str(out), str(state)], dict(os.environ))
    if killed_by_signal(done):
        done = torchrun(WORKER, [str(out), str(state)], dict(os.environ))
    assert done.returncode == 0, f"worker failed ({done.returncode}):\n{done.stderr[-4000:]}"
    result = json.loads(out.read_text())
    assert result["world"] == 2
    assert result["initial_diff"] == 0.0
    assert result["local_fraction"] == pytest.approx(0.5, abs=0.02)  # sharded, not a whole copy
    assert result["policy_diff"] == 0.0
    assert result["update_diff"] <= 1e-7
    assert result["forward_diff"] <= 1e-4
    assert all(v < 0 for v in result["logps"])
    assert result["policy_grads"] is True
    # The gathered checkpoint is written by the first process only.
    assert result["state_entries"][0] > 0 and result["state_entries"][1] == 0
    assert result["fresh_copy_diff"] == 0.0  # a fresh copy equals the moved policy...
    assert result["restored_diff"] <= 1e-7  # ...and loading the checkpoint brings back the target
