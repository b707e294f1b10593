"""The data options of every command that reads preferences, defined once.

``--columns``, ``--tie-policy``, ``--skip-bad-rows``, ``--empty-replies``, ``--limit`` and ``--split`` are
the fields of :class:`popalign.data.load.DataSpec` with the same names (``data.tie_policy`` in a run
config is ``--tie-policy`` on a command line); their help and choices are read from the dataclass, so a
command can never drift from the loader. Every flag defaults to "not given", so a run config's values
stand unless a flag overrides them.
"""

from __future__ import annotations

import argparse
from typing import Any

# flag -> DataSpec field, in the order --help lists them.
FLAGS: dict[str, str] = {
    "--split": "split",
    "--columns": "columns",
    "--tie-policy": "tie_policy",
    "--skip-bad-rows": "skip_bad_rows",
    "--empty-replies": "empty_replies",
    "--limit": "limit",
}

_METAVARS = {"split": "SPLIT", "columns": "MAP", "limit": "N"}


def _fields() -> dict[str, Any]:
    import dataclasses
    import typing

    from popalign.data.spec import DataSpec

    hints = typing.get_type_hints(DataSpec)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(DataSpec)}


def add_data_options(parser: argparse.ArgumentParser, defaults: dict[str, Any] | None = None) -> None:
    """Add the shared data flags to ``parser``; ``defaults`` are this command's own (eval: ties kept)."""
    import typing

    defaults = defaults or {}
    fields = _fields()
    group = parser.add_argument_group("data options (the same in every command that reads preferences)")
    for flag, name in FLAGS.items():
        f, tp = fields[name]
        text = f.metadata["help"]
        if name in defaults:
            text += f" (here: {defaults[name]})"
        text = text.replace("%", "%%")
        if tp is bool:
            group.add_argument(flag, action="store_true", default=None, help=text)
            continue
        kwargs: dict[str, Any] = {"default": None, "help": text, "metavar": _METAVARS.get(name)}
        choices = typing.get_args(tp)
        if typing.get_origin(tp) is typing.Literal:
            kwargs["choices"], kwargs["metavar"] = choices, None
        if name == "limit":
            kwargs["type"] = int
        if name == "columns":
            from popalign.data.validate import TARGETS

            kwargs["help"] = (
                "column mapping TARGET=SOURCE,... (dotted SOURCE reaches nested fields), or a YAML file "
                f"with a columns: (or data: columns:) mapping; targets: {', '.join(TARGETS)}"
            )
        group.add_argument(flag, **kwargs)


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The DataSpec fields the user set with flags (``--columns`` parsed to a mapping)."""
    out = {}
    for name in FLAGS.values():
        value = getattr(args, name, None)
        if value is None:
            continue
        out[name] = parse_columns(value) if name == "columns" else value
    return out


def data_spec(args: argparse.Namespace, path: str, **defaults: Any):
    """The :class:`DataSpec` for ``path``: this command's ``defaults``, then the flags given."""
    import dataclasses

    from popalign.data.spec import DataSpec

    spec = dataclasses.replace(DataSpec(path=str(path), **defaults), **given(args))
    spec.validate()
    return spec


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The flags as ``data.<field>=value`` overrides of a run config (train, sft)."""
    import json

    out = []
    for name, value in given(args).items():
        if isinstance(value, dict):
            value = json.dumps(value)
        elif isinstance(value, bool):
            value = str(value).lower()
        out.append(f"data.{name}={value}")
    return out


def parse_columns(text: str) -> dict[str, str]:
    """``--columns``: either ``a=b,c=d`` or a YAML file holding ``columns:`` (or a bare mapping)."""
    from pathlib import Path

    from popalign.data.load import parse_column_map
    from popalign.errors import PopalignError

    if text.endswith((".yaml", ".yml")) and "=" not in text:
        import yaml

        from popalign.data.validate import check_column_targets

        try:
            data = yaml.safe_load(Path(text).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise PopalignError(f"--columns {text}: cannot read the YAML file: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("data"), dict) and "columns" in data["data"]:
            data = data["data"]  # a run config: data.columns
        mapping = data.get("columns", data) if isinstance(data, dict) else None
        if not isinstance(mapping, dict):
            raise PopalignError(f"--columns {text}: expected a columns: mapping of target: source")
        mapping = {str(k): str(v) for k, v in mapping.items()}
        check_column_targets(mapping)
        return mapping
    return parse_column_map(text)
