"""The package's import graph, its floors and module sizes, read from the sources (``ast``; nothing is imported).

Every ``import`` / ``from ... import`` inside ``src/rlvr_linear`` counts, at module level and inside functions
alike (a function-level import still makes a cycle, or an arrow pointing up; it only hides it until the function
runs).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = "rlvr_linear"
SRC = Path(__file__).resolve().parents[1] / "src" / PKG

#: no module in src/ over this many lines ...
MAX_LINES = 650
#: ... except these, still waiting for their split. Exact: remove a module from the list when it is split.
KNOWN_LARGE: set[str] = set()
#: import cycles still to be broken. Exact: none left; a new cycle fails the test.
KNOWN_CYCLES: list[set[str]] = []
#: the package's floors, bottom first: its packages and its only top-level modules (``errors``, ``__main__``). A
#: module may import its own package and the ones on lower floors, never another one on its floor or above. The
#: top-level ``__init__`` (``__version__`` only) imports nothing and sits under every floor.
FLOORS: list[tuple[str, ...]] = [
    ("errors",),
    ("runtime",),
    ("io",),
    ("evaluation", "reporting"),
    ("models", "linearity", "extrapolation"),
    ("advisor",),
    ("training",),
    ("study",),
    ("regime",),
    ("cli",),
    ("__main__",),
]
#: the only modules at the top of the package; everything else lives in a package
TOP_LEVEL = {"__init__.py", "__main__.py", "errors.py"}
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
    # relative at module level, relative inside a function, and a submodule imported by ``from .. import``
    assert "rlvr_linear.linearity.kernel" in graph["rlvr_linear.linearity.weights"]
    assert "rlvr_linear.reporting.plots" in graph["rlvr_linear.linearity.weights"]  # ``from ..reporting import plots``
    assert "rlvr_linear.io.hub" in graph["rlvr_linear.io.checkpoints"]  # only inside functions
    assert "rlvr_linear.io.loading" in graph["rlvr_linear.evaluation.evaluation"]  # two levels up, then down
    assert "rlvr_linear" in graph["rlvr_linear.cli"]  # ``from .. import __version__``


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


# --------------------------------------------------------------------------------------------------
# Floors


def _unit(name: str) -> str | None:
    """The floor unit of a module: its top-level package or top-level module (None: the top-level ``__init__``)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def _upward(graph: dict[str, set[str]], floors: list[tuple[str, ...]]) -> dict[str, list[str]]:
    """Imports that do not go down: ``{module: [imported module, ...]}`` for every target outside the module's own
    unit and not on a lower floor (the top-level ``__init__`` is under every floor)."""
    floor = {u: i for i, units in enumerate(floors) for u in units}
    bad: dict[str, list[str]] = {}
    for name, targets in graph.items():
        src = _unit(name)
        for t in sorted(targets):
            dst = _unit(t)
            if dst is None or dst == src:
                continue
            if src is None or floor[dst] >= floor[src]:
                bad.setdefault(name, []).append(t)
    return bad


def test_the_floor_check_finds_arrows_that_do_not_go_down():
    graph = {
        "p.a.x": {"p.a.y", "p.b.z", "p"},  # own package, one floor down, the top level: fine
        "p.b.z": {"p.a.x", "p.c"},  # up, and sideways to a unit on its own floor
        "p.c": set(),
        "p": {"p.c"},  # the top level imports nothing
    }
    floors = [("b", "c"), ("a",)]
    assert _upward(graph, floors) == {"p.b.z": ["p.a.x", "p.c"], "p": ["p.c"]}


def test_every_unit_sits_on_exactly_one_floor():
    units = [u for floor in FLOORS for u in floor]
    assert len(units) == len(set(units)), "a unit on two floors"
    present = {_unit(name) for name in _modules()} - {None}
    assert present == set(units), {"on no floor": sorted(present - set(units)), "gone": sorted(set(units) - present)}


def test_imports_only_go_down():
    assert _upward(_graph(), FLOORS) == {}, "an import to a package on the same floor or above: move the function"


def test_only_init_main_and_errors_at_the_top_level():
    assert {p.name for p in SRC.glob("*.py")} == TOP_LEVEL
    folders = [p for p in SRC.iterdir() if p.is_dir() and p.name != "__pycache__"]
    data = sorted(p.name for p in folders if not (p / "__init__.py").exists())
    assert data == ["assets", "templates"]  # the package data folders (pyproject.toml)


def _doc(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text(), str(path))) or ""


def test_each_package_docstring_names_the_floors_below_it():
    floor = {u: i for i, units in enumerate(FLOORS) for u in units}
    names = set(floor)
    for init in sorted(SRC.glob("*/__init__.py")):
        unit = init.parent.name
        paragraphs = [p for p in _doc(init).split("\n\n") if p.startswith("May import:")]
        assert len(paragraphs) == 1, f"{unit}: no 'May import:' paragraph in its docstring"
        said = set(re.findall(r"``([\w.]+)``", paragraphs[0])) & names
        below = {u for u in names if floor[u] < floor[unit]}
        assert said == below, {unit: {"missing": sorted(below - said), "not below": sorted(said - below)}}


def test_the_top_level_docstring_draws_the_floors():
    lines = _doc(SRC / "__init__.py").splitlines()
    drawn = [tuple(line.strip().split("  ")[0].split(", ")) for line in lines if line.startswith("    ")]
    assert drawn == FLOORS
