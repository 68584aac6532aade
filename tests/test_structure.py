"""The package's shape: its modules import each other without a cycle, and no class grows past 250 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import foldaxes

PACKAGE = Path(foldaxes.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """The package modules that ``path`` imports, at any depth of the file (``TYPE_CHECKING`` blocks included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module)
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("foldaxes."):
            found.add(node.module.split(".")[1])
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as the list of modules along it, or ``None``."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for other in sorted(graph.get(module, ())):
            if state.get(other) == "open":
                return [*path[path.index(other) :], other]
            if other not in state and (cycle := visit(other, [*path, other])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_no_import_cycle() -> None:
    graph = {
        path.stem: imported_modules(path) - {"__init__"} for path in PACKAGE.glob("*.py") if path.stem != "__init__"
    }
    assert graph["_call"] >= {"_compiled", "_chunks", "_ragged", "_expanded"}  # the walk sees the imports
    assert find_cycle(graph) is None, find_cycle(graph)


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_class_over_250_lines() -> None:
    sizes = {
        f"{path.name}:{node.name}": node.end_lineno - node.lineno + 1
        for path in PACKAGE.glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and node.end_lineno is not None
    }
    assert "_compiled.py:CompiledPattern" in sizes
    assert {name: size for name, size in sizes.items() if size > 250} == {}
