"""The package's import graph and module sizes, read from the sources (``ast``; nothing is imported).

Every ``import`` / ``from ... import`` inside ``src/rlvr_linear`` counts, at module level and inside functions
alike (a function-level import still makes a cycle; it only hides it until the function runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = "rlvr_linear"
SRC = Path(__file__).resolve().parents[1] / "src" / PKG

#: no module in src/ over this many lines ...
MAX_LINES = 650
#: ... except these, still waiting for their split (issue 12). Exact: remove a module from the list when it is split.
KNOWN_LARGE: set[str] = set()
#: import cycles still to be broken (issue 12). Exact: none left; a new cycle fails the test.
KNOWN_CYCLES: list[set[str]] = []
#: the modules that may import the command line: the CLI itself and ``python -m rlvr_linear``
CLI = "rlvr_linear.cli"
CLI_IMPORTERS_ALLOWED = {"rlvr_linear.__main__"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports (module level or not)."""
    pkg = name if _is_package(path) else name.rpartition(".")[0]
    out: set[str] = set()

    def add(target: str) -> None:
        # the deepest module of ``target`` that exists (``a.b.c`` where c is a name in module a.b -> a.b)
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target.startswith(PKG) and target != name:
            out.add(target)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                add(sub if sub in modules else mod)  # ``from pkg import submodule`` imports the submodule
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan), plus modules importing themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_every_kind_of_import():
    graph = _graph()
    assert len(graph) > 30 and "rlvr_linear.linearity.weights" in graph
    # relative at module level, relative inside a function, and a submodule imported by ``from . import``
    assert "rlvr_linear.linearity.kernel" in graph["rlvr_linear.linearity.weights"]
    assert "rlvr_linear.plots" in graph["rlvr_linear.linearity.weights"]  # ``from .. import plots`` in save()
    assert "rlvr_linear.io.hub" in graph["rlvr_linear.io.checkpoints"]  # only inside functions
    assert "rlvr_linear.io.checkpoints" in graph["rlvr_linear.checkpoints"]  # the old path re-exports


def test_the_cycle_finder_finds_cycles():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "d"}, "e": set()}
    assert sorted(map(sorted, _cycles(g))) == [["a", "b", "c"], ["d"]]


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert sorted(map(sorted, cycles)) == sorted(map(sorted, KNOWN_CYCLES)), (
        "import cycles (break them, or if one was broken, remove it from KNOWN_CYCLES)"
    )


def test_only_the_cli_imports_the_cli():
    bad = {
        name: sorted(t for t in targets if t == CLI or t.startswith(CLI + "."))
        for name, targets in _graph().items()
        if not (name == CLI or name.startswith(CLI + ".")) and name not in CLI_IMPORTERS_ALLOWED
    }
    assert {k: v for k, v in bad.items() if v} == {}


@pytest.mark.parametrize("limit", [MAX_LINES])
def test_no_module_is_too_large(limit):
    sizes = {str(p.relative_to(SRC.parent)): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    large = {p for p, n in sizes.items() if n > limit}
    assert large == KNOWN_LARGE, {p: sizes.get(p) for p in large ^ KNOWN_LARGE}
