"""The import graph of ``drivesync``: every import at module level, and no cycle between modules."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "drivesync"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE


def _modules() -> dict[str, Path]:
    """Map every module of the package to its file (``pkg/__init__.py`` is ``pkg``)."""
    found: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    """Return whether ``node`` is an ``if TYPE_CHECKING:`` block."""
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Yield the imports run at module load (``if``/``try`` bodies too, not TYPE_CHECKING)."""
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                stack.extend(handler.body)


def _nested_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Return the imports that are not run at module load (inside functions or classes)."""
    top = {id(node) for node in _top_level_imports(tree)}
    type_checking = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node)
        for child in ast.walk(node)
    }
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        and id(node) not in top
        and id(node) not in type_checking
    ]


def _base(module: str, node: ast.ImportFrom) -> str:
    """Resolve the module an ``ImportFrom`` names, relative imports included."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    parts = module.split(".")
    keep = len(parts) - node.level + (1 if is_package else 0)
    base = ".".join(parts[:keep])
    return f"{base}.{node.module}" if node.module else base


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """Yield the package modules an import loads (a submodule when ``from pkg import mod``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = _base(module, node)
        names = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
            for alias in node.names
        ]
    for name in names:
        while name and name not in MODULES:  # ``import drivesync.x.y`` of a non-module attribute
            name = name.rpartition(".")[0]
        if name.split(".")[0] == PACKAGE:
            yield name


def _with_packages(module: str, target: str) -> Iterator[str]:
    """Yield ``target`` and the subpackages whose ``__init__`` loading it runs first.

    The root package and the importer's own packages are left out: they are already loading.
    """
    parts = target.split(".")
    for i in range(2, len(parts) + 1):
        name = ".".join(parts[:i])
        if name in MODULES and name != module and not module.startswith(f"{name}."):
            yield name


def _graph() -> dict[str, set[str]]:
    """Map every module to the package modules it imports at load time."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[module] = {
            name
            for node in _top_level_imports(tree)
            for target in _targets(module, node)
            for name in _with_packages(module, target)
        }
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return one cycle per back edge found by a depth-first search."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_function_level_import() -> None:
    """Every import in drivesync/ sits at its module's top (TYPE_CHECKING blocks aside)."""
    nested = []
    for path in MODULES.values():
        tree = ast.parse(path.read_text(), str(path))
        nested += [f"{path.relative_to(ROOT.parent)}:{n.lineno}" for n in _nested_imports(tree)]
    assert nested == []


def test_no_import_cycle() -> None:
    """The module-level imports between drivesync modules form no cycle."""
    assert [" -> ".join(cycle) for cycle in _cycles(_graph())] == []


def test_cycle_finder_finds_a_cycle() -> None:
    """The search reports a three-module cycle and nothing on a chain."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
