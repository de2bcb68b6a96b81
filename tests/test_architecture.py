"""The import layering of the ``seqdsl`` package: no import cycles.

The import graph is built from the source with :mod:`ast`, not by importing
anything: every ``import``/``from ... import`` statement counts, wherever it
is (module level, inside a function, under ``if TYPE_CHECKING:``), with
relative imports resolved. A function-level import that only dodges a cycle is
still a cycle here. ``from pkg import name`` is an edge to ``pkg.name`` when
that is a module of the package, else to ``pkg``. The implicit import of a
parent package (importing ``seqdsl.emit.common`` runs ``seqdsl/emit/__init__``)
is not counted: every module would otherwise sit on a cycle through
``seqdsl/__init__.py``.

The layers themselves are described in ``docs/architecture.md``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE = "seqdsl"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(current: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` in ``current``."""
    if level == 0:
        return module or ""
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imports_of(name: str, path: Path, modules: Iterable[str]) -> set[str]:
    """The package modules that the module ``name`` (file ``path``) imports, anywhere."""
    known = set(modules)
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()

    def add(target: str) -> None:
        # ``import seqdsl.a.b`` names seqdsl.a.b; keep the longest prefix that is a module
        parts = target.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts:
            out.add(".".join(parts))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                add(sub if sub in known else base)
    out.discard(name)
    return out


def import_graph(
    root: Path = ROOT, package: str = PACKAGE, excluded: Iterable[str] = ()
) -> dict[str, set[str]]:
    """Module -> the package modules it imports, without the ``excluded`` prefixes."""
    prefixes = tuple(excluded)

    def kept(m: str) -> bool:
        return not any(m == p or m.startswith(p + ".") for p in prefixes)

    files = module_files(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        if kept(name):
            graph[name] = {m for m in imports_of(name, path, files) if kept(m)}
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _one_cycle(graph: Mapping[str, Iterable[str]], comp: list[str]) -> list[str]:
    """One concrete cycle inside a strongly connected component, for the message."""
    members = set(comp)
    start = comp[0]
    path = [start]
    seen = {start}
    v = start
    while True:
        nxt = sorted(w for w in graph[v] if w in members)
        if start in nxt and len(path) > 1:
            return [*path, start]
        w = next((w for w in nxt if w not in seen), None)
        if w is None:  # the component closes elsewhere: show the component
            return [*comp, comp[0]]
        path.append(w)
        seen.add(w)
        v = w


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    text = "\n".join(" -> ".join(_one_cycle(graph, c)) for c in found)
    assert not found, f"import cycles among seqdsl modules:\n{text}"


def test_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    # module level, relative
    assert "seqdsl.catalogue" in graph["seqdsl.checker"]
    # ``from . import ir`` is an edge to the module seqdsl.ir
    assert "seqdsl.ir" in graph["seqdsl.api"]
    # function level, relative, into a package
    assert "seqdsl.emit" in graph["seqdsl.api"]
    # the package itself
    assert {"seqdsl.api", "seqdsl.diagnostics"} <= graph["seqdsl"]
    # excluded prefixes drop their modules and the edges into them
    cut = import_graph(excluded=("seqdsl.emit",))
    assert not any(m == "seqdsl.emit" or m.startswith("seqdsl.emit.") for m in cut)
    assert "seqdsl.emit" not in cut["seqdsl.api"]
    assert "seqdsl.runtime" in cut


def test_cycle_finder() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert _one_cycle(g, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve() -> None:
    assert _resolve("seqdsl.emit.torch_backend", False, 1, "common") == "seqdsl.emit.common"
    assert _resolve("seqdsl.emit.torch_backend", False, 2, "catalogue") == "seqdsl.catalogue"
    assert _resolve("seqdsl.emit", True, 1, "common") == "seqdsl.emit.common"
    assert _resolve("seqdsl.emit", True, 2, None) == "seqdsl"
    assert _resolve("seqdsl.cli", False, 1, None) == "seqdsl"
    assert _resolve("seqdsl.cli", False, 0, "seqdsl.api") == "seqdsl.api"
