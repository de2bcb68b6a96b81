"""Standalone modules: the run-time definitions a generated module imports, copied in.

A generated module imports what it uses from :mod:`seqdsl.runtime`
(``from seqdsl.runtime.torch import LSTM, check_inputs``). :func:`make_standalone`
turns it into a file that needs only NumPy and its framework: it reads the
runtime modules' source with :mod:`ast` (it imports none of them, so it works
with no framework installed), copies each imported definition and, transitively,
the definitions and imports it reads, and replaces the ``seqdsl.runtime``
imports by them. The copies are the runtime's own lines, in the runtime's order,
so a standalone module runs exactly the code the importing module runs.

:func:`format_imports` writes an import block in the order ruff's isort wants
(the emitters and :func:`make_standalone` share it).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

__all__ = ["RUNTIME", "ImportItem", "StandaloneError", "format_imports", "make_standalone"]

#: the package whose modules :func:`make_standalone` copies from
RUNTIME = "seqdsl.runtime"
_FIRST_PARTY = "seqdsl"
_LINE = 100  # ruff's line length for this project


class StandaloneError(Exception):
    """A runtime module or a generated module that breaks the rules of copying
    (see ``seqdsl/runtime/__init__.py``): a bug in seqdsl, not in a model."""


@dataclass(frozen=True, order=True)
class ImportItem:
    """One imported name: ``import module [as alias]`` (name None) or
    ``from module import name [as alias]``; ``comment`` ends the line (a noqa directive)."""

    module: str
    name: str | None = None
    alias: str | None = None
    comment: str = ""

    @property
    def bound(self) -> str:
        """The name the statement binds in the importing module."""
        if self.alias:
            return self.alias
        if self.name is not None:
            return self.name
        return self.module.partition(".")[0]

    def text(self) -> str:
        what = self.module if self.name is None else self.name
        return what + (f" as {self.alias}" if self.alias else "")


# --------------------------------------------------------------------------
# import blocks


def _section(module: str) -> int:
    top = module.partition(".")[0]
    if top == "__future__":
        return 0
    if top in sys.stdlib_module_names:
        return 1
    if top == _FIRST_PARTY:
        return 3
    return 2


def _member_key(name: str) -> tuple[int, str, str]:
    """isort's order-by-type: CONSTANTS, then Classes, then the rest."""
    if name.isupper() and len(name) > 1:
        kind = 0
    elif name[:1].isupper():
        kind = 1
    else:
        kind = 2
    return (kind, name.lower(), name)


def format_imports(items: Iterable[ImportItem]) -> list[str]:
    """The lines of an import block as ruff's isort orders it (profile of this
    project: sections separated by one blank line; in each, ``import x`` lines
    before ``from x import ...`` lines, modules case-insensitively; one ``from``
    line per module, its names by type, wrapped one per line past 100 columns)."""
    plain: dict[int, set[ImportItem]] = {}
    froms: dict[int, dict[str, dict[str, ImportItem]]] = {}
    for it in items:
        sec = _section(it.module)
        if it.name is None:
            plain.setdefault(sec, set()).add(it)
        else:
            names = froms.setdefault(sec, {}).setdefault(it.module, {})
            old = names.get(it.text())
            if old is None or (not old.comment and it.comment):
                names[it.text()] = it
    out: list[str] = []
    for sec in sorted(set(plain) | set(froms)):
        if out:
            out.append("")
        for it in sorted(plain.get(sec, ()), key=lambda i: (i.module.lower(), i.module, i.text())):
            comment = f"  {it.comment}" if it.comment else ""
            out.append(f"import {it.text()}{comment}")
        for module in sorted(froms.get(sec, {}), key=lambda m: (m.lower(), m)):
            members = sorted(froms[sec][module].values(), key=lambda i: _member_key(i.text()))
            comments = [i.comment for i in members if i.comment]
            comment = f"  {comments[0]}" if comments else ""
            line = f"from {module} import {', '.join(i.text() for i in members)}"
            if len(line) <= _LINE:
                out.append(line + comment)
            else:
                out.append(f"from {module} import ({comment}")
                out.extend(f"    {i.text()}," for i in members)
                out.append(")")
    return out


def _import_items(node: ast.Import | ast.ImportFrom, line: str) -> list[ImportItem]:
    """The names one import statement binds (``line``: its last source line, for a comment)."""
    tail = line[node.end_col_offset :] if node.end_col_offset is not None else ""
    comment = tail.strip() if tail.strip().startswith("#") else ""
    if isinstance(node, ast.Import):
        return [ImportItem(a.name, None, a.asname, comment) for a in node.names]
    if node.level:
        raise StandaloneError(f"relative import at line {node.lineno} outside the runtime")
    return [ImportItem(node.module or "", a.name, a.asname, comment) for a in node.names]


# --------------------------------------------------------------------------
# runtime modules, as definitions


@dataclass
class _Def:
    binds: tuple[str, ...]
    text: str
    reads: frozenset[str]


@dataclass
class _RuntimeModule:
    name: str
    defs: list[_Def] = field(default_factory=list)
    #: top-level name -> index in defs
    where: dict[str, int] = field(default_factory=dict)
    #: names bound by imports of other libraries
    imports: dict[str, ImportItem] = field(default_factory=dict)
    #: names imported from other runtime modules -> that module
    runtime: dict[str, str] = field(default_factory=dict)
    future_annotations: bool = False


_Scope = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_Comprehension = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _stored(nodes: Iterable[ast.AST]) -> set[str]:
    """The names a scope's own statements bind (not those of nested scopes, whose
    own names count): assignments, loop and ``with`` targets, imports, definitions."""
    out: set[str] = set()
    todo = list(nodes)
    while todo:
        n = todo.pop()
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
            continue
        if isinstance(n, (ast.Lambda, *_Comprehension)):
            continue
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            out.add(n.id)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).partition(".")[0] for a in n.names)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            out.add(n.name)
        todo.extend(ast.iter_child_nodes(n))
    return out


def _free(node: ast.AST) -> set[str]:
    """The names ``node`` reads from outside itself, with Python's scoping: a
    function's parameters and the names it binds are its own, and a method does
    not see its class's names. (Annotations count: ruff checks them.)"""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        a = node.args
        params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, (a.vararg, a.kwarg))]
        outer: set[str] = set()
        for d in (*a.defaults, *filter(None, a.kw_defaults)):
            outer |= _free(d)
        body: list[ast.AST]
        if isinstance(node, ast.Lambda):
            body = [node.body]
        else:
            for e in (*node.decorator_list, *(p.annotation for p in params), node.returns):
                if e is not None:
                    outer |= _free(e)
            body = list(node.body)
        inner = set().union(*(_free(b) for b in body)) if body else set()
        return outer | (inner - _stored(body) - {p.arg for p in params})
    if isinstance(node, ast.ClassDef):
        outer = set()
        for e in (*node.decorator_list, *node.bases, *(k.value for k in node.keywords)):
            outer |= _free(e)
        own = _stored(node.body)
        for stmt in node.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                outer |= _free(stmt)  # methods do not see the class's names
            else:
                outer |= _free(stmt) - own
        return outer
    if isinstance(node, _Comprehension):
        targets = _stored([g.target for g in node.generators])
        inner = set().union(*(_free(c) for c in ast.iter_child_nodes(node)))
        return inner - targets
    if isinstance(node, ast.Name):
        return {node.id} if isinstance(node.ctx, ast.Load) else set()
    return set().union(*(_free(c) for c in ast.iter_child_nodes(node)))


def _names_read(node: ast.AST) -> frozenset[str]:
    return frozenset(_free(node))


def _bound_by(node: ast.stmt) -> tuple[str, ...]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return (node.name,)
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, ast.AnnAssign):
        targets = [node.target]
    names: list[str] = []
    for t in targets:
        for n in ast.walk(t):
            if isinstance(n, ast.Name):
                names.append(n.id)
    return tuple(names)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name of a (possibly relative) ``from`` import in ``module``."""
    if not node.level:
        return node.module or ""
    package = module.rsplit(".", node.level)[0]
    return f"{package}.{node.module}" if node.module else package


def _source_path(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise StandaloneError(f"no runtime module {module}")
    return Path(spec.origin)


@cache
def _runtime_module(module: str) -> _RuntimeModule:
    path = _source_path(module)
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source, str(path))
    mod = _RuntimeModule(module)
    body = list(tree.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the module docstring
    for node in body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            mod.future_annotations |= any(a.name == "annotations" for a in node.names)
            continue
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if target == RUNTIME or target.startswith(RUNTIME + "."):
                for a in node.names:
                    if a.asname and a.asname != a.name:
                        raise StandaloneError(
                            f"{path}:{node.lineno}: runtime names are imported without `as`"
                        )
                    mod.runtime[a.name] = target
                continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for it in _import_items(node, lines[(node.end_lineno or node.lineno) - 1]):
                mod.imports[it.bound] = it
            continue
        binds = _bound_by(node)
        if not binds:
            raise StandaloneError(
                f"{path}:{node.lineno}: a runtime module defines only functions, classes "
                f"and constants at top level (found {type(node).__name__})"
            )
        if binds == ("__all__",):
            continue
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        text = "\n".join(lines[first - 1 : node.end_lineno])
        for name in binds:
            mod.where[name] = len(mod.defs)
        mod.defs.append(_Def(binds, text, _names_read(node)))
    return mod


def _closure(
    requests: Iterable[tuple[str, str]],
) -> tuple[dict[str, set[int]], set[ImportItem], bool]:
    """Every definition the requested (module, name) pairs need, per module, and the
    imports of other libraries those definitions read."""
    need: dict[str, set[int]] = {}
    imports: set[ImportItem] = set()
    future = False
    todo = list(requests)
    seen: set[tuple[str, str]] = set()
    while todo:
        module, name = todo.pop()
        if (module, name) in seen:
            continue
        seen.add((module, name))
        mod = _runtime_module(module)
        if name in mod.runtime:
            todo.append((mod.runtime[name], name))
            continue
        if name not in mod.where:
            raise StandaloneError(f"{module} defines no {name!r}")
        index = mod.where[name]
        if index in need.setdefault(module, set()):
            continue
        need[module].add(index)
        future |= mod.future_annotations
        for read in mod.defs[index].reads:
            if read in mod.where or read in mod.runtime:
                todo.append((module, read))
            elif read in mod.imports:
                imports.add(mod.imports[read])
    return need, imports, future


def _module_order(modules: Iterable[str]) -> list[str]:
    """Runtime modules, each after the runtime modules it imports from."""
    order: list[str] = []

    def visit(m: str, path: tuple[str, ...]) -> None:
        if m in order:
            return
        if m in path:
            raise StandaloneError(f"runtime import cycle: {' -> '.join((*path, m))}")
        for dep in sorted(set(_runtime_module(m).runtime.values())):
            visit(dep, (*path, m))
        order.append(m)

    for m in sorted(modules):
        visit(m, ())
    return order


# --------------------------------------------------------------------------
# generated modules


def make_standalone(text: str) -> str:
    """``text`` (a generated module) with its ``seqdsl.runtime`` imports replaced by
    the definitions they name and everything those read, copied from the runtime's
    source: a module that imports no ``seqdsl.runtime``."""
    tree = ast.parse(text)
    lines = text.splitlines()
    body = list(tree.body)
    start = 1 if body and isinstance(body[0], ast.Expr) else 0  # the docstring
    block: list[ast.Import | ast.ImportFrom] = []
    for node in body[start:]:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            break
        block.append(node)
    kept: list[ImportItem] = []
    requests: list[tuple[str, str]] = []
    for node in block:
        line = lines[(node.end_lineno or node.lineno) - 1]
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(RUNTIME):
            for a in node.names:
                if a.asname and a.asname != a.name:
                    raise StandaloneError(
                        f"line {node.lineno}: runtime names are imported without `as`"
                    )
                requests.append((node.module or "", a.name))
        else:
            kept.extend(_import_items(node, line))
    if not requests:
        return text
    need, imports, future = _closure(requests)
    defined: dict[str, str] = {}
    definitions: list[str] = []
    for module in _module_order(need):
        mod = _runtime_module(module)
        for index in sorted(need.get(module, ())):
            d = mod.defs[index]
            for name in d.binds:
                if defined.setdefault(name, module) != module:
                    raise StandaloneError(f"{name!r} is defined in {defined[name]} and in {module}")
            definitions.append(d.text)
    items = set(kept) | imports
    if future:
        items.add(ImportItem("__future__", "annotations"))
    # an item already imported with a comment (a noqa) wins over the same without
    commented = {(i.module, i.name, i.alias) for i in items if i.comment}
    items = {i for i in items if i.comment or (i.module, i.name, i.alias) not in commented}
    head = lines[: block[0].lineno - 1] if block else lines[: body[start].lineno - 1]
    rest = lines[(block[-1].end_lineno or block[-1].lineno) :] if block else lines[len(head) :]
    while rest and not rest[0].strip():
        rest = rest[1:]
    out = [*head, *format_imports(items), ""]
    if definitions[0].startswith(("def ", "class ", "@", "async def ")):
        out.append("")  # isort: two blank lines before a function or class, else one
    for definition in definitions:
        out.extend([definition, "", ""])
    out.extend(rest)
    return "\n".join(out).rstrip() + "\n"
