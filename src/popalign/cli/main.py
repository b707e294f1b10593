"""``popalign``: one command line with sub-commands.

Each sub-command lives in its own module under :mod:`popalign.cli` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a function of the parsed
arguments. Modules import torch and friends inside ``func`` only, so ``popalign --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# (module, one-line summary) in the order --help lists them.
COMMANDS: list[tuple[str, str]] = [
    ("data", "inspect preference datasets (counts, scores, margins, histogram); split train/test"),
    ("pop", "build PoP datasets, import or judge PoP labels, and measure their agreement"),
    ("sft", "supervised fine-tuning on chosen responses"),
    ("train", "preference training: DPO, margin variants, DPO-PoP, reward models"),
    ("model", "prepare models (e.g. convert the offline SmolLM2 GGUF to safetensors)"),
    ("eval", "evaluate models: discriminative metrics, RewardBench, generation, judged win rates"),
    ("probe", "is PoP worth it for my data? reward heads on a frozen model's features, cross-fitted"),
    ("report", "compare evaluated runs in one Markdown and one HTML page"),
    ("push", "upload a trained model with its model card to the Hugging Face Hub"),
    ("reproduce", "the paper's experiments on the CPU testbed, with a report of which claims hold"),
    ("label", "collect PoP labels from people with a small web app"),
    ("demo", "the main job on its built-in default (what `make demo` runs)"),
]

EPILOG = """examples:
  popalign data inspect ../data/train.jsonl
  popalign pop build ../data/train.jsonl --strategy iterative -k 2 -o runs/pop
  popalign train --config configs/tiny/dpo_pop.yaml
  popalign <command> --help     every command has examples
"""


def build_parser() -> argparse.ArgumentParser:
    from popalign import __version__

    parser = argparse.ArgumentParser(
        prog="popalign",
        description="Margin-aware alignment of language models from preference-over-preference labels.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"popalign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in COMMANDS:
        module = importlib.import_module(f"popalign.cli.{name.replace('-', '_')}")
        module.register(sub, summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if (
        extra
        and isinstance(getattr(args, "overrides", None), list)
        and not any(x.startswith("-") for x in extra)
    ):
        # key=value overrides after a flag (train --skip-bad-rows training.max_steps=5): argparse stops
        # filling a "*" positional at the first flag, so the rest arrives here.
        args.overrides.extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    from popalign.errors import PopalignError

    try:
        result = args.func(args)
    except PopalignError as exc:
        print(f"popalign: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into `head` and friends: stop quietly, as Unix tools do.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except KeyboardInterrupt:
        print("popalign: interrupted; finished work is kept and a rerun resumes from it", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
