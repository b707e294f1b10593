"""``popalign sft``: supervised fine-tuning on chosen responses."""

from __future__ import annotations

import argparse

from popalign.cli._runconfig import register_config_command, run_config_command

EPILOG = """examples:
  popalign sft --config configs/tiny/sft.yaml
  popalign sft data.path=data/train.jsonl model.name_or_path=smollm2-135m-instruct output_dir=runs/sft
  popalign sft --help-config

The loss covers response tokens only; prompts are rendered with the model's chat template.
Then train preferences from it: popalign train model.name_or_path=runs/sft ...
"""


def register(sub: argparse._SubParsersAction, summary: str) -> None:
    register_config_command(sub, "sft", summary, EPILOG, run)


def run(args: argparse.Namespace) -> int:
    return run_config_command("popalign.train.config:SFTConfig", "popalign.train.sft:run_sft", args)
