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
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_fsdp_target_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sharded_target_matches_whole_tensor_arithmetic(tmp_path):
    out, state = tmp_path / "result.json", tmp_path / "target.pt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        str(WORKER),
        str(out),
        str(state),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
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
