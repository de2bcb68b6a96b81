"""Stage 1b: the files of a program -- the root text and every file it ``use``s.

``use "path.seq"`` is resolved against the folder of the file that writes it
(for a root given as text, the folder of its ``name``, which is the current
directory for ``"<string>"``), then against each ``search_path`` entry. Every
file is read and parsed once, whatever the number of routes to it (files are
identified by their resolved path). Problems become diagnostics located at the
``use`` string, never I/O exceptions: a missing or unreadable file (SEQ011), an
import cycle (SEQ012, naming the cycle), a syntax error in an imported file
(SEQ001/SEQ002 in that file, with a note at the ``use``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from lark import Token, Tree

from .diagnostics import Diagnostic, Related
from .ir import Span
from .parser import ParseFailure, normalize_source, parse_tree, unquote

__all__ = ["SearchPath", "SourceFile", "Sources", "Use", "load_sources", "token_span"]

SearchPath = str | Path | Sequence[str | Path] | None


def token_span(file: str, tok: Token) -> Span:
    line = tok.line or 1
    col = tok.column or 1
    return Span(file, line, col, tok.end_line or line, tok.end_column or col + len(str(tok)))


@dataclass(frozen=True)
class Use:
    """One ``use "..."`` declaration and the file it resolved to (None: reported)."""

    path: str
    span: Span
    target: str | None  # the key of the file it brings in
    #: ``use "python.module"``: a module that registers extern implementations (no file)
    python: bool = False


@dataclass
class SourceFile:
    #: the name diagnostics show (the root's ``name``; imported files: a path)
    name: str
    #: identity: the resolved path, or ``<text:NAME>`` for a root without a file
    key: str
    text: str
    #: the folder relative ``use`` paths start from
    directory: Path
    tree: Tree[Token] | None = None
    uses: list[Use] = field(default_factory=list)


@dataclass
class Sources:
    root: SourceFile
    #: every file of the program, the root first, each once
    files: dict[str, SourceFile]
    diagnostics: list[Diagnostic]

    @property
    def parsed(self) -> bool:
        """Every file parsed (a syntax error anywhere stops the analysis)."""
        return all(f.tree is not None for f in self.files.values())

    def texts(self) -> dict[str, str]:
        return {f.name: f.text for f in self.files.values()}


#: a dotted Python module name: ``use "my_pkg.externs"``
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _search_dirs(search_path: SearchPath) -> list[Path]:
    if search_path is None:
        return []
    if isinstance(search_path, (str, Path)):
        return [Path(search_path)]
    return [Path(p) for p in search_path]


def _root_location(name: str) -> tuple[str, Path]:
    """The key and folder of a root given as text: its ``name`` doubles as its location."""
    if name.startswith("<"):
        return f"<text:{name}>", Path(".")
    p = Path(name)
    try:
        if p.is_file():
            return str(p.resolve()), p.parent
    except OSError:  # pragma: no cover - an unusable name: treat it as no file
        pass
    return f"<text:{name}>", p.parent


class _Loader:
    def __init__(self, search_path: SearchPath):
        self.search = _search_dirs(search_path)
        self.files: dict[str, SourceFile] = {}
        self.diags: list[Diagnostic] = []
        self.stack: list[str] = []

    def parse(self, f: SourceFile, imported_at: Span | None) -> None:
        try:
            f.tree = parse_tree(f.text, f.name)
        except ParseFailure as e:
            for d in e.diagnostics:
                if imported_at is not None:
                    d = replace(d, related=(*d.related, Related(imported_at, "imported here")))
                self.diags.append(d)
            return
        self.stack.append(f.key)
        try:
            for item in f.tree.children:
                if isinstance(item, Tree) and item.data == "use_decl":
                    tok = item.children[0]
                    assert isinstance(tok, Token)
                    f.uses.append(self.use(f, tok))
        finally:
            self.stack.pop()

    def candidates(self, f: SourceFile, written: str) -> list[tuple[Path, str]]:
        """(path to try, the name diagnostics will show for it), in order."""
        if not written:
            return []
        p = Path(written)
        if p.is_absolute():
            return [(p, os.path.normpath(written))]
        out = [(f.directory / p, os.path.normpath(str(f.directory / p)))]
        out += [(d / p, os.path.normpath(str(d / p))) for d in self.search]
        return out

    def use(self, f: SourceFile, tok: Token) -> Use:
        written = unquote(str(tok))
        span = token_span(f.name, tok)
        if not written.endswith(".seq") and _MODULE.fullmatch(written):
            return Use(written, span, None, python=True)
        tried = self.candidates(f, written)
        found: tuple[Path, str] | None = None
        for path, shown in tried:
            try:
                if path.is_file():
                    found = (path, shown)
                    break
            except OSError:  # pragma: no cover - e.g. a name too long for the OS
                continue
        if found is None:
            if Path(written).is_absolute():
                hint = "check the path"
            else:
                hint = f"a relative path starts from the folder of this file ({f.directory})"
                if self.search:
                    hint += ", then from the search path (" + ", ".join(map(str, self.search)) + ")"
            if not written.endswith(".seq"):
                hint += '; `use` takes the path of a .seq file, or a Python module name ("my_pkg.externs")'

            self.error("SEQ011", f'cannot find the file "{written}"', span, hint)
            return Use(written, span, None)
        path, shown = found
        key = str(path.resolve())
        if key in self.stack:
            names = [self.files[k].name for k in self.stack[self.stack.index(key) :]]
            cycle = " -> ".join([*names, self.files[key].name])
            self.error(
                "SEQ012",
                f"import cycle: {cycle}",
                span,
                "files cannot use each other in a circle: move the shared layer blocks "
                "into a file that both use",
            )
            return Use(written, span, None)
        if key in self.files:
            return Use(written, span, key)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            self.error(
                "SEQ011",
                f'cannot read the file "{written}": {reason}',
                span,
                "`use` needs a readable UTF-8 .seq file",
            )
            return Use(written, span, None)
        sub = SourceFile(shown, key, normalize_source(text), path.parent)
        self.files[key] = sub
        self.parse(sub, span)
        return Use(written, span, key)

    def error(self, code: str, message: str, span: Span, hint: str) -> None:
        self.diags.append(Diagnostic.make(code, message, span, hint))


def load_sources(text: str, name: str, search_path: SearchPath = None) -> Sources:
    """Parse ``text`` (shown as ``name``) and every file it uses, transitively."""
    loader = _Loader(search_path)
    key, directory = _root_location(name)
    root = SourceFile(name, key, normalize_source(text), directory)
    loader.files[key] = root
    loader.parse(root, None)
    return Sources(root, loader.files, loader.diags)
