"""Import layering: the losses know nothing of models or training, and ``modeling/`` nothing of ``train/``
(nor of distributed training, whose details :mod:`popalign.train.sharding` holds)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "popalign"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("modeling", ("popalign.train", "deepspeed", "torch.distributed")),
        ("losses", ("popalign.train", "popalign.modeling", "popalign.methods")),
    ],
)
def test_package_does_not_import(package, forbidden):
    offenders = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in sorted((SRC / package).rglob("*.py"))
        for name in imported_modules(path)
        if name.startswith(forbidden)
    ]
    assert not offenders, offenders


def test_methods_import_no_training_or_model_code():
    names = imported_modules(SRC / "methods.py")
    assert not [n for n in names if n.startswith(("popalign.train", "popalign.modeling"))]
