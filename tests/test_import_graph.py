"""The import graph of the project's packages: no cycles, and the engine stands alone.

Every module under homer/, app/ and storage/ is parsed (nothing is imported), and every
import statement counts: at module top, inside functions, under ``if`` / ``try``. Relative
imports are resolved. ``from pkg import name`` is an edge to the module ``pkg.name`` when
there is one, else to ``pkg``."""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("homer", "app", "storage")
ENGINE_MUST_NOT_IMPORT = ("app", "storage")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_names(name: str, path: Path, modules) -> set[str]:
    """The absolute dotted names module ``name`` (at ``path``) imports, wherever the
    statement is: ``import a.b`` -> a.b; ``from a import b`` -> a.b if that is one of
    ``modules``, else a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    raise AssertionError(f"{path}: relative import beyond the top-level package")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (``import a.b.c`` counts as its longest
    prefix that is a project module)."""
    modules = module_files()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target in imported_names(name, path, modules):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle (a -> ... -> a) in every strongly connected component of more than
    one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.add(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        components.append(component)
    cycles = []
    for component in components:
        start = min(component)
        paths, queue, cycle = {start: [start]}, deque([start]), None
        while cycle is None:
            v = queue.popleft()
            for w in sorted(graph[v] & component):
                if w == start:
                    cycle = paths[v] + [start]
                    break
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    queue.append(w)
        cycles.append(cycle)
    return sorted(cycles)


def test_the_graph_resolves_relative_and_lazy_imports():
    graph = import_graph()
    assert {"homer", "app", "storage"} <= set(graph)
    assert "homer.cache" in graph["homer.tree"]  # module-level relative import
    assert "homer.calibration" in graph["homer.tree"]  # inside a function


def test_find_cycles_reports_each_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b", "c"}, "b": set(), "c": {"b"}}) == []
    assert find_cycles({"a": {"b"}, "b": {"a"}, "x": {"y"}, "y": {"x"}}) == [["a", "b", "a"], ["x", "y", "x"]]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_engine_imports_nothing_from_the_app_or_the_store():
    modules = module_files()
    offending = sorted(
        f"{name} imports {target}"
        for name, path in modules.items()
        if name.split(".")[0] == "homer"
        for target in imported_names(name, path, modules)
        if target.split(".")[0] in ENGINE_MUST_NOT_IMPORT
    )
    assert not offending, "homer/ must not import app/ or storage/: " + ", ".join(offending)


# The rooms and which rooms each may import (docs/development.md): the method alone at the
# bottom; document reading and question-time answering above it; the store above those; the
# app on top. The engine's command (homer.cli) is a door of its own over the method's rooms.
LAYERS = {
    "homer": {"homer"},
    "homer.reading": {"homer", "homer.reading"},
    "homer.answering": {"homer", "homer.reading", "homer.answering"},
    "homer.experiments": {"homer", "homer.reading", "homer.answering", "homer.experiments"},
    "homer.cli": {"homer", "homer.reading", "homer.answering", "homer.cli"},
    "storage": {"homer", "homer.reading", "homer.answering", "storage"},
    "app": {"homer", "homer.reading", "homer.answering", "homer.cli", "storage", "app"},
}


def room(module: str) -> str:
    """The room (a key of :data:`LAYERS`) a module belongs to."""
    parts = module.split(".")
    if parts[0] != "homer":
        return parts[0]
    if len(parts) > 1 and parts[1] in ("reading", "answering", "experiments"):
        return f"homer.{parts[1]}"
    if len(parts) > 1 and parts[1] in ("cli", "__main__"):
        return "homer.cli"
    return "homer"


def test_each_room_imports_only_the_rooms_below_it():
    graph = import_graph()
    offending = sorted(
        f"{name} ({room(name)}) imports {target} ({room(target)})"
        for name, targets in graph.items()
        if name != "homer"  # the package's lazy exports
        for target in targets
        if room(target) not in LAYERS[room(name)]
    )
    assert not offending, "layer rules (docs/development.md): " + "; ".join(offending)


def test_the_layer_check_sees_a_violation():
    assert room("homer.tree") == "homer" and room("homer.reading.formats.ocr") == "homer.reading"
    assert room("homer.answering.pipeline") not in LAYERS["homer"]
    assert room("storage.store") not in LAYERS["homer.answering"] and room("app.chat") not in LAYERS["storage"]
