"""One parser for every knob: typed dataclasses, filled from YAML and ``key=value`` overrides.

Each run's configuration is a dataclass whose fields carry their documentation in
``field(metadata={"help": ...})``. :func:`load_config` reads an optional YAML file, applies command-line
overrides (``a.b=3`` reaches nested dataclasses), coerces every value to the field's declared type and
rejects unknown keys with the closest valid names, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from popalign.errors import PopalignError
from popalign.io import atomic_write_text

T = TypeVar("T")


class ConfigError(PopalignError, ValueError):
    """A configuration value or key that cannot be used; the message names the key and the source."""


def help_field(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING):
    """A dataclass field that carries its documentation (shown by ``--help-config``)."""
    kwargs: dict[str, Any] = {"metadata": {"help": help}}
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    return dataclasses.field(**kwargs)


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not name.endswith(("columns", "column_map")):
            nested = _flatten(value, name + ".")
            out.update(nested)
        else:
            out[name] = value
    return out


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{source}: {key}: cannot use {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{source}: {key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (list, tuple):
        (inner, *_) = get_args(tp) or (Any,)
        if isinstance(value, str):
            parsed = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
            value = parsed
        if not isinstance(value, list | tuple):
            value = [value]
        items = [_coerce(v, inner, key, source) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if isinstance(value, str) and not value.strip().startswith("{"):
            # key=value,key=value: the compact form used on command lines (e.g. column mappings).
            pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ConfigError(f"{source}: {key}: expected a mapping like a=b,c=d, got {value!r}")
            value = {k.strip(): v.strip() for k, v in pairs}
        elif isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{source}: {key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).replace("_", ""))
        except ValueError:
            raise ConfigError(f"{source}: {key}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {key}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{source}: {key}: expected a string, got {value!r}")
        return str(value)
    return value


def _fields_by_path(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every settable dotted key of ``cls`` and its type."""
    out: dict[str, Any] = {}
    hints = _type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            out.update(_fields_by_path(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = tp
    return out


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"command line: {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


# Names users bring from other tools, mapped to the field they mean (last part of the key).
_ALIASES = {
    "lr": "learning_rate",
    "batch_size": "per_device_train_batch_size",
    "epochs": "num_train_epochs",
    "grad_accum": "gradient_accumulation_steps",
    "model": "name_or_path",
}


def _unknown_key_error(key: str, valid: list[str], source: str) -> ConfigError:
    prefix, _, last = key.rpartition(".")
    alias = _ALIASES.get(last)
    meant = [v for v in valid if alias and v.rpartition(".")[2] == alias and v.startswith(prefix)]
    close = meant or difflib.get_close_matches(key, valid, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ConfigError(f"{source}: unknown key {key!r}.{hint} (see --help-config for every key)")


def _is_mapping_type(tp: Any) -> bool:
    return tp is dict or get_origin(tp) is dict


def _set_value(values: dict[str, Any], valid: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Store one key; ``a.b.NAME=v`` sets entry ``NAME`` of the mapping field ``a.b`` (``data.columns.x``)."""
    if key in valid:
        values[key] = _coerce(value, valid[key], key, source)
        return
    parent, _, entry = key.rpartition(".")
    if parent in valid and _is_mapping_type(valid[parent]) and entry:
        merged = {**(values.get(parent) or {}), entry: _coerce(value, str, key, source)}
        values[parent] = merged
        return
    raise _unknown_key_error(key, list(valid), source)


def _build(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    hints = _type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        if _is_dataclass_type(tp):
            kwargs[f.name] = _build(tp, values, path + ".")
        elif path in values:
            kwargs[f.name] = values[path]
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None
    return obj


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> T:
    """Build a ``cls`` instance from an optional YAML file and ``key=value`` overrides.

    Overrides win over the file; nested dataclass fields use dotted keys. Raises :class:`ConfigError`
    naming the key and where it came from for unknown keys and values of the wrong type.
    """
    valid = _fields_by_path(cls)
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of key: value")
        for key, value in _flatten(data).items():
            _set_value(values, valid, key, value, str(path))
    for item in overrides:
        key, value = _parse_override(item)
        _set_value(values, valid, key, value, "command line")
    obj = _build(cls, values)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def config_to_dict(obj: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config dataclass (tuples become lists)."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return clean(dataclasses.asdict(obj))


def save_config(obj: Any, path: str | Path) -> None:
    """Write the resolved configuration as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(obj), sort_keys=False))


def describe_config(cls: type) -> str:
    """Every key of ``cls`` with its type, default and documentation, for ``--help-config``."""
    lines = []

    def walk(c: type, prefix: str) -> None:
        hints = _type_hints(c)
        for f in dataclasses.fields(c):
            tp = hints[f.name]
            if _is_dataclass_type(tp):
                walk(tp, f"{prefix}{f.name}.")
                continue
            if f.default is not dataclasses.MISSING:
                default = repr(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = repr(f.default_factory())
            else:
                default = "(required)"
            tname = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
            lines.append(f"  {prefix}{f.name}: {tname} = {default}")
            doc = f.metadata.get("help")
            if doc:
                lines.append(f"      {doc}")

    walk(cls, "")
    return "\n".join(lines)
