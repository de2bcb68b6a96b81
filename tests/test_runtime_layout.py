"""Two promises of issue 10 about where run-time code lives.

(a) No run-time code inside string literals: the code a generated module runs
    is ordinary Python in ``seqdsl/runtime/`` (imported by generated modules,
    copied by AST for ``--standalone``), not text pasted into the output. A
    string constant of several lines that parses as Python and defines a
    function or a class at its top level is such code. Docstrings are not, and
    neither are the one-line fragments the emitters write line by line.
(b) No line-tag preprocessor: no ``#@feature`` lines selecting parts of a
    snippet, and no regular expression that looks for them.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "seqdsl"

#: a string needs at least this many lines to count as a piece of program
MIN_LINES = 4


def _files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of the module, its classes and functions."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _defines_code(text: str) -> bool:
    """Whether ``text`` is Python with a ``def`` or ``class`` at its top level."""
    if text.count("\n") + 1 < MIN_LINES:
        return False
    try:
        tree = ast.parse(textwrap.dedent(text).strip("\n"))
    except (SyntaxError, ValueError):
        return False
    return any(
        isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for st in tree.body
    )


def code_in_strings(path: Path) -> list[int]:
    """The lines of ``path`` where a string constant holds run-time code."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = _docstrings(tree)
    return sorted(
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skip
        and _defines_code(node.value)
    )


#: a ``#@`` line tag in generated code, or a pattern written to find one
_TAG = re.compile(r"#@\w|#@\[|#@\(")


def line_tags(path: Path) -> list[int]:
    """The lines of ``path`` that mention a ``#@`` tag (a tagged line or its regex)."""
    return [
        i
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _TAG.search(line) or "#@" in line and ("re." in line or "compile(" in line)
    ]


def _report(found: dict[Path, list[int]]) -> str:
    return "\n".join(
        f"{path.relative_to(ROOT)}:{line}" for path, lines in found.items() for line in lines
    )


def test_no_runtime_code_in_string_literals() -> None:
    found = {p: lines for p in _files() if (lines := code_in_strings(p))}
    assert not found, "run-time code in string literals (move it to seqdsl/runtime):\n" + _report(
        found
    )


def test_no_line_tag_preprocessor() -> None:
    found = {p: lines for p in _files() if (lines := line_tags(p))}
    assert not found, "`#@` line tags (select code by import, not by tags):\n" + _report(found)


# ---------------------------------------------------------------- the checks themselves


def test_detector_flags_a_snippet_and_spares_fragments(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        '"""Module docstring.\n\ndef not_code():\n    pass\n"""\n'
        "SNIPPET = '''\n"
        "import numpy as np\n\n"
        "def helper(x):\n"
        "    return np.tanh(x)\n"
        "'''\n"
        "LINE = 'def f(x): return x'\n"
        "EXPR = '''\n"
        "x = 1\n"
        "y = 2\n"
        "z = 3\n"
        "'''\n"
        "def g():\n"
        '    """Docstring.\n\n    class A:\n        pass\n    """\n'
        "    w.line(f'def forward(self, {args}):')\n"
        "    return '''\n"
        "        class Inner:\n"
        "            x = 1\n"
        "            y = 2\n"
        "    '''\n",
        encoding="utf-8",
    )
    assert code_in_strings(src) == [6, 25]


def test_line_tag_finder(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "X = 'y = 1  #@masked'\n"
        "TAG = re.compile(r'#@(\\w+)')\n"
        "# a comment about #@ tags in prose\n"
        "ok = 1\n",
        encoding="utf-8",
    )
    assert line_tags(src) == [1, 2]
