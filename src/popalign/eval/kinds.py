"""The registry of evaluation kinds: each is registered once, in the order reports show them."""

from __future__ import annotations

from popalign.errors import PopalignError
from popalign.eval.builtin_kinds import BUILTIN
from popalign.eval.kind import EvalKind

KINDS: dict[str, EvalKind] = {}


def register_kind(kind: EvalKind) -> EvalKind:
    """Add ``kind`` to the registry (after the others); a second kind of one name or file is an error."""
    if kind.name in KINDS:
        raise PopalignError(f"an evaluation kind named {kind.name!r} is already registered")
    if any(k.file == kind.file for k in KINDS.values()):
        raise PopalignError(f"two evaluation kinds would write {kind.file}")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> EvalKind:
    try:
        return KINDS[name]
    except KeyError:
        raise PopalignError(f"unknown evaluation kind {name!r} (known: {', '.join(KINDS)})") from None


for _kind in BUILTIN:
    register_kind(_kind)
