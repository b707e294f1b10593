"""``popalign train``: preference training (DPO family, DPO-PoP, reward models)."""

from __future__ import annotations

import argparse

from popalign.cli._runconfig import register_config_command, run_config_command

EPILOG = """examples:
  popalign train --config configs/tiny/dpo_pop.yaml
  popalign train --config configs/tiny/dpo.yaml method=dpo-margin-gt training.max_steps=20
  popalign train data.path=data/train.jsonl method=dpo-pop-random pop.k=4 output_dir=runs/pop-random
  popalign train --config configs/paper/llama3.2-3b_dpo.yaml method=dpo-pop-iter   # GPUs
  accelerate launch --config_file configs/accelerate/ddp.yaml -m popalign.cli.main train -c FILE
  popalign train --help-config          every setting, its default and what it does

methods: dpo, dpo-margin, dpo-margin-gt, dpo-sbt, dpo-pop, dpo-pop-iter, dpo-pop-random, dpo-pop-nomargin
objective=reward-model trains an explicit reward head with the same margin variants (Eq. 2, 4, 5).
A run resumes from its newest complete checkpoint in output_dir (resume=never to start over).
"""


def register(sub: argparse._SubParsersAction, summary: str) -> None:
    register_config_command(sub, "train", summary, EPILOG, run)


def run(args: argparse.Namespace) -> int:
    return run_config_command("popalign.train.config:TrainConfig", "popalign.train.run:run_train", args)
