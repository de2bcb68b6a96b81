"""Diagnostics: coded, located, with a fix hint, rendered three ways.

Every user-facing problem is a :class:`Diagnostic`. Codes are registered in
:data:`CODES` (the one table that ``docs/errors.md`` documents and the tests
walk). Rendering never prints; the CLI does.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .ir import Span

Severity = Literal["error", "warning"]

__all__ = [
    "CODES",
    "Diagnostic",
    "Related",
    "SeqError",
    "did_you_mean",
    "expansion_notes",
    "render",
    "render_json",
]


@dataclass(frozen=True)
class CodeInfo:
    code: str
    severity: Severity
    title: str


def _codes(*rows: tuple[str, Severity, str]) -> dict[str, CodeInfo]:
    return {c: CodeInfo(c, s, t) for c, s, t in rows}


#: Every diagnostic code the compiler can emit. Codes are stable: never reuse one.
CODES: dict[str, CodeInfo] = _codes(
    # syntax and structure
    ("SEQ001", "error", "syntax error"),
    ("SEQ002", "error", "invalid character or unterminated string"),
    ("SEQ003", "error", "a layer constructor used where a value is expected"),
    ("SEQ004", "error", "a literal used where a tensor is expected"),
    ("SEQ005", "error", "a merge function used as a pipe stage"),
    ("SEQ006", "error", "invalid input declaration"),
    ("SEQ007", "error", "unknown dtype"),
    ("SEQ008", "error", "model has no output"),
    ("SEQ009", "error", "invalid decorator"),
    ("SEQ010", "error", "invalid layer block"),
    ("SEQ011", "error", "imported file not found"),
    ("SEQ012", "error", "import cycle"),
    ("SEQ013", "error", "invalid cell block"),
    ("SEQ014", "error", "invalid extern layer declaration"),
    ("SEQ015", "error", "nested too deeply or a literal too long"),
    ("SEQ016", "error", "no model to compile"),
    # names
    ("SEQ101", "error", "undefined name"),
    ("SEQ102", "error", "name defined twice"),
    ("SEQ103", "error", "unknown layer"),
    ("SEQ104", "error", "duplicate layer name"),
    ("SEQ105", "error", "duplicate model name"),
    ("SEQ106", "error", "mask value used as data"),
    ("SEQ107", "error", "output declared twice"),
    ("SEQ108", "error", "`with mask` on an output that has no mask"),
    ("SEQ109", "error", "layer block shadows a built-in name"),
    ("SEQ110", "error", "layer block defined twice"),
    ("SEQ111", "error", "layer blocks call each other in a cycle"),
    ("SEQ112", "error", "two files define a layer block of the same name"),
    # arguments
    ("SEQ201", "error", "unknown argument"),
    ("SEQ202", "error", "unsupported Keras argument"),
    ("SEQ203", "error", "wrong argument type or value"),
    ("SEQ204", "error", "missing required argument"),
    ("SEQ205", "error", "argument given twice or too many positional arguments"),
    ("SEQ206", "error", "data argument in a constructor, or configuration in a call"),
    ("SEQ207", "error", "argument out of range"),
    ("SEQ208", "error", "layer block called with the wrong inputs"),
    # shapes and dtypes
    ("SEQ301", "error", "dtype mismatch"),
    ("SEQ302", "error", "feature size mismatch"),
    ("SEQ303", "error", "wrong rank"),
    ("SEQ304", "error", "wrong number of initial states"),
    ("SEQ305", "error", "initial state of the wrong shape"),
    ("SEQ306", "error", "wrong number of results unpacked"),
    ("SEQ307", "error", "batch dimension mismatch"),
    ("SEQ308", "error", "reshape size mismatch"),
    ("SEQ309", "error", "feature size must be known"),
    ("SEQ310", "error", "shape error in a cell equation"),
    ("SEQ311", "error", "cell state or output does not match its declaration"),
    ("SEQ312", "error", "size beyond the limits"),
    # time
    ("SEQ401", "error", "time dimensions disagree"),
    ("SEQ402", "error", "exact division fails on a known length"),
    ("SEQ403", "error", "sequence too short for the layer"),
    # masks
    ("SEQ501", "error", "mask would be dropped silently"),
    ("SEQ502", "error", "required mask missing"),
    ("SEQ503", "error", "explicit mask does not match the value's time axis"),
    ("SEQ504", "error", "layer does not take a mask argument"),
    # state
    ("SEQ601", "error", "stateful layer needs a fixed batch size"),
    ("SEQ602", "error", "Bidirectional's backward_layer does not match its layer"),
    ("SEQ603", "error", "masked_output=carry inside Bidirectional"),
    # kernels
    ("SEQ701", "error", "layer is not eligible for the requested kernel"),
    # warnings
    ("SEQ801", "warning", "padded input reaches a recurrent, pooling or attention layer unmasked"),
    ("SEQ802", "warning", "value is never used"),
    ("SEQ803", "warning", "mask does not match the declared padding value"),
    ("SEQ804", "warning", "drop_mask on a value that has no mask"),
    ("SEQ805", "warning", "explicit mask replaces the incoming mask"),
)


@dataclass(frozen=True)
class Related:
    span: Span
    message: str


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None
    hint: str | None = None
    related: tuple[Related, ...] = ()
    severity: Severity = field(default="error")

    @staticmethod
    def make(
        code: str,
        message: str,
        span: Span | None,
        hint: str | None = None,
        related: Sequence[Related] = (),
    ) -> Diagnostic:
        """A diagnostic of ``code``; a span inside an expanded ``layer`` block adds
        one note per call site, innermost first ("in expansion of `Encoder`")."""
        info = CODES[code]
        notes = tuple(related)
        if span is not None and span.via:
            notes += expansion_notes(span)
        return Diagnostic(code, message, span, hint, notes, info.severity)

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def location(self) -> str:
        if self.span is None:
            return "<unknown>"
        return f"{self.span.file}:{self.span.line}:{self.span.col}"

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
        }
        if self.span is not None:
            d.update(
                file=self.span.file,
                line=self.span.line,
                col=self.span.col,
                end_line=self.span.end_line,
                end_col=self.span.end_col,
            )
        d["related"] = [
            {"file": r.span.file, "line": r.span.line, "col": r.span.col, "message": r.message}
            for r in self.related
        ]
        return d


def expansion_notes(span: Span) -> tuple[Related, ...]:
    """The call sites a span inside an expanded ``layer`` block came through, innermost first."""
    return tuple(
        Related(e.call, f"in expansion of `{e.block}` called here") for e in reversed(span.via)
    )


class SeqError(Exception):
    """Raised by the Python API when a program has errors; carries every diagnostic."""

    def __init__(self, diagnostics: Sequence[Diagnostic], sources: Mapping[str, str] | None = None):
        self.diagnostics = tuple(diagnostics)
        self.sources = dict(sources or {})
        errors = [d for d in self.diagnostics if d.is_error]
        first = errors[0] if errors else (self.diagnostics[0] if self.diagnostics else None)
        head = f"{first.location()}: {first.code}: {first.message}" if first else "error"
        more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
        super().__init__(head + more)

    def render(self, fmt: str = "full") -> str:
        return render(self.diagnostics, self.sources, fmt)


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A "did you mean" suggestion, case-insensitive, or None."""
    cands = list(candidates)
    lower = {c.lower(): c for c in cands}
    if word.lower() in lower and lower[word.lower()] != word:
        return lower[word.lower()]
    hits = difflib.get_close_matches(word.lower(), list(lower), n=1, cutoff=0.7)
    return lower[hits[0]] if hits else None


def _excerpt(span: Span, sources: Mapping[str, str]) -> list[str]:
    text = sources.get(span.file)
    if text is None:
        return []
    lines = text.splitlines()
    if not 1 <= span.line <= len(lines):
        return []
    line = lines[span.line - 1].expandtabs(4)
    width = len(str(span.line))
    start = max(span.col - 1, 0)
    if span.end_line == span.line and span.end_col > span.col:
        length = span.end_col - span.col
    else:
        length = max(1, len(line.rstrip()) - start)
    length = max(1, min(length, max(1, len(line) - start)))
    gutter = " " * width
    return [
        f"{gutter} |",
        f"{span.line} | {line}",
        f"{gutter} | {' ' * start}{'^' * length}",
    ]


def _sort_key(d: Diagnostic) -> tuple[str, int, int, str]:
    if d.span is None:
        return ("", 0, 0, d.code)
    return (d.span.file, d.span.line, d.span.col, d.code)


def render(diags: Sequence[Diagnostic], sources: Mapping[str, str], fmt: str = "full") -> str:
    """Render diagnostics as ``full`` (with excerpts), ``concise`` (one line each) or ``json``."""
    ordered = sorted(diags, key=_sort_key)
    if fmt == "json":
        return render_json(ordered)
    out: list[str] = []
    for d in ordered:
        head = f"{d.location()}: {d.severity}[{d.code}]: {d.message}"
        if fmt == "concise":
            out.append(head)
            continue
        out.append(head)
        if d.span is not None:
            out.extend(_excerpt(d.span, sources))
        for r in d.related:
            out.append(f"  = note: {r.span.file}:{r.span.line}:{r.span.col}: {r.message}")
        if d.hint:
            out.append(f"  = help: {d.hint}")
        out.append("")
    if fmt == "full" and ordered:
        n_err = sum(1 for d in ordered if d.is_error)
        n_warn = len(ordered) - n_err
        out.append(f"{n_err} error(s), {n_warn} warning(s)")
    return "\n".join(out).rstrip("\n") + ("\n" if out else "")


def render_json(diags: Sequence[Diagnostic]) -> str:
    return json.dumps([d.to_dict() for d in diags], indent=2) + "\n"
