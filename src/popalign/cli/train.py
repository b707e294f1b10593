"""``popalign train``: preference training (DPO family, DPO-PoP, reward models)."""

from __future__ import annotations

import argparse

from popalign.cli._runconfig import register_config_command, run_config_command

EPILOG = """examples:
  popalign train --config configs/tiny/dpo_pop.yaml
  popalign train --config configs/tiny/dpo.yaml method=dpo-margin-gt training.max_steps=20
  popalign train data.path=data/train.jsonl method=dpo-pop-random pop.k=4 output_dir=runs/pop-random
  popalign train --config configs/paper/llama3.2-3b_dpo.yaml method=dpo-pop-iter   # GPUs
  popalign train --config configs/tiny/dpo.yaml method=custom loss.form=ipo loss.margin_source=live
  accelerate launch --config_file configs/accelerate/ddp.yaml -m popalign.cli.main train -c FILE
  popalign train --help-config          every setting, its default and what it does

A run resumes from its newest complete checkpoint in output_dir (resume=never to start over).
"""


def epilog() -> str:
    """The examples, then every preset and part from the registries (docs/losses.md has the same table)."""
    from popalign.method_tables import format_methods_table, format_parts_table
    from popalign.methods import CUSTOM

    return "\n".join(
        [
            EPILOG,
            "methods (objective=policy, the default):",
            format_methods_table("policy"),
            "",
            "methods (objective=reward-model: an explicit reward head, Eq. 2, 4, 5):",
            format_methods_table("reward-model"),
            "",
            f"method={CUSTOM} combines any loss.form with any loss.margin_source; on a preset they",
            "replace its parts (docs/losses.md).",
            "",
            format_parts_table(),
        ]
    )


def register(sub: argparse._SubParsersAction, summary: str) -> None:
    register_config_command(sub, "train", summary, epilog(), run)


def run(args: argparse.Namespace) -> int:
    code = run_config_command("popalign.train.config:TrainConfig", "popalign.train.run:run_train", args)
    if args.help_config:
        from popalign.method_tables import format_parts_table

        print(f"\n{format_parts_table()}")
    return code
