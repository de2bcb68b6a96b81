"""The TextMate grammar of editors/vscode, tokenized as VS Code does.

``editors/vscode/test/tokenize.js`` runs npm's ``vscode-textmate`` with
``vscode-oniguruma`` over every example and every file of tests/valid (and a
file that calls every catalogue layer). The expected scopes come from Lark
itself, not from the TextMate grammar's generator: each file is parsed with
the language's grammar (keeping every token, comments included), and

- every keyword token (an anonymous word terminal of grammar/seq.lark) is
  scoped ``keyword.*`` (``true``/``false``: ``constant.language.boolean``),
- a name the parser read as a name (``mask=m``, ``mask(post)``) is never
  scoped as a keyword,
- a catalogue layer in constructor position is ``support.class.layer``, a
  merge function ``support.function.merge``,
- dtypes and parameter types are ``storage.type``, numbers
  ``constant.numeric``, strings ``string.quoted``, comments ``comment.line``.

Needs node and ``npm ci`` in editors/vscode (.ci/run does both); skipped
without them, except under CI (``SEQDSL_CI=1``), where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lark import Lark, Token, Tree
from lark.lexer import PatternStr

from seqdsl.catalogue import CATALOGUE
from seqdsl.ir import MERGE_FUNCTIONS
from seqdsl.parser import make_parser
from seqdsl.textmate import textmate_grammar

ROOT = Path(__file__).resolve().parent.parent
VSCODE = ROOT / "editors" / "vscode"
GRAMMAR_JSON = VSCODE / "syntaxes" / "seq.tmLanguage.json"
FILES = sorted((ROOT / "examples").rglob("*.seq")) + sorted(
    (ROOT / "tests" / "valid").glob("*.seq")
)


def _unavailable(reason: str) -> None:
    if os.environ.get("SEQDSL_CI"):
        pytest.fail(f"{reason}, but CI (SEQDSL_CI) must run the TextMate tests")
    pytest.skip(reason)


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        _unavailable("node is not installed")
        raise AssertionError  # unreachable: skip/fail raise
    if not (VSCODE / "node_modules" / "vscode-textmate").is_dir():
        _unavailable("vscode-textmate is not installed: run `npm ci` in editors/vscode")
    return node


def test_committed_grammar_is_generated_from_the_sources() -> None:
    """The grammar file is what `python -m seqdsl.textmate` writes from seq.lark and the
    catalogue: a keyword or layer added there must be regenerated into it."""
    want = json.dumps(textmate_grammar(), indent=2) + "\n"
    assert GRAMMAR_JSON.read_text(encoding="utf-8") == want, (
        "editors/vscode/syntaxes/seq.tmLanguage.json is out of date: run "
        "`python -m seqdsl.textmate > editors/vscode/syntaxes/seq.tmLanguage.json`"
    )


def test_extension_manifest() -> None:
    pkg = json.loads((VSCODE / "package.json").read_text(encoding="utf-8"))
    lang = pkg["contributes"]["languages"][0]
    assert lang["extensions"] == [".seq"]
    assert (VSCODE / lang["configuration"]).is_file()
    json.loads((VSCODE / lang["configuration"]).read_text(encoding="utf-8"))
    gram = pkg["contributes"]["grammars"][0]
    assert gram["scopeName"] == "source.seq" and (VSCODE / gram["path"]).is_file()
    assert (VSCODE / pkg["main"]).is_file()
    # exact pins, locked: `npm ci` installs exactly these
    deps = {**pkg["dependencies"], **pkg["devDependencies"]}
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in deps.values()), deps
    lock = json.loads((VSCODE / "package-lock.json").read_text(encoding="utf-8"))
    for name, version in deps.items():
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    # the server is `seqdsl lsp` over stdio
    js = (VSCODE / "extension.js").read_text(encoding="utf-8")
    assert 'args: ["lsp"]' in js and "TransportKind.stdio" in js


def test_extension_script_is_valid_javascript() -> None:
    node = shutil.which("node")
    if node is None:
        _unavailable("node is not installed")
        return
    proc = subprocess.run(
        [node, "--check", str(VSCODE / "extension.js")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- the Lark oracle


def _lark() -> tuple[Lark, list[Token]]:
    comments: list[Token] = []
    # the language's own parser (a keyword that starts an assignment is a name: `masked = x`)
    parser = make_parser(keep_all_tokens=True, lexer_callbacks={"COMMENT": comments.append})
    return parser, comments


def _keyword_terminals(parser: Lark) -> dict[str, str]:
    """Terminal name -> word, for the grammar's keywords (as Lark itself reads the grammar)."""
    return {
        t.name: t.pattern.value
        for t in parser.terminals
        if isinstance(t.pattern, PatternStr) and re.fullmatch(r"[A-Za-z_]\w*", t.pattern.value)
    }


def _expectations(tree: Tree[Token], keywords: dict[str, str]) -> Iterator[tuple[Token, str]]:
    """(token, the scope prefix it must carry; "!keyword" for a name that must not be one)."""
    for sub in tree.iter_subtrees():
        kids = sub.children
        for i, tok in enumerate(kids):
            if not isinstance(tok, Token):
                continue
            if tok.type in keywords:
                yield (
                    tok,
                    ("constant.language.boolean" if tok.value in ("true", "false") else "keyword."),
                )
            elif tok.type in ("INT", "FLOAT"):
                yield tok, "constant.numeric."
            elif tok.type == "STRING":
                yield tok, "string.quoted."
            elif tok.type == "NAME":
                first_name = not any(isinstance(k, Token) and k.type == "NAME" for k in kids[:i])
                if sub.data == "ctor" and first_name and tok.value in CATALOGUE:
                    yield tok, "support.class.layer."
                elif sub.data == "ctor" and first_name and tok.value in MERGE_FUNCTIONS:
                    yield tok, "support.function.merge."
                elif sub.data == "type_expr" and first_name:
                    yield tok, "storage.type."
                elif sub.data in ("cell_input", "cell_state") and i == 3:
                    yield tok, "storage.type."  # input x: f32[...]
                elif sub.data == "param" and i == 2:
                    yield tok, "storage.type."  # units: int
                else:
                    yield tok, "!keyword"


def _utf16(line: str, col: int) -> int:
    return len(line[:col].encode("utf-16-le")) // 2


def test_every_example_gets_its_scopes(tmp_path: Path) -> None:
    node = _node()
    every_layer = tmp_path / "every_layer.seq"
    calls = " -> ".join(f"{name}()" for name in sorted(CATALOGUE))
    merges = "\n".join(f"    m{i} = {fn}(y, y)" for i, fn in enumerate(MERGE_FUNCTIONS))
    every_layer.write_text(
        f"model Every {{\n    input x: f32[B, T, 4]\n    y = x -> {calls}\n{merges}\n"
        "    output y\n}\n"
    )
    files = [*FILES, every_layer]
    proc = subprocess.run(
        [node, str(VSCODE / "test" / "tokenize.js"), *map(str, files)],
        capture_output=True,
        text=True,
        cwd=VSCODE,
    )
    assert proc.returncode == 0, proc.stderr
    tokenized: dict[str, list[list[dict[str, Any]]]] = json.loads(proc.stdout)

    parser, comments = _lark()
    keywords = _keyword_terminals(parser)
    seen_keywords: set[str] = set()
    problems: list[str] = []
    checked = 0
    for path in files:
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")
        comments.clear()
        tree = parser.parse(text)
        expected = list(_expectations(tree, keywords))
        expected += [(c, "comment.line.") for c in comments]
        for tok, want in expected:
            assert tok.line == tok.end_line, tok
            line = lines[tok.line - 1]
            a = _utf16(line, tok.column - 1)
            b = _utf16(line, tok.end_column - 1)
            pieces = [
                t for t in tokenized[str(path)][tok.line - 1] if t["start"] < b and t["end"] > a
            ]
            if tok.type in keywords:
                seen_keywords.add(tok.value)
            checked += 1
            for piece in pieces:
                scopes: list[str] = piece["scopes"]
                if want == "!keyword":
                    ok = not any(s.startswith("keyword.") for s in scopes)
                else:
                    ok = any(s.startswith(want) for s in scopes)
                if not ok:
                    where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}"
                    problems.append(
                        f"{where}:{tok.line}:{tok.column} {tok.value!r} ({tok.type}): "
                        f"want {want}, got {scopes}"
                    )
            if not pieces:
                problems.append(f"{path}:{tok.line}:{tok.column} {tok.value!r}: no token")
    assert not problems, f"{len(problems)} wrong scope(s):\n" + "\n".join(problems[:40])
    # the files use every keyword of the grammar, so that each one was checked
    unseen = set(keywords.values()) - seen_keywords
    assert not unseen, f"no example or tests/valid file uses the keyword(s) {sorted(unseen)}"
    assert checked > 5_000
