"""One process of ``popalign train`` under accelerate's FSDP or DeepSpeed on the CPU (gloo), for the tests.

accelerate turns FSDP and DeepSpeed on only for accelerator backends: on CPU processes it falls back to
plain data parallelism. This launcher tells accelerate that the processes form a multi-device group on
gloo whose device is the CPU; everything after that (accelerate's FSDP2 wrapping from the ``FSDP_*``
variables or its DeepSpeed engine from the ``ACCELERATE_DEEPSPEED_*`` ones, the Trainer's checkpoints,
popalign's target and final save) runs unchanged.

Arguments are ``popalign train``'s ``key=value`` overrides, or ``sft`` followed by ``popalign sft``'s.
``POPALIGN_TEST_CRASH_AT_STEP=N`` stops a train run during optimiser step N, as a killed process would.
"""

from __future__ import annotations

import os
import sys

import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType
from transformers import TrainerCallback


def _backend(self, cpu=False, sagemaker_dp=False, backend=None):
    return "gloo", DistributedType.MULTI_GPU


def _device(self):
    if self.device is None:
        self.device = torch.device("cpu")


class _Crash(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise SystemExit(3)


def main() -> int:
    PartialState._prepare_backend = _backend
    PartialState.set_device = _device
    from popalign.config import load_config
    from popalign.train.config import SFTConfig, TrainConfig
    from popalign.train.run import run_train
    from popalign.train.sft import run_sft

    args = sys.argv[1:]
    if args and args[0] == "sft":
        run_sft(load_config(SFTConfig, None, args[1:]))
        return 0
    cfg = load_config(TrainConfig, None, args)
    crash = os.environ.get("POPALIGN_TEST_CRASH_AT_STEP")
    run_train(cfg, callbacks=[_Crash(int(crash))] if crash else None)
    return 0


def _exit(code: int) -> None:
    # Skip interpreter teardown: gloo's threads sometimes abort the process there ("terminate called
    # without an active exception") after all work is done and written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
