"""Shared argument handling of the commands driven by a config dataclass (train, sft)."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML file of settings (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings that win over the file")
    parser.add_argument(
        "--help-config", action="store_true", help="list every setting with its default and exit"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")


def resolve(cls: type, args: argparse.Namespace):
    """The config object, or None when the command only had to describe or print it."""
    import yaml

    from popalign.config import config_to_dict, describe_config, load_config

    if args.help_config:
        print(describe_config(cls))
        return None
    from popalign.cli._data_options import config_overrides

    # Data flags (--columns, --tie-policy, ...) are data.* overrides, applied after key=value ones.
    cfg = load_config(cls, args.config, [*args.overrides, *config_overrides(args)])
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return None
    return cfg


def register_config_command(
    sub: argparse._SubParsersAction, name: str, summary: str, epilog: str, func
) -> None:
    """A sub-command driven by a config dataclass: --config, key=value, --help-config, the data flags."""
    from popalign.cli._data_options import add_data_options

    p = sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p)
    add_data_options(p)
    p.set_defaults(func=func)


def run_config_command(cls_path: str, runner_path: str, args: argparse.Namespace) -> int:
    """Resolve the config (``module:Class``), run ``module:function`` on it, say where the model went."""
    import importlib

    def load(path: str):
        module, _, attr = path.partition(":")
        return getattr(importlib.import_module(module), attr)

    cfg = resolve(load(cls_path), args)
    if cfg is None:
        return 0
    summary = load(runner_path)(cfg)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"model saved to {summary['model']}")
    return 0
