"""Import layering, read from every import of every module (those inside functions included).

Lower layers never import higher ones: the losses know nothing of models or training, ``modeling/`` nothing of
``train/`` (nor of distributed training, whose details :mod:`popalign.train.sharding` holds), ``eval/``
nothing of ``train/``, ``hub/`` nothing of ``eval/``; and no two modules import each other, directly or
round a longer loop. Function-level imports keep ``popalign --help`` fast, so they are many; they count
here exactly like imports at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "popalign"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def names_in(source: str, package: str) -> set[str]:
    """Every dotted name ``source`` (a module of ``package``) imports, anywhere in the file; relative
    imports made absolute. ``from a.b import c`` yields ``a.b`` and ``a.b.c`` (``c`` may be a module or a
    name in ``a.b``).
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names.add(stem)
            names.update(f"{stem}.{alias.name}" for alias in node.names)
    return names


def imported_names(name: str) -> set[str]:
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return names_in(path.read_text(encoding="utf-8"), package)


def module_imports(name: str) -> set[str]:
    """The popalign modules that module ``name`` imports (packages' ``__init__`` only when named alone)."""
    return {n for n in imported_names(name) if n in MODULES and n != name}


def import_graph() -> dict[str, set[str]]:
    return {name: module_imports(name) for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def is_within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _package_inits(component: list[str]) -> int:
    return sum(1 for m in component if MODULES[m].name == "__init__.py")


def test_no_import_cycle():
    # A package's __init__ re-exporting its own modules forms a loop through the __init__ alone; any
    # loop of two or more plain modules is a real circle.
    circles = [c for c in cycles(import_graph()) if len(c) - _package_inits(c) > 1]
    assert not circles, circles


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("popalign.modeling", ("popalign.train", "deepspeed", "torch.distributed")),
        ("popalign.losses", ("popalign.train", "popalign.modeling", "popalign.methods", "popalign.eval")),
        ("popalign.eval", ("popalign.train",)),
        ("popalign.hub", ("popalign.eval", "popalign.train")),
        ("popalign.methods", ("popalign.train", "popalign.modeling")),
    ],
)
def test_package_does_not_import(package, forbidden):
    offenders = [
        f"{name} imports {imported}"
        for name in MODULES
        if is_within(name, package)
        for imported in sorted(imported_names(name))
        if any(is_within(imported, f) for f in forbidden)
    ]
    assert not offenders, offenders


# Lowest first; a module imports only from its own layer or below (docs/architecture.md draws them).
LAYERS = [
    ("errors", "io", "config", "document"),
    ("data", "losses"),
    ("methods", "method_tables", "modeling", "pop"),
    ("eval", "hub"),
    ("train", "probe", "testbed", "label"),
    ("cli",),
]


def _layer(name: str) -> int | None:
    """The layer of a ``popalign.x...`` module; None for the package itself (``popalign.__version__``)."""
    part = name.split(".")[1] if name.count(".") else None
    return next((i for i, names in enumerate(LAYERS) if part in names), None)


def test_every_module_has_a_layer_and_imports_run_downwards():
    unplaced = sorted({name.split(".")[1] for name in MODULES if name.count(".") and _layer(name) is None})
    assert not unplaced, f"add these to LAYERS: {unplaced}"
    upward = [
        f"{name} imports {imported}"
        for name, imported_set in import_graph().items()
        for imported in sorted(imported_set)
        if _layer(imported) is not None and _layer(name) is not None and _layer(imported) > _layer(name)
    ]
    assert not upward, upward


def test_no_source_file_over_the_limit():
    lines = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    long = {name: n for name, n in lines.items() if n > MAX_LINES}
    assert not long, long


def test_the_reader_sees_function_level_and_relative_imports():
    source = "import os\n\ndef f():\n    from popalign.io import atomic_write_text\n    from . import stats\n"
    assert names_in(source, "popalign.eval") == {
        "os",
        "popalign.io",
        "popalign.io.atomic_write_text",
        "popalign.eval",
        "popalign.eval.stats",
    }
    assert names_in("from ..errors import PopalignError", "popalign.eval") >= {"popalign.errors"}
    assert "popalign.modeling.lora" in module_imports("popalign.train.save")  # inside a function there


def test_cycles_are_found_round_longer_loops():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
