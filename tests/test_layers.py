"""The layers point one way, read statically from the source (ast, nothing imported).

    tests/ -> hil/ (the rig, the benchmarks) -> sitesim (sim/: the simulators, the demo) -> gateway/ (the product)

- gateway/ imports nothing from hil, sitesim or tests, and names none of their modules in a string either (an
  ``importlib.import_module("sitesim.demo")`` is an arrow too: plugin commands come through entry points);
- sitesim imports nothing from hil or tests; hil nothing from tests;
- gateway/'s modules import each other without a cycle.

Which imports count: every ``import``/``from ... import`` anywhere in a module, at module level or inside a
function or method (a cycle through a function-level import is still a cycle: it only moves the failure to the
call). Imports under ``if TYPE_CHECKING:`` count for the layers (a type is a dependency too) but not for cycles
(they never run). ``from P import n`` is an edge to the module ``P.n`` when there is one, else to ``P``; the
parent packages a dotted import executes on the way are not edges (``gateway/meters/__init__.py`` re-exporting its
submodules is not a cycle with each of them).
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREES: dict[str, Path] = {"gateway": ROOT / "gateway", "sitesim": ROOT / "sim" / "sitesim", "hil": ROOT / "hil"}
# the top-level packages each layer must not import
FORBIDDEN: dict[str, frozenset[str]] = {
    "gateway": frozenset({"hil", "sitesim", "tests"}),
    "sitesim": frozenset({"hil", "tests"}),
    "hil": frozenset({"tests"}),
}
# Cycles through TYPE_CHECKING imports (which never run, so test_no_import_cycle_among_the_gateways_modules leaves
# them out) that are known, each a set of modules: every such cycle must lie within one of these. Delete an entry
# when its cycle is gone (test_each_known_type_cycle_is_still_there says so).
KNOWN_TYPE_CYCLES: tuple[frozenset[str], ...] = (
    # gateway.config parses [budget] and [planner] with their modules, which annotate with its ServiceConfig / Site
    frozenset({"gateway.config", "gateway.budget.config", "gateway.budget.openadr_config", "gateway.budget.remote",
               "gateway.budget.solar_config", "gateway.planner.config", "gateway.planner.needs"}),
)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (resolved: absolute, the submodule when ``from P import submodule``)
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``
    in_function: bool


def module_name(top: str, tree: Path, path: Path) -> str:
    parts = [top, *path.relative_to(tree).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the three trees: dotted name -> file."""
    found: dict[str, Path] = {}
    for top, tree in TREES.items():
        for path in sorted(tree.rglob("*.py")):
            found[module_name(top, tree, path)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, *, type_only: bool, in_function: bool) -> Iterator[tuple[ast.stmt, bool, bool]]:
    """Every import statement under ``node``, with whether it is TYPE_CHECKING-only and inside a function."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, type_only, in_function
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk_one(stmt, type_only=True, in_function=in_function)
            for stmt in child.orelse:
                yield from _walk_one(stmt, type_only=type_only, in_function=in_function)
        else:
            func = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from _walk(child, type_only=type_only, in_function=in_function or func)


def _walk_one(stmt: ast.stmt, *, type_only: bool, in_function: bool) -> Iterator[tuple[ast.stmt, bool, bool]]:
    if isinstance(stmt, ast.Import | ast.ImportFrom):
        yield stmt, type_only, in_function
    else:
        yield from _walk(stmt, type_only=type_only, in_function=in_function)


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[Import] = []
    for stmt, type_only, in_function in _walk(tree, type_only=False, in_function=False):
        if isinstance(stmt, ast.Import):
            targets = [alias.name for alias in stmt.names]
        else:
            assert isinstance(stmt, ast.ImportFrom)
            if stmt.level:
                base = package.split(".")
                base = base[: len(base) - (stmt.level - 1)]
                mod = ".".join([*base, stmt.module] if stmt.module else base)
            else:
                mod = stmt.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in stmt.names]
        for target in dict.fromkeys(targets):
            out.append(Import(name, target, stmt.lineno, type_only, in_function))
    return out


@functools.cache
def _all_imports() -> tuple[Import, ...]:
    mods = modules()
    known = set(mods)
    return tuple(imp for name, path in mods.items() for imp in imports_of(name, path, known))


def all_imports() -> list[Import]:
    return list(_all_imports())


def _top(module: str) -> str:
    return module.partition(".")[0]


def layer_violations(imports: list[Import]) -> list[str]:
    return [
        f"{imp.source}:{imp.line} imports {imp.target}"
        for imp in imports
        if _top(imp.target) in FORBIDDEN.get(_top(imp.source), frozenset())
    ]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def gateway_graph(imports: list[Import], *, type_only: bool = False) -> dict[str, set[str]]:
    """gateway's modules and the imports among them that run; with ``type_only`` the TYPE_CHECKING ones too."""
    graph: dict[str, set[str]] = {m: set() for m in modules() if _top(m) == "gateway"}
    for imp in imports:
        if (imp.type_only and not type_only) or imp.source == imp.target:
            continue
        if imp.source in graph and imp.target in graph:
            graph[imp.source].add(imp.target)
    return graph


def test_the_product_imports_neither_the_rig_nor_the_simulators_nor_the_tests() -> None:
    imports = all_imports()
    assert {_top(i.source) for i in imports} == set(TREES), "every tree was read"
    assert any(i.target.startswith("gateway.") for i in imports if _top(i.source) == "sitesim")
    violations = layer_violations(imports)
    assert not violations


def test_the_product_names_no_module_of_the_layers_above_in_a_string() -> None:
    """importlib.import_module("sitesim.demo") (the demo command before it became a plugin) is an import too."""
    above = re.compile(r"^(hil|sitesim|tests)(\.\w+)+$")
    found = []
    for name, path in modules().items():
        if _top(name) != "gateway":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and above.match(node.value):
                found.append(f"{name}:{node.lineno} {node.value!r}")
    assert not found


def test_no_import_cycle_among_the_gateways_modules() -> None:
    """Module-level and function-level imports, TYPE_CHECKING-only ones left out: none closes a cycle."""
    cycles = strongly_connected(gateway_graph(all_imports()))
    assert not cycles, "import cycles (each a set of modules that reach each other):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_type_level_cycles_are_only_the_known_ones() -> None:
    cycles = strongly_connected(gateway_graph(all_imports(), type_only=True))
    new = [c for c in cycles if not any(set(c) <= known for known in KNOWN_TYPE_CYCLES)]
    assert not new, "import cycles through TYPE_CHECKING imports:\n" + "\n".join(" <-> ".join(c) for c in new)


def test_each_known_type_cycle_is_still_there() -> None:
    """A known cycle whose modules no longer reach each other is stale: delete it from KNOWN_TYPE_CYCLES."""
    cycles = [set(c) for c in strongly_connected(gateway_graph(all_imports(), type_only=True))]
    for known in KNOWN_TYPE_CYCLES:
        assert any(len(c & known) > 1 for c in cycles), f"{sorted(known)}: no cycle left, delete the entry"


# -- the reader itself, on small sources ---------------------------------------------------------------------
def _read(tmp_path: Path, files: dict[str, str]) -> list[Import]:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    mods = {module_name("pkg", tmp_path, p): p for p in sorted(tmp_path.rglob("*.py"))}
    return [imp for n, p in mods.items() for imp in imports_of(n, p, set(mods))]


def test_the_reader_sees_function_level_and_relative_imports_and_leaves_type_checking_out_of_cycles(
        tmp_path: Path) -> None:
    imports = _read(tmp_path, {
        "__init__.py": "",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n"
                "def f():\n    from . import c\n",
        "b.py": "import pkg.a\n",
        "c.py": "from .a import f\nfrom hil.rig import x\n",
    })
    got = {(i.source, i.target, i.type_only, i.in_function) for i in imports}
    assert ("pkg.a", "pkg.b", True, False) in got
    assert ("pkg.a", "pkg.c", False, True) in got
    assert ("pkg.b", "pkg.a", False, False) in got
    assert ("pkg.c", "pkg.a", False, False) in got
    graph: dict[str, set[str]] = {}
    for i in imports:
        graph.setdefault(i.source, set())
        if not i.type_only and i.target.startswith("pkg"):
            graph[i.source].add(i.target)
    assert strongly_connected(graph) == [["pkg.a", "pkg.c"]]  # a -> b is type-only: no a <-> b
    assert [i.target for i in imports if _top(i.target) == "hil"] == ["hil.rig"]
