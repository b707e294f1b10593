"""The one mechanism behind the loss forms, margin sources and weightings registries: name -> instance."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def registrar(table: dict[str, Any], kind: str) -> Callable[[type[T]], type[T]]:
    """A class decorator adding one instance of the class to ``table`` under its ``name``, once."""

    def register(cls: type[T]) -> type[T]:
        name = cls.name  # type: ignore[attr-defined]
        if name in table:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = cls()
        return cls

    register.__doc__ = f"Class decorator: register one instance of the class as a {kind}, under its name."
    return register


def lookup(table: dict[str, T], kind: str, name: str) -> T:
    """``table[name]``; ``ValueError`` listing the valid names otherwise."""
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(table)}")
    return table[name]
