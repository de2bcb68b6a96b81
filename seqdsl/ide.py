"""Editor features over one ``.seq`` document, with no editor framework.

:class:`Document` runs the public pipeline (:func:`seqdsl.api.analyze_sources`)
on a text and answers what an editor asks at a position: the diagnostics with
their ranges, codes, hints and related locations; a hover (a value's type, time
dimension, mask kind and the summary's row with the kernel per target; a
layer's parameters and its catalogue entry); the definition of a value, a
block, a cell, an extern layer or a ``use``d file; completions (layer names,
Keras argument names with their defaults and allowed values from the
catalogue, value names in scope); the document's symbols; and quick fixes for
diagnostics with a mechanical fix.

Positions are 0-based ``(line, column)`` pairs counting code points; ranges
are half-open. The language server (:mod:`seqdsl.lsp`) converts them to the
protocol's UTF-16 columns. Nothing here prints, raises on bad input, or imports
an editor library: every answer is a plain frozen dataclass, and a text that
does not parse still gets completions and symbols from a lexical scan (and
types from the last text that did, when the server passes it as ``previous``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal as TypingLiteral
from typing import NamedTuple

from .api import Analysis, analyze_sources
from .catalogue import ACTIVATIONS, CATALOGUE, INITIALIZERS, KERNELS, MERGES, REQUIRED
from .cells import cell_spec, extern_spec
from .checker import PAD_PARAMS, CheckedModel, LayerInfo
from .diagnostics import Diagnostic
from .imports import SearchPath, load_sources
from .ir import (
    ApplyOp,
    Arg,
    DropMaskOp,
    LayerBlock,
    LayerCall,
    MergeOp,
    Model,
    ParamDecl,
    Span,
    ValueUse,
)
from .layerspec import BoundLayer, LayerSpec, Param
from .summary import HEADER, pad_text, summary_rows
from .types import DTYPES

__all__ = [
    "CodeAction",
    "Completion",
    "Document",
    "Hover",
    "IdeDiagnostic",
    "Location",
    "Range",
    "Symbol",
    "TextEdit",
    "span_range",
]

# --------------------------------------------------------------------------
# results


@dataclass(frozen=True, order=True)
class Range:
    """A 0-based, half-open range of code points."""

    start_line: int
    start_col: int
    end_line: int
    end_col: int

    def contains(self, line: int, col: int) -> bool:
        """Whether the position lies in the range, its end included (an editor
        asks at the cursor, which is often just after the word)."""
        if (line, col) < (self.start_line, self.start_col):
            return False
        return (line, col) <= (self.end_line, self.end_col)

    def overlaps(self, other: Range) -> bool:
        return (self.start_line, self.start_col) <= (other.end_line, other.end_col) and (
            other.start_line,
            other.start_col,
        ) <= (self.end_line, self.end_col)

    @property
    def size(self) -> tuple[int, int]:
        return (self.end_line - self.start_line, self.end_col - self.start_col)


def span_range(span: Span) -> Range:
    """The range of a compiler span (1-based line and column, exclusive end)."""
    start = (max(span.line - 1, 0), max(span.col - 1, 0))
    end = (max(span.end_line - 1, 0), max(span.end_col - 1, 0))
    if end < start:
        end = start
    return Range(start[0], start[1], end[0], end[1])


@dataclass(frozen=True)
class Location:
    """A range in a file, named as the compiler names it (the document's name or a used file)."""

    file: str
    range: Range


@dataclass(frozen=True)
class IdeDiagnostic:
    range: Range
    severity: TypingLiteral["error", "warning"]
    code: str
    message: str
    hint: str | None
    #: notes elsewhere: the call sites of a block, the file that imports, the first definition
    related: tuple[tuple[Location, str], ...]
    #: the compiler's diagnostic (its span may lie in another file: then ``range`` is where
    #: this document leads to it)
    source: Diagnostic


@dataclass(frozen=True)
class Hover:
    range: Range
    markdown: str


CompletionKind = TypingLiteral["layer", "block", "argument", "choice", "value", "keyword"]


@dataclass(frozen=True)
class Completion:
    label: str
    kind: CompletionKind
    detail: str = ""
    documentation: str = ""
    insert_text: str | None = None


SymbolKind = TypingLiteral["model", "block", "cell", "extern", "input", "value", "use"]


@dataclass(frozen=True)
class Symbol:
    name: str
    kind: SymbolKind
    range: Range
    selection_range: Range
    detail: str = ""
    children: tuple[Symbol, ...] = ()


@dataclass(frozen=True)
class TextEdit:
    range: Range
    new_text: str


@dataclass(frozen=True)
class CodeAction:
    title: str
    diagnostic: IdeDiagnostic
    edits: tuple[TextEdit, ...]


# --------------------------------------------------------------------------
# a lexical view of the text: works on text that does not parse

_TOKEN = re.compile(
    r"(?P<ws>\s+)"
    r"|(?P<comment>#[^\n]*)"
    r"|(?P<str>\"(?:[^\"\\\n]|\\.)*\"?|'(?:[^'\\\n]|\\.)*'?)"
    r"|(?P<num>[0-9]+\.[0-9]*(?:[eE][+-]?[0-9]+)?|[0-9]+(?:[eE][+-]?[0-9]+)?|\.[0-9]+)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>->|<-|//|!=|\.\.\.|.)",
    re.DOTALL,
)


class _Tok(NamedTuple):
    kind: str  # str | num | name | op
    text: str
    start: int
    end: int


def _lex(text: str) -> list[_Tok]:
    return [
        _Tok(kind, m.group(), *m.span())
        for m in _TOKEN.finditer(text)
        if (kind := m.lastgroup) is not None and kind != "ws" and kind != "comment"
    ]


@dataclass(frozen=True)
class _Item:
    """A top-level item found lexically: ``model``, ``layer``, ``cell``, ``extern layer``, ``use``."""

    kind: str
    name: str
    start: int  # offset of the keyword
    name_start: int
    name_end: int
    end: int  # offset just after the closing brace (or the end of the text)
    body: int  # offset of the opening brace (-1: none)
    params: tuple[tuple[str, int, int], ...]  # header parameters: name and its offsets


def _items(toks: Sequence[_Tok], text_len: int) -> list[_Item]:
    items: list[_Item] = []
    i = 0
    n = len(toks)
    while i < n:
        t = toks[i]
        kw = t.text if t.kind == "name" else ""
        if kw == "use" and i + 1 < n and toks[i + 1].kind == "str":
            s = toks[i + 1]
            items.append(_Item("use", s.text, t.start, s.start, s.end, s.end, -1, ()))
            i += 2
            continue
        j = i + 1
        if kw == "extern" and j < n and toks[j].text == "layer":
            j += 1
        if kw not in ("model", "layer", "cell", "extern") or j >= n or toks[j].kind != "name":
            i += 1
            continue
        name = toks[j]
        j += 1
        params: list[tuple[str, int, int]] = []
        if j < n and toks[j].text == "(":
            depth = 0
            while j < n:
                if toks[j].text == "(":
                    depth += 1
                elif toks[j].text == ")":
                    depth -= 1
                    if depth == 0:
                        j += 1
                        break
                elif (
                    depth == 1
                    and toks[j].kind == "name"
                    and j + 1 < n
                    and toks[j + 1].text == ":"
                    and toks[j - 1].text in ("(", ",")
                ):
                    params.append((toks[j].text, toks[j].start, toks[j].end))
                elif toks[j].text in ("{", "}"):
                    break
                j += 1
        body = -1
        end = text_len
        if j < n and toks[j].text == "{":
            body = toks[j].start
            depth = 0
            k = j
            while k < n:
                if toks[k].text == "{":
                    depth += 1
                elif toks[k].text == "}":
                    depth -= 1
                    if depth == 0:
                        end = toks[k].end
                        break
                elif depth == 1 and toks[k].kind == "name" and toks[k].text in _TOP and k > j:
                    # an unclosed block: the next top-level keyword starts the next item
                    prev = toks[k - 1].text
                    if prev in ("}", "{") or (toks[k].text == "use" and prev != "("):
                        end = toks[k].start
                        k -= 1
                        break
                k += 1
            j = k + 1
        items.append(
            _Item(
                "extern" if kw == "extern" else kw,
                name.text,
                t.start,
                name.start,
                name.end,
                end,
                body,
                tuple(params),
            )
        )
        i = max(j, i + 1)
    return items


_TOP = ("model", "layer", "cell", "extern", "use")


@dataclass(frozen=True)
class _Frame:
    """An open ``(`` or ``[`` before the cursor."""

    kind: str  # ctor | data | pad | decorator | repeat | list | group
    name: str  # the constructor, decorator or callee name ("" for others)
    open: int  # token index of the bracket
    callee: str = ""  # data frames: the constructor whose call this is


def _frames(toks: Sequence[_Tok], start: int, stop: int) -> list[_Frame]:
    stack: list[_Frame] = []
    for i in range(start, stop):
        t = toks[i]
        if t.text == "(":
            prev = toks[i - 1] if i > start else None
            if prev is not None and prev.text == ")":
                stack.append(_Frame("data", "", i, _callee_before(toks, start, i - 1)))
            elif prev is not None and prev.kind == "name":
                before = toks[i - 2].text if i - 2 >= start else ""
                if before == "@":
                    stack.append(_Frame("decorator", prev.text, i))
                elif prev.text == "pad":
                    stack.append(_Frame("pad", "pad", i))
                elif prev.text == "repeat":
                    stack.append(_Frame("repeat", "repeat", i))
                else:
                    stack.append(_Frame("ctor", prev.text, i))
            else:
                stack.append(_Frame("group", "", i))
        elif t.text == "[":
            stack.append(_Frame("list", "", i))
        elif t.text in (")", "]") and stack:
            stack.pop()
        elif t.text in ("{", "}"):
            stack.clear()
    return stack


def _given_args(toks: Sequence[_Tok], open_: int, stop: int) -> tuple[set[str], int]:
    """The keyword arguments written so far in the call opened at token ``open_``, and how
    many positional arguments precede the cursor (nested calls are skipped)."""
    names: set[str] = set()
    positional = 0
    depth = 0
    start = open_ + 1
    for i in range(open_ + 1, stop):
        t = toks[i].text
        if t in ("(", "["):
            depth += 1
        elif t in (")", "]"):
            depth -= 1
        elif t == "," and depth == 0:
            if i + 1 <= stop and start < i:
                if start + 1 < i and toks[start + 1].text == "=" and toks[start].kind == "name":
                    names.add(toks[start].text)
                else:
                    positional += 1
            start = i + 1
    return names, positional


def _callee_before(toks: Sequence[_Tok], start: int, close: int) -> str:
    """The constructor name of ``Kind(...)`` whose ``)`` is token ``close``."""
    depth = 0
    for k in range(close, start - 1, -1):
        if toks[k].text == ")":
            depth += 1
        elif toks[k].text == "(":
            depth -= 1
            if depth == 0:
                return toks[k - 1].text if k > start and toks[k - 1].kind == "name" else ""
    return ""


# --------------------------------------------------------------------------
# the index of a checked program: what each range of the document means


@dataclass(frozen=True)
class _ValueRef:
    """A value in one expansion: the checked model and the value's SSA name."""

    model: CheckedModel
    name: str
    #: the block call this occurrence belongs to ("" outside blocks), for hover titles
    via: str


@dataclass(frozen=True)
class _LayerRef:
    model: CheckedModel
    op_index: int
    #: the kind written at this range (an inner layer of ``Bidirectional(LSTM(..))`` differs)
    kind: str
    via: str


@dataclass(frozen=True)
class _BlockCallRef:
    model: CheckedModel
    block: str
    call: Span


_Ref = _ValueRef | _LayerRef | _BlockCallRef


def _via_text(span: Span) -> str:
    return " > ".join(f"`{e.block}` called at line {e.call.line}" for e in span.via)


class _Index:
    """Ranges of the document -> what they mean (one entry per expansion)."""

    def __init__(self, file: str, models: Sequence[CheckedModel]):
        self.file = file
        self.by_line: dict[int, list[tuple[Range, _Ref]]] = {}
        #: value (model name, SSA name) -> where it is defined in this document
        self.defs: dict[tuple[str, str], Span] = {}
        self._models = {cm.name: cm for cm in models}
        self._rows: dict[str, dict[str, tuple[list[str], LayerInfo | None]]] = {}
        for cm in models:
            self.add_model(cm)

    def rows(self, model: str) -> dict[str, tuple[list[str], LayerInfo | None]]:
        """The rows of a model's summary, by value (made when first asked)."""
        if model not in self._rows:
            rows: dict[str, tuple[list[str], LayerInfo | None]] = {}
            cm = self._models.get(model)
            label: tuple[list[str], LayerInfo | None] | None = None
            for cells, info in summary_rows(cm) if cm is not None else ():
                if cells[0]:
                    label = (cells, info)
                elif label is not None:  # a further result: keep the layer of its first row
                    info = label[1]
                rows[cells[1]] = (cells, info)
            self._rows[model] = rows
        return self._rows[model]

    def add(self, span: Span | None, ref: _Ref) -> None:
        if span is None or span.file != self.file:
            return
        r = span_range(span)
        for line in range(r.start_line, r.end_line + 1):
            self.by_line.setdefault(line, []).append((r, ref))

    def add_model(self, cm: CheckedModel) -> None:
        m = cm.model
        calls: set[tuple[Span, str]] = set()
        for inp in m.inputs:
            self.add(inp.name_span, _ValueRef(cm, inp.name, ""))
            self.defs[(m.name, inp.name)] = inp.name_span
        for i, op in enumerate(m.ops):
            via = _via_text(op.span)
            for name, rspan in zip(op.results, op.result_spans, strict=False):
                self.add(rspan, _ValueRef(cm, name, "" if not rspan.via else via))
                if rspan.file == self.file:
                    self.defs.setdefault((m.name, name), rspan)
            for use in _uses(op):
                self.add(use.span, _ValueRef(cm, use.name, _via_text(use.span)))
            if isinstance(op, ApplyOp):
                for call in _layer_calls(op.layer):
                    self.add(call.kind_span, _LayerRef(cm, i, call.kind, via))
            elif isinstance(op, MergeOp):
                s = op.span
                self.add(
                    Span(s.file, s.line, s.col, s.line, s.col + len(op.fn), s.via),
                    _LayerRef(cm, i, op.fn, via),
                )
            else:
                self.add(op.span, _LayerRef(cm, i, "drop_mask", via))
            for e in op.span.via:  # the block's name where it is called
                c = e.call
                if (c, e.block) in calls:
                    continue
                calls.add((c, e.block))
                word = Span(c.file, c.line, c.col, c.line, c.col + len(e.block), c.via)
                self.add(word, _BlockCallRef(cm, e.block, e.call))
        for out in m.outputs:
            self.add(out.span, _ValueRef(cm, out.name, ""))

    def at(self, line: int, col: int) -> list[tuple[Range, _Ref]]:
        """The entries at a position, innermost range first."""
        hits = [(r, ref) for r, ref in self.by_line.get(line, ()) if r.contains(line, col)]
        hits.sort(key=lambda h: (h[0].size, isinstance(h[1], _BlockCallRef)))
        return hits


def _uses(op: ApplyOp | MergeOp | DropMaskOp) -> list[ValueUse]:
    if isinstance(op, DropMaskOp):
        return [op.input]
    out = list(op.inputs)
    if isinstance(op, ApplyOp):
        if op.mask is not None:
            out.append(op.mask)
        out += list(op.initial_state or ())
    return out


def _layer_calls(call: LayerCall) -> list[LayerCall]:
    """A layer call and the layers nested in its arguments (``Bidirectional(LSTM(8))``)."""
    out = [call]
    for a in call.args:
        out += _nested(a)
    return out


def _nested(a: Arg) -> list[LayerCall]:
    v = a.value
    if v.kind == "layer" and isinstance(v.value, LayerCall):
        return _layer_calls(v.value)
    return []


# --------------------------------------------------------------------------
# text helpers


def _fmt_value(v: object) -> str:
    if v is REQUIRED:
        return "required"
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, BoundLayer):
        return f"{v.kind}(...)"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _param_type(p: Param) -> str:
    if p.choices:
        return " | ".join(p.choices)
    return p.type


def _param_line(p: Param) -> str:
    """``units: int (required)``, ``dropout: float = 0.0, >= 0, < 1``: a parameter as the docs write it."""
    out = f"{p.name}: {_param_type(p)}"
    out += " (required)" if p.default is REQUIRED else f" = {_fmt_value(p.default)}"
    rng = []
    if p.lo is not None:
        rng.append(f">= {p.lo:g}")
    if p.hi is not None:
        rng.append(f"< {p.hi:g}" if p.hi_open else f"<= {p.hi:g}")
    if rng:
        out += ", " + ", ".join(rng)
    if p.doc:
        out += f" — {p.doc}"
    return out


def _signature(spec: LayerSpec) -> str:
    args = []
    for p in spec.params:
        if p.name in ("name", "trainable"):
            continue
        args.append(p.name if p.default is REQUIRED else f"{p.name}={_fmt_value(p.default)}")
    return f"{spec.name}({', '.join(args)})"


def _spec_markdown(spec: LayerSpec) -> str:
    lines = [f"```seqdsl\n{_signature(spec)}\n```", spec.doc[:1].upper() + spec.doc[1:] + "."]
    facts = [f"mask rule: {spec.mask_rule}", f"category: {spec.category}"]
    if spec.padding_invariant:
        facts.append("padding invariant")
    lines.append("; ".join(facts) + ".")
    return "\n\n".join(lines)


def _row_table(rows: Sequence[list[str]]) -> str:
    head = "| " + " | ".join(HEADER) + " |"
    rule = "|" + "---|" * len(HEADER)
    body = ["| " + " | ".join(c.replace("|", "\\|") or " " for c in r) + " |" for r in rows]
    return "\n".join([head, rule, *body])


# --------------------------------------------------------------------------
# the document


_DID_YOU_MEAN = re.compile(r"did you mean `([^`]+)`\?")


@dataclass
class _Callable:
    """Something that can be called as a layer: built-in, merge, block, cell, extern."""

    name: str
    what: str  # layer | merge | block | cell | extern
    spec: LayerSpec | None = None
    block: LayerBlock | None = None
    span: Span | None = None


class Document:
    """One ``.seq`` text and everything an editor asks about it.

    ``name`` is the file's path (``use`` paths resolve against its folder) or a
    ``<...>`` name for text that has no file. The analysis runs when first
    needed (:attr:`analysis`), so that a document can be made at every
    keystroke. ``previous`` is the document of the text before the edit:
    completions use the last analysis that checked (names, blocks, types)
    without waiting for this text's, and a hover asked before this text was
    analysed is answered from the last analysis when the hovered word lies
    outside the edited part (marked as such).
    """

    def __init__(
        self,
        text: str,
        name: str = "<string>",
        *,
        search_path: SearchPath = None,
        previous: Document | None = None,
    ):
        self.text = text
        self.name = name
        self.search_path = search_path
        self._analysis: Analysis | None = None
        # keep one link: the last document that was analysed (chains never grow)
        while previous is not None and previous._analysis is None:
            previous = previous.previous
        self.previous: Document | None = previous
        self._lines = _line_starts(text)
        self._toks = _lex(text)
        self._items = _items(self._toks, len(text))
        self._index_cache: _Index | None = None
        self._diags: list[IdeDiagnostic] | None = None
        self._callables_cache: dict[str, _Callable] | None = None

    # ----------------------------------------------------------------- basics
    @property
    def analysis(self) -> Analysis:
        """The pipeline's answer for this text (computed on first use)."""
        if self._analysis is None:
            self._analysis = analyze_sources(self.text, self.name, search_path=self.search_path)
            if self._analysis.program is not None:
                self.previous = None  # no fallback needed any more
            elif (
                self.previous is not None
                and self.previous._analysis is not None
                and self.previous._analysis.program is None
            ):
                self.previous = self.previous.previous
        return self._analysis

    @property
    def analysed(self) -> bool:
        return self._analysis is not None

    @property
    def checked(self) -> bool:
        """Whether the text parsed and lowered (its values have types)."""
        return self.analysis.program is not None

    @property
    def _index(self) -> _Index:
        if self._index_cache is None:
            prog = self.analysis.program
            self._index_cache = _Index(self.name, prog.models if prog is not None else ())
        return self._index_cache

    def _known(self) -> Document | None:
        """The latest document whose program checked, without analysing this text:
        this one if it is analysed and checked, else the previous one that did."""
        if self._analysis is None and self.previous is None:
            self.analysis  # noqa: B018 - nothing earlier to fall back to: analyse this text
        doc: Document | None = self
        while doc is not None:
            if doc._analysis is not None and doc._analysis.program is not None:
                return doc
            doc = doc.previous
        return None

    def offset(self, line: int, col: int) -> int:
        if line < 0:
            return 0
        if line >= len(self._lines):
            return len(self.text)
        start = self._lines[line]
        end = self._lines[line + 1] - 1 if line + 1 < len(self._lines) else len(self.text)
        return min(start + max(col, 0), end)

    def position(self, offset: int) -> tuple[int, int]:
        lo, hi = 0, len(self._lines) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._lines[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo, offset - self._lines[lo]

    def _range(self, start: int, end: int) -> Range:
        a = self.position(start)
        b = self.position(end)
        return Range(a[0], a[1], b[0], b[1])

    def _tok_at(self, offset: int) -> int | None:
        """The index of the token at ``offset`` (or ending there)."""
        lo, hi = 0, len(self._toks)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._toks[mid].end < offset:
                lo = mid + 1
            else:
                hi = mid
        for k in (lo, lo + 1):
            if k < len(self._toks) and self._toks[k].start <= offset <= self._toks[k].end:
                if self._toks[k].kind == "name" or k + 1 >= len(self._toks):
                    return k
                if self._toks[k].end == offset and self._toks[k + 1].start == offset:
                    continue
                return k
        return None

    def _word_at(self, line: int, col: int) -> _Tok | None:
        k = self._tok_at(self.offset(line, col))
        if k is None:
            return None
        t = self._toks[k]
        return t if t.kind in ("name", "str") else None

    def _item_at(self, offset: int) -> _Item | None:
        for it in self._items:
            if it.start <= offset < it.end or (it.start <= offset and it.end == len(self.text)):
                return it
        return None

    def _callables(self) -> dict[str, _Callable]:
        if self._callables_cache is None:
            self._callables_cache = self._find_callables()
        return self._callables_cache

    def _find_callables(self) -> dict[str, _Callable]:
        out: dict[str, _Callable] = {}
        for name, spec in CATALOGUE.items():
            out[name] = _Callable(name, "layer", spec)
        for name, spec in MERGES.items():
            out[name] = _Callable(name, "merge", spec)
        known = self._known()
        prog = known.analysis.program if known is not None else None
        if prog is not None:
            for b in prog.blocks:
                out[b.name] = _Callable(b.name, "block", None, b, b.name_span)
            for cname, cdef in prog.ir.cells.items():
                cspec = cell_spec(cdef) if cdef.ok else None
                out[cname] = _Callable(cname, "cell", cspec, None, cdef.name_span)
            for ename, edef in prog.ir.externs.items():
                espec = extern_spec(edef) if edef.ok else None
                out[ename] = _Callable(ename, "extern", espec, None, edef.name_span)
        for it in self._items:  # blocks of this text that did not check yet
            if it.kind in ("layer", "cell", "extern") and it.name not in out:
                out[it.name] = _Callable(it.name, it.kind if it.kind != "layer" else "block")
        return out

    # ----------------------------------------------------------------- diagnostics
    def diagnostics(self) -> list[IdeDiagnostic]:
        """Every diagnostic, located in this document: one in another file (a used file,
        a block defined there) is shown at the place here that leads to it."""
        if self._diags is None:
            self._diags = [self._diagnostic(d) for d in self.analysis.diagnostics]
        return self._diags

    def _diagnostic(self, d: Diagnostic) -> IdeDiagnostic:
        related = tuple((Location(r.span.file, span_range(r.span)), r.message) for r in d.related)
        message = d.message
        if d.span is None:
            rng = Range(0, 0, 0, 0)
        elif d.span.file == self.name:
            rng = span_range(d.span)
        else:
            here = [loc for loc, _ in related if loc.file == self.name]
            rng = here[0].range if here else self._use_range(d.span.file)
            message = f"{d.span.file}:{d.span.line}:{d.span.col}: {d.message}"
            related = ((Location(d.span.file, span_range(d.span)), d.message), *related)
        return IdeDiagnostic(rng, d.severity, d.code, message, d.hint, related, d)

    def _use_range(self, file: str) -> Range:
        """Where this document brings in ``file``: its ``use`` line, else the first line."""
        uses = [it for it in self._items if it.kind == "use"]
        stem = Path(file).name
        for it in uses:
            if Path(it.name.strip("\"'")).name == stem:
                return self._range(it.start, it.end)
        if uses:
            return self._range(uses[0].start, uses[0].end)
        return Range(0, 0, 0, 0)

    # ----------------------------------------------------------------- hover
    def hover(self, line: int, col: int) -> Hover | None:
        """What the thing at a position is. Before this text is analysed, a word outside
        the edited part is answered from the last analysis (and says so); else this
        text is analysed first."""
        if self._analysis is None and self.previous is not None:
            mapped, stale = self._hover_before_analysis(line, col)
            if mapped:
                return stale
        return self._hover_now(line, col)

    def _hover_before_analysis(self, line: int, col: int) -> tuple[bool, Hover | None]:
        """(whether the position lies outside the edit, the last analysis' hover there)."""
        old = self.previous
        assert old is not None and old._analysis is not None
        off = self.offset(line, col)
        k = self._tok_at(off)
        if k is None:
            return True, None
        tok = self._toks[k]
        edit = _Edit(old.text, self.text)
        a, b = edit.to_old(tok.start), edit.to_old(tok.end)
        if a is None or b is None or old.text[a:b] != tok.text:
            return False, None
        h = old._hover_now(*old.position(a + (off - tok.start)))
        if h is None:
            return True, None
        start = edit.to_new(old.offset(h.range.start_line, h.range.start_col))
        end = edit.to_new(old.offset(h.range.end_line, h.range.end_col))
        rng = self._range(start, end) if start is not None and end is not None else None
        return True, Hover(
            rng or self._range(tok.start, tok.end),
            h.markdown + "\n\n*(from the analysis before the last edit; checking the new text)*",
        )

    def _hover_now(self, line: int, col: int) -> Hover | None:
        hits = self._index.at(line, col)
        if hits:
            rng = hits[0][0]
            same = [ref for r, ref in hits if r == rng]
            text = self._hover_refs(same)
            if text:
                return Hover(rng, text)
        return self._hover_block_target(line, col) or self._hover_lexical(line, col)

    def _hover_block_target(self, line: int, col: int) -> Hover | None:
        """A target in a layer block whose value is a block output: the expansion names it
        after the call's target, so find it through the statement's last layer."""
        k = self._tok_at(self.offset(line, col))
        if k is None or self._toks[k].kind != "name":
            return None
        tok = self._toks[k]
        item = self._item_at(tok.start)
        if item is None or item.kind != "layer":
            return None
        defs = self._defs_in(item, item.end)
        mine = [i for i, d in enumerate(defs) if d[1] == tok.start]
        if not mine:
            return None
        # the statement's targets: the defs that share its `=`
        i = mine[0]
        eq = self.text.find("=", tok.end)
        targets = [
            d for d in defs if d[3] == "target" and d[1] < eq and self.text.find("=", d[2]) == eq
        ]
        starts = [d[1] for d in targets]
        if tok.start not in starts:
            return None
        position = starts.index(tok.start)
        end = next((d[1] for d in defs[i + 1 :] if d[1] > eq), item.end)
        out_kw = self.text.find("output", eq, end)
        end = out_kw if out_kw >= 0 else end
        found: list[tuple[int, _LayerRef]] = []
        for ln in range(self.position(eq)[0], self.position(end)[0] + 1):
            for r, ref in self._index.by_line.get(ln, ()):
                start = self.offset(r.start_line, r.start_col)
                if isinstance(ref, _LayerRef) and eq < start < end:
                    found.append((start, ref))
        if not found:
            return None
        last = max(s for s, _ in found)
        parts = []
        for s, ref in found:
            op = ref.model.model.ops[ref.op_index]
            if s == last and position < len(op.results):
                parts.append(self._hover_value(_ValueRef(ref.model, op.results[position], ref.via)))
        if not parts:
            return None
        return Hover(self._range(tok.start, tok.end), "\n\n---\n\n".join(dict.fromkeys(parts)))

    def _hover_refs(self, refs: Sequence[_Ref]) -> str:
        parts: list[str] = []
        seen: set[tuple[str, str, str]] = set()
        for ref in refs:
            if isinstance(ref, _ValueRef):
                key = ("value", ref.model.name, ref.name)
                text = self._hover_value(ref)
            elif isinstance(ref, _LayerRef):
                key = ("layer", ref.model.name, str(ref.op_index))
                text = self._hover_layer(ref)
            else:
                key = ("block", ref.model.name, str(ref.call))
                text = self._hover_block_call(ref)
            if key in seen:
                continue
            seen.add(key)
            parts.append(text)
        return "\n\n---\n\n".join(parts)

    def _row(self, model: CheckedModel, value: str) -> tuple[list[str], LayerInfo | None] | None:
        return self._index.rows(model.name).get(value)

    def _hover_value(self, ref: _ValueRef) -> str:
        cm = ref.model
        t = cm.types.get(ref.name)
        row = self._row(cm, ref.name)
        head = f"```seqdsl\n{ref.name}: {t if t is not None else '?'}\n```"
        lines = [head]
        if row is not None:
            cells, info = row
            lines.append(f"time: `{cells[3]}` · mask: `{cells[4]}`")
            where = f"model `{cm.name}`" + (f", in {ref.via}" if ref.via else "")
            if info is not None:
                where = f"made by `{info.name}` ({info.kind}) in " + where
            elif ref.name in cm.pads:
                where = f"input of {where}, {pad_text(cm.pads[ref.name])}"
            lines.append(where)
            lines.append(_row_table([cells]))
            if info is not None:
                lines += self._kernel_notes(info)
        else:
            lines.append(f"in model `{cm.name}` (no type: an error stops it)")
        return "\n\n".join(lines)

    def _kernel_notes(self, info: LayerInfo) -> list[str]:
        if info.kernels is None:
            return []
        notes = [
            f"- {target}: `{k.kernel}`" + (f" — {k.reason}" if k.reason else "")
            for target, k in info.kernels.items()
        ]
        return ["kernels:\n" + "\n".join(notes)]

    def _hover_layer(self, ref: _LayerRef) -> str:
        cm = ref.model
        op = cm.model.ops[ref.op_index]
        info = next((x for x in cm.layers if x.op_index == ref.op_index), None)
        lines: list[str] = []
        title = info.name if info is not None else ", ".join(op.results)
        kind = info.kind if info is not None else ref.kind
        lines.append(f"**{title}** ({kind})" + (f" — in {ref.via}" if ref.via else ""))
        rows = [r[0] for v in op.results if (r := self._row(cm, v)) is not None]
        if rows:
            lines.append(_row_table(rows))
        if info is not None:
            spec = self._spec_of(info.kind)
            lines.append(f"parameters: {info.params:,}" + self._weights_text(info))
            cfg = self._config_text(info, spec)
            if cfg:
                lines.append(f"```seqdsl\n{info.kind}({cfg})\n```")
            lines += self._kernel_notes(info)
            if not info.padding_invariant and spec is not None and spec.padding_invariant:
                lines.append("not padding invariant in this configuration")
        inner = self._spec_of(ref.kind)
        if inner is not None:
            lines.append(_spec_markdown(inner))
        return "\n\n".join(lines)

    @staticmethod
    def _weights_text(info: LayerInfo) -> str:
        if not info.weights:
            return ""
        return " (" + ", ".join(f"{w.name} {list(w.shape)}" for w in info.weights) + ")"

    @staticmethod
    def _config_text(info: LayerInfo, spec: LayerSpec | None) -> str:
        parts = []
        for k, v in info.config.items():
            p = spec.param(k) if spec is not None else None
            if p is not None and p.default is not REQUIRED and p.default == v:
                continue
            if k == "name":
                continue
            parts.append(f"{k}={_fmt_value(v)}")
        return ", ".join(parts)

    def _spec_of(self, kind: str) -> LayerSpec | None:
        c = self._callables().get(kind)
        return c.spec if c is not None else None

    def _hover_block_call(self, ref: _BlockCallRef) -> str:
        cm = ref.model
        block = next((b for b in self._blocks() if b.name == ref.block), None)
        lines = [f"**{ref.block}** (layer block)"]
        if block is not None:
            lines.append(f"```seqdsl\n{self._block_signature(block)}\n```")
            lines.append(f"defined in {block.file}:{block.span.line}")
        ops = [op for op in cm.model.ops if any(e.call == ref.call for e in op.span.via)]
        layers = [x for x in cm.layers if any(e.call == ref.call for e in x.span.via)]
        # the values the call binds: results of its operations named outside the block
        outs = [
            r
            for op in ops
            for r, s in zip(op.results, op.result_spans, strict=False)
            if not any(e.call == ref.call for e in s.via)
        ]
        rows = [r[0] for v in outs if (r := self._row(cm, v)) is not None]
        if rows:
            lines.append(_row_table(rows))
        lines.append(
            f"{len(layers)} layer(s), {sum(x.params for x in layers):,} parameters in this call"
        )
        return "\n\n".join(lines)

    def _blocks(self) -> tuple[LayerBlock, ...]:
        known = self._known()
        prog = known.analysis.program if known is not None else None
        return prog.blocks if prog is not None else ()

    @staticmethod
    def _block_signature(block: LayerBlock) -> str:
        ps = []
        for p in block.params:
            d = f" = {p.default.describe()}" if p.default is not None else ""
            ps.append(f"{p.name}: {p.type}{d}")
        return (
            f"layer {block.name}({', '.join(ps)})  # inputs: {', '.join(block.inputs)}; "
            f"outputs: {', '.join(block.outputs)}"
        )

    def _hover_lexical(self, line: int, col: int) -> Hover | None:
        """A layer name or an argument name, from the catalogue, where no program covers it."""
        off = self.offset(line, col)
        k = self._tok_at(off)
        if k is None or self._toks[k].kind != "name":
            return None
        tok = self._toks[k]
        rng = self._range(tok.start, tok.end)
        nxt = self._toks[k + 1].text if k + 1 < len(self._toks) else ""
        item = self._item_at(tok.start)
        start = self._item_tok(item)
        frames = _frames(self._toks, start, k)
        if nxt == "=" and frames and frames[-1].kind in ("ctor", "pad"):
            spec = self._frame_spec(frames[-1])
            p = spec.param(tok.text) if spec is not None else None
            if p is not None:
                return Hover(
                    rng, f"`{_param_line(p)}`\n\nargument of `{spec.name}`" if spec else ""
                )
        if nxt == "=" and frames and frames[-1].kind == "ctor":
            c = self._callables().get(frames[-1].name)
            if c is not None and c.block is not None:
                for bp in c.block.params:
                    if bp.name == tok.text:
                        return Hover(rng, f"`{self._param_decl(bp)}`\n\nparameter of `{c.name}`")
        c = self._callables().get(tok.text)
        if c is not None and nxt in ("(", "{"):
            if c.spec is not None:
                return Hover(rng, _spec_markdown(c.spec))
            if c.block is not None:
                return Hover(rng, f"```seqdsl\n{self._block_signature(c.block)}\n```")
        if item is not None and item.kind == "model" and tok.start == item.name_start:
            return self._hover_model(item.name, rng)
        if item is not None and any(p[0] == tok.text for p in item.params):
            decl = next((p for p in self._params_of(item) if p.name == tok.text), None)
            if decl is not None:
                return Hover(rng, f"`{self._param_decl(decl)}`\n\nparameter of `{item.name}`")
        return None

    def _params_of(self, item: _Item) -> tuple[ParamDecl, ...]:
        """The declared parameters of a block, cell or extern layer (from the last check)."""
        known = self._known()
        prog = known.analysis.program if known is not None else None
        if prog is None:
            return ()
        if item.kind == "layer":
            block = next((b for b in prog.blocks if b.name == item.name), None)
            return block.params if block is not None else ()
        if item.kind == "cell" and item.name in prog.ir.cells:
            return prog.ir.cells[item.name].params
        if item.kind == "extern" and item.name in prog.ir.externs:
            return prog.ir.externs[item.name].params
        return ()

    @staticmethod
    def _param_decl(p: ParamDecl) -> str:
        return f"{p.name}: {p.type}" + (f" = {p.default.describe()}" if p.default else "")

    def _hover_model(self, name: str, rng: Range) -> Hover | None:
        known = self._known()
        prog = known.analysis.program if known is not None else None
        cm = next((m for m in prog.models if m.name == name), None) if prog else None
        if cm is None:
            return None
        lines = [f"**model {name}**"]
        lines.append(
            f"parameters: {cm.total_params:,} ({cm.trainable_params:,} trainable); "
            f"{len(cm.layers)} layers"
        )
        ins = ", ".join(f"`{i.name}: {cm.types.get(i.name, '?')}`" for i in cm.model.inputs)
        outs = ", ".join(
            f"`{o.name}: {cm.types.get(o.name, '?')}`" + (" with mask" if o.with_mask else "")
            for o in cm.model.outputs
        )
        lines.append(f"inputs: {ins}")
        lines.append(f"outputs: {outs}")
        if cm.constraints:
            lines.append("run-time constraints: " + "; ".join(f"`{c}`" for c in cm.constraints))
        return Hover(rng, "\n\n".join(lines))

    def _item_tok(self, item: _Item | None) -> int:
        if item is None:
            return 0
        for i, t in enumerate(self._toks):
            if t.start >= item.start:
                return i
        return len(self._toks)

    def _frame_spec(self, frame: _Frame) -> LayerSpec | None:
        if frame.kind == "pad":
            return _PAD_SPEC
        c = self._callables().get(frame.name)
        return c.spec if c is not None else None

    # ----------------------------------------------------------------- definition
    def definition(self, line: int, col: int) -> list[Location]:
        off = self.offset(line, col)
        k = self._tok_at(off)
        if k is None:
            return []
        tok = self._toks[k]
        if tok.kind == "str":
            return self._use_definition(tok)
        if tok.kind != "name":
            return []
        for rng, ref in self._index.at(line, col):
            if isinstance(ref, _ValueRef) and rng == self._range(tok.start, tok.end):
                span = self._index.defs.get((ref.model.name, ref.name))
                item = self._item_at(tok.start)
                if span is not None and (
                    item is None
                    or item.start <= self.offset(span.line - 1, span.col - 1) < item.end
                ):
                    return [Location(span.file, span_range(span))]
                break  # a block's input: the caller's value is not defined here
        nxt = self._toks[k + 1].text if k + 1 < len(self._toks) else ""
        c = self._callables().get(tok.text)
        if c is not None and c.span is not None and nxt in ("(", ")", ",", "->", "}", ""):
            return [Location(c.span.file, span_range(c.span))]
        if c is not None and c.what in ("block", "cell", "extern") and c.span is None:
            it = next(i for i in self._items if i.name == tok.text and i.kind != "use")
            return [Location(self.name, self._range(it.name_start, it.name_end))]
        return self._lexical_definition(tok)

    def _lexical_definition(self, tok: _Tok) -> list[Location]:
        item = self._item_at(tok.start)
        if item is None:
            return []
        for name, s, e in item.params:
            if name == tok.text:
                return [Location(self.name, self._range(s, e))]
        for name, s, e, _kind in self._defs_in(item, tok.start):
            if name == tok.text:
                return [Location(self.name, self._range(s, e))]
        return []

    def _defs_in(self, item: _Item, before: int) -> list[tuple[str, int, int, str]]:
        """The names an item's body defines before ``before``: inputs, states, weights and
        assignment targets, in order."""
        out: list[tuple[str, int, int, str]] = []
        start = self._item_tok(item)
        depth = 0
        toks = self._toks
        for i in range(start, len(toks)):
            t = toks[i]
            if t.start >= item.end or t.start >= before:
                break
            if t.text in ("(", "["):
                depth += 1
            elif t.text in (")", "]"):
                depth = max(depth - 1, 0)
            elif depth > 0 or t.start <= item.body:
                continue
            elif (
                t.text in ("input", "state", "weight")
                and i + 1 < len(toks)
                and toks[i + 1].kind == "name"
            ):
                n = toks[i + 1]
                out.append((n.text, n.start, n.end, t.text))
            elif t.text in ("=", "<-"):
                j = i - 1
                names: list[_Tok] = []
                while j > start and toks[j].kind == "name":
                    names.append(toks[j])
                    if toks[j - 1].text != ",":
                        break
                    j -= 2
                out += [(n.text, n.start, n.end, "target") for n in reversed(names)]
        return out

    def _use_definition(self, tok: _Tok) -> list[Location]:
        item = self._item_at(tok.start)
        if item is None or item.kind != "use":
            return []
        src = load_sources(self.text, self.name, self.search_path)
        line, col = self.position(tok.start)
        for use in src.root.uses:
            if (use.span.line, use.span.col) == (line + 1, col + 1) and use.target is not None:
                return [Location(src.files[use.target].name, Range(0, 0, 0, 0))]
        return []

    # ----------------------------------------------------------------- completion
    def completion(self, line: int, col: int) -> list[Completion]:
        off = self.offset(line, col)
        toks = self._toks
        # the tokens before the cursor; a name being typed is the prefix, not context
        stop = 0
        while stop < len(toks) and toks[stop].end <= off:
            stop += 1
        if stop and toks[stop - 1].kind == "name" and toks[stop - 1].end == off:
            stop -= 1
        if stop < len(toks) and toks[stop].start < off and toks[stop].kind in ("str", "num"):
            return []  # inside a string or a number
        item = self._item_at(off)
        if item is None or item.kind == "use":
            return self._keywords(("model", "layer", "cell", "extern layer", "use"))
        if item.body < 0 or off <= item.body:
            return []
        start = self._item_tok(item)
        prev = toks[stop - 1] if stop > start else None
        frames = _frames(toks, start, stop)
        if frames:
            return self._complete_in(frames[-1], toks, stop, item, off)
        if prev is None:
            return []
        if prev.text == "->":
            return self._layers() + [
                Completion("drop_mask", "keyword", "drop the mask here, on purpose"),
                Completion("repeat", "keyword", "repeat(n) { stages }: the stages n times"),
            ]
        if prev.text == "=":
            return self._values(item, off) + self._layers()
        if prev.text == ":" and stop >= 2 and toks[stop - 3].text == "input":
            return [Completion(d, "keyword", "dtype") for d in DTYPES] + [
                Completion("mask", "keyword", "a mask input: mask(post)[B, T]")
            ]
        if prev.text == "output" or (prev.text == "," and self._in_output(toks, start, stop)):
            return self._values(item, off)
        if prev.text in ("{", "}", ")", "]") or prev.kind in ("name", "num", "str"):
            words: tuple[str, ...] = ("input", "output")
            if item.kind == "cell":
                words = ("input", "state", "weight", "output")
            return self._keywords(words) + (
                self._keywords(("masked", "pad")) if self._in_input(toks, start, stop) else []
            )
        return []

    @staticmethod
    def _in_output(toks: Sequence[_Tok], start: int, stop: int) -> bool:
        for i in range(stop - 1, start - 1, -1):
            if toks[i].text == "output":
                return True
            if toks[i].kind != "name" and toks[i].text not in (",", "with", "mask"):
                return False
        return False

    @staticmethod
    def _in_input(toks: Sequence[_Tok], start: int, stop: int) -> bool:
        """Whether the cursor follows an ``input name: type[...]`` on the same statement."""
        for i in range(stop - 1, start - 1, -1):
            if toks[i].text == "input":
                return True
            if toks[i].text in ("=", "output", "{", "}"):
                return False
        return False

    @staticmethod
    def _keywords(words: Iterable[str]) -> list[Completion]:
        return [Completion(w, "keyword") for w in words]

    def _complete_in(
        self, frame: _Frame, toks: Sequence[_Tok], stop: int, item: _Item, off: int
    ) -> list[Completion]:
        # the tokens of the current argument so far
        j = stop
        while j > frame.open + 1 and toks[j - 1].text not in (",", "(", "["):
            j -= 1
        arg = [t.text for t in toks[j:stop]]
        keyword = arg[0] if len(arg) == 2 and arg[1] == "=" else None
        if frame.kind in ("ctor", "pad"):
            spec = self._frame_spec(frame)
            c = self._callables().get(frame.name)
            if c is not None and c.what == "merge" and keyword is None and spec is not None:
                # merge functions take values: `concat(a, b, axis=time)`
                if arg:
                    return []
                return self._values(item, off) + [
                    Completion(p.name, "argument", _param_line(p), p.doc, f"{p.name}=")
                    for p in spec.params
                    if p.name not in ("name", "trainable")
                ]
            if keyword is not None:
                if spec is not None:
                    p = spec.param(keyword)
                    return self._param_values(p, item, off) if p is not None else []
                return self._block_param_values(item, off)
            if arg:
                return []
            given, positional = _given_args(toks, frame.open, stop)
            if spec is not None:
                bindable = [p.name for p in spec.params if p.name not in ("name", "trainable")]
                given |= set(bindable[:positional])
                out = [
                    Completion(
                        p.name,
                        "argument",
                        _param_line(p).split(" — ")[0],
                        p.doc,
                        f"{p.name}=",
                    )
                    for p in spec.params
                    if p.name not in given
                ]
                if any(p.type == "layer" for p in spec.params):
                    out += self._layers()
                return out + self._block_param_values(item, off)
            if c is not None and c.block is not None:
                return [
                    Completion(
                        p.name,
                        "argument",
                        f"{p.name}: {p.type}"
                        + (f" = {p.default.describe()}" if p.default is not None else ""),
                        "",
                        f"{p.name}=",
                    )
                    for p in c.block.params
                    if p.name not in given
                ] + self._block_param_values(item, off)
            return []
        if frame.kind == "decorator":
            if frame.name == "kernel":
                return [Completion(k, "choice", "kernel") for k in KERNELS if "+" not in k] + [
                    Completion(k, "choice", "kernel") for k in KERNELS if "+" in k
                ]
            return []
        if frame.kind == "data":
            if keyword == "training":
                return self._keywords(("true", "false"))
            if keyword is not None or arg:
                return self._values(item, off) if not arg or arg[-1] == "=" else []
            spec = self._spec_of(frame.callee)
            data = sorted(spec.data_args if spec is not None else ("mask", "initial_state"))
            return self._values(item, off) + [
                Completion(a, "argument", "data argument", "", f"{a}=") for a in data
            ]
        if frame.kind in ("list", "group"):
            return self._values(item, off) + self._layers()
        return []

    def _param_values(self, p: Param, item: _Item, off: int) -> list[Completion]:
        default = _fmt_value(p.default)
        choices: Sequence[str] = ()
        if p.choices:
            choices = p.choices
        elif p.type == "activation":
            choices = ACTIVATIONS
        elif p.type == "initializer":
            choices = INITIALIZERS
        elif p.type == "bool":
            choices = ("true", "false")
        elif p.type == "axis":
            choices = ("time", "features")
        elif p.type in ("int_or_none", "ints_or_none", "axes"):
            choices = ("none",)
        elif p.type == "layer":
            return self._layers()
        out = [
            Completion(c, "choice", "default" if c == default else p.name, "", None)
            for c in choices
        ]
        return out + self._block_param_values(item, off)

    def _block_param_values(self, item: _Item, off: int) -> list[Completion]:
        if item.kind != "layer":
            return []
        return [Completion(name, "value", "block parameter") for name, _s, _e in item.params]

    def _layers(self) -> list[Completion]:
        out = []
        for c in self._callables().values():
            if c.what == "merge":
                out.append(Completion(c.name, "layer", "merge function", self._callable_doc(c)))
            elif c.what == "layer":
                assert c.spec is not None
                out.append(Completion(c.name, "layer", c.spec.doc, self._callable_doc(c)))
            else:
                out.append(Completion(c.name, "block", f"{c.what}", self._callable_doc(c)))
        return out

    def _callable_doc(self, c: _Callable) -> str:
        if c.spec is not None:
            return _spec_markdown(c.spec)
        if c.block is not None:
            return f"```seqdsl\n{self._block_signature(c.block)}\n```"
        return ""

    def _values(self, item: _Item, off: int) -> list[Completion]:
        defs = self._defs_in(item, off)
        # not the targets of the statement being written (`q = concat(|`)
        if defs and defs[-1][3] == "target":
            eq = self.text.find("=", defs[-1][2])
            if 0 <= eq < off and "output" not in self.text[eq:off]:
                while defs and defs[-1][3] == "target" and self.text.find("=", defs[-1][2]) == eq:
                    defs.pop()
        names = [d[0] for d in defs]
        types = self._types_of(item)
        out: list[Completion] = []
        seen: set[str] = set()
        for n in names:
            if n in seen:
                continue
            seen.add(n)
            out.append(Completion(n, "value", types.get(n, "")))
        return out

    def _types_of(self, item: _Item) -> dict[str, str]:
        """Value name -> its type and mask, from this text's analysis or the last that checked."""
        doc = self._known()
        if doc is not None and doc.analysis.program is not None:
            for cm in doc.analysis.program.models:
                if cm.name == item.name and item.kind == "model":
                    rows = doc._index.rows(cm.name)
                    return {
                        v: f"{cells[2]}  time {cells[3]}  mask {cells[4]}"
                        for v, (cells, _i) in rows.items()
                    }
        return {}

    # ----------------------------------------------------------------- symbols
    def symbols(self) -> list[Symbol]:
        """Models (with their inputs and values), layer blocks, cells and extern layers."""
        out: list[Symbol] = []
        known = self._known()
        models = {
            cm.name: cm.model
            for cm in (
                known.analysis.program.models if known is self and known.analysis.program else ()
            )
        }
        for it in self._items:
            rng = self._range(it.start, it.end)
            sel = self._range(it.name_start, it.name_end)
            if it.kind == "use":
                out.append(Symbol(it.name, "use", rng, sel))
                continue
            children: list[Symbol] = []
            detail = ""
            if it.kind == "model":
                m = models.get(it.name)
                children = self._model_children(m) if m is not None else []
            if it.kind in ("layer", "cell", "extern"):
                detail = "(" + ", ".join(p[0] for p in it.params) + ")"
            kind: SymbolKind = "block" if it.kind == "layer" else it.kind  # type: ignore[assignment]
            if it.kind == "model" and not children:
                children = [
                    Symbol(n, "value", self._range(s, e), self._range(s, e))
                    for n, s, e, _k in self._defs_in(it, it.end)
                ]
            out.append(Symbol(it.name, kind, rng, sel, detail, tuple(children)))
        return out

    def _model_children(self, m: Model) -> list[Symbol]:
        out = []
        for inp in m.inputs:
            if inp.span.file == self.name:
                out.append(
                    Symbol(inp.name, "input", span_range(inp.span), span_range(inp.name_span))
                )
        for name, span in m.bindings:
            if span.file == self.name:
                out.append(Symbol(name, "value", span_range(span), span_range(span)))
        return out

    # ----------------------------------------------------------------- quick fixes
    def code_actions(self, rng: Range) -> list[CodeAction]:
        """Quick fixes for the diagnostics that touch ``rng``."""
        out: list[CodeAction] = []
        for d in self.diagnostics():
            if d.source.span is None or d.source.span.file != self.name:
                continue
            if not d.range.overlaps(rng):
                continue
            out += self._fixes(d)
        return out

    def _span_text(self, span: Span) -> str:
        r = span_range(span)
        return self.text[
            self.offset(r.start_line, r.start_col) : self.offset(r.end_line, r.end_col)
        ]

    def _fixes(self, d: IdeDiagnostic) -> list[CodeAction]:
        span = d.source.span
        assert span is not None
        hint = d.hint or ""
        out: list[CodeAction] = []
        m = _DID_YOU_MEAN.fullmatch(hint.strip())
        if m is not None and span.line == span.end_line:
            word = self._span_text(span)
            new = m.group(1)
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", word):
                out.append(CodeAction(f"Change `{word}` to `{new}`", d, (TextEdit(d.range, new),)))
            elif len(word) >= 2 and word[0] in "\"'" and word[-1] == word[0]:
                quoted = word[0] + new + word[0]
                out.append(
                    CodeAction(f"Change {word} to {quoted}", d, (TextEdit(d.range, quoted),))
                )
        if d.code == "SEQ501" and "drop_mask" in hint:
            out += self._fix_drop_mask(d, span)
        if d.code == "SEQ501" and "remove `mask_zero=true`" in hint:
            out += self._fix_remove_arg(d, span, "mask_zero")
        if d.code == "SEQ801":
            out += self._fix_mask_zero(d, span)
        if d.code == "SEQ804":
            out += self._fix_remove_drop_mask(d, span)
        if d.code == "SEQ108":
            out += self._fix_remove_with_mask(d, span)
        return out

    def _models(self) -> Sequence[CheckedModel]:
        prog = self.analysis.program
        return prog.models if prog is not None else ()

    def _fix_drop_mask(self, d: IdeDiagnostic, span: Span) -> list[CodeAction]:
        for cm in self._models():
            for op in cm.model.ops:
                if isinstance(op, ApplyOp) and any(u.span == span for u in op.inputs):
                    end = span_range(span)
                    at = Range(end.end_line, end.end_col, end.end_line, end.end_col)
                    return [
                        CodeAction(
                            "Drop the mask on purpose: insert `-> drop_mask`",
                            d,
                            (TextEdit(at, " -> drop_mask"),),
                        )
                    ]
        return []

    def _arg_removal(self, arg: Arg) -> TextEdit:
        """Delete an argument and the comma that joins it to its neighbours."""
        r = span_range(arg.span)
        start = self.offset(r.start_line, r.start_col)
        end = self.offset(r.end_line, r.end_col)
        before = self.text[:start].rstrip()
        if before.endswith(","):
            start = len(before) - 1
        else:
            after = self.text[end:]
            stripped = after.lstrip()
            if stripped.startswith(","):
                end += len(after) - len(stripped) + 1
                end += len(self.text[end:]) - len(self.text[end:].lstrip(" \t"))
        return TextEdit(self._range(start, end), "")

    def _fix_remove_arg(self, d: IdeDiagnostic, span: Span, name: str) -> list[CodeAction]:
        for cm in self._models():
            for op in cm.model.ops:
                if not isinstance(op, ApplyOp):
                    continue
                for call in _layer_calls(op.layer):
                    for a in call.args:
                        if a.name == name and a.span == span:
                            return [
                                CodeAction(
                                    f"Remove `{self._span_text(a.span)}`",
                                    d,
                                    (self._arg_removal(a),),
                                )
                            ]
        return []

    def _fix_mask_zero(self, d: IdeDiagnostic, span: Span) -> list[CodeAction]:
        """Mask the padding where the ids become vectors: `mask_zero=true` on the Embedding
        upstream of the layer, when the input is padded with 0 (its mask then is declared)."""
        for cm in self._models():
            producers = {r: op for op in cm.model.ops for r in op.results}
            for op in cm.model.ops:
                if not (isinstance(op, ApplyOp) and op.layer.span == span) or not op.inputs:
                    continue
                cur: ApplyOp | MergeOp | DropMaskOp | None = producers.get(op.inputs[0].name)
                for _ in range(64):
                    if not isinstance(cur, ApplyOp):
                        return []
                    if cur.layer.kind == "Embedding":
                        return self._mask_zero_edit(d, cm, cur)
                    if len(cur.inputs) != 1:
                        return []
                    cur = producers.get(cur.inputs[0].name)
        return []

    def _mask_zero_edit(self, d: IdeDiagnostic, cm: CheckedModel, emb: ApplyOp) -> list[CodeAction]:
        src = emb.inputs[0].name if emb.inputs else ""
        pad = cm.pads.get(src)
        if pad is None or pad.value != 0 or emb.layer.span.file != self.name:
            return []
        title = "Mask the padding: `mask_zero=true` on the Embedding"
        for a in emb.layer.args:
            if a.name == "mask_zero":
                return [CodeAction(title, d, (TextEdit(span_range(a.value.span), "true"),))]
        r = span_range(emb.layer.span)
        close = self.offset(r.end_line, r.end_col) - 1
        if close < 0 or self.text[close] != ")":
            return []
        inner = self.text[:close].rstrip()
        sep = "" if inner.endswith("(") else ", "
        at = self._range(close, close)
        return [CodeAction(title, d, (TextEdit(at, f"{sep}mask_zero=true"),))]

    def _fix_remove_drop_mask(self, d: IdeDiagnostic, span: Span) -> list[CodeAction]:
        r = span_range(span)
        start = self.offset(r.start_line, r.start_col)
        end = self.offset(r.end_line, r.end_col)
        if self.text[start:end] != "drop_mask":
            return []
        before = self.text[:start].rstrip()
        if not before.endswith("->"):
            return []
        cut = len(before) - 2
        cut = len(self.text[:cut].rstrip())
        return [CodeAction("Remove `drop_mask`", d, (TextEdit(self._range(cut, end), ""),))]

    def _fix_remove_with_mask(self, d: IdeDiagnostic, span: Span) -> list[CodeAction]:
        text = self._span_text(span)
        m = re.search(r"\s+with\s+mask\s*$", text)
        if m is None or span.line != span.end_line:
            return []
        r = span_range(span)
        at = Range(r.start_line, r.start_col + m.start(), r.end_line, r.end_col)
        return [CodeAction("Remove `with mask`", d, (TextEdit(at, ""),))]


_PAD_SPEC = LayerSpec(
    name="pad",
    category="pad",
    params=PAD_PARAMS,
    rule=lambda *a: [],
    weights=lambda *a: [],
    mask_rule="none",
    padding_invariant=True,
    doc="keras.utils.pad_sequences semantics: how this input is padded",
)


class _Edit:
    """How offsets move between two versions of a text: the common start and end are
    kept, the part between them changed."""

    def __init__(self, old: str, new: str):
        n = min(len(old), len(new))
        lo, hi = 0, n
        while lo < hi:  # the longest common prefix, by halving (slices compare in C)
            mid = (lo + hi + 1) // 2
            if old[:mid] == new[:mid]:
                lo = mid
            else:
                hi = mid - 1
        self.prefix = lo
        lo, hi = 0, n - self.prefix
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if old[len(old) - mid :] == new[len(new) - mid :]:
                lo = mid
            else:
                hi = mid - 1
        self.suffix = lo
        self.old_len = len(old)
        self.new_len = len(new)

    def to_old(self, offset: int) -> int | None:
        """The offset in the old text of a new text's offset outside the edit (else None)."""
        if offset <= self.prefix:
            return offset
        if offset >= self.new_len - self.suffix:
            return offset - self.new_len + self.old_len
        return None

    def to_new(self, offset: int) -> int | None:
        if offset <= self.prefix:
            return offset
        if offset >= self.old_len - self.suffix:
            return offset - self.old_len + self.new_len
        return None


def _line_starts(text: str) -> list[int]:
    starts = [0]
    for m in re.finditer("\n", text):
        starts.append(m.end())
    return starts
