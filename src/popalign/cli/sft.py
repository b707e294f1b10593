"""``popalign sft``: supervised fine-tuning on chosen responses."""

from __future__ import annotations

import argparse

from popalign.cli._runconfig import add_config_arguments, resolve

EPILOG = """examples:
  popalign sft --config configs/tiny/sft.yaml
  popalign sft data.path=data/train.jsonl model.name_or_path=smollm2-135m-instruct output_dir=runs/sft
  popalign sft --help-config

The loss covers response tokens only; prompts are rendered with the model's chat template.
Then train preferences from it: popalign train model.name_or_path=runs/sft ...
"""


def register(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser(
        "sft",
        help=summary,
        description=summary,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from popalign.train.config import SFTConfig

    cfg = resolve(SFTConfig, args)
    if cfg is None:
        return 0
    from popalign.train.sft import run_sft

    summary = run_sft(cfg)
    print(f"model saved to {summary['model']}")
    return 0
