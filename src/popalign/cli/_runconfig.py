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
    cfg = load_config(cls, args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return None
    return cfg
