"""The Python API: ``seqdsl.load(path)`` and ``seqdsl.loads(text, name=...)``.

Both run the pure pipeline parse -> lower -> check and return a
:class:`Program`; user errors raise :class:`~seqdsl.diagnostics.SeqError`
carrying every diagnostic. :func:`analyze` is the non-raising form the CLI uses.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import ir
from .checker import CheckedModel, check_program
from .diagnostics import Diagnostic, SeqError
from .lower import lower
from .parser import ParseFailure, parse_tree

__all__ = ["Program", "analyze", "load", "loads"]


@dataclass(frozen=True)
class Program:
    """A checked ``.seq`` program: its IR, checked models and diagnostics (warnings)."""

    file: str
    source: str
    ir: ir.Program
    models: tuple[CheckedModel, ...]
    diagnostics: tuple[Diagnostic, ...]

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if not d.is_error)

    def model(self, name: str | None = None) -> CheckedModel:
        """The model called ``name``, or the only/first model."""
        if name is None:
            if not self.models:
                raise KeyError("the program declares no model")
            return self.models[0]
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model named {name!r}; models: {', '.join(m.name for m in self.models)}")

    def summary(self, model: str | None = None, fmt: str = "text") -> str:
        from .summary import summary_json, summary_text

        models = [self.model(model)] if model is not None else list(self.models)
        if fmt == "json":
            return summary_json(models, self.file)
        return "\n".join(summary_text(m, self.file) for m in models)

    def compile(self, backend: str, model: str | None = None) -> str:
        """The standalone module source of ``model`` for ``backend`` (imports no framework)."""
        from .emit import emit

        return emit(self.model(model), backend, self.file)

    def build(
        self, backend: str, seed: int = 0, model: str | None = None, dtype: str = "float32"
    ) -> object:
        """A runnable model for ``backend`` (the emitted module, executed), with
        the initial weights drawn from ``seed`` in the canonical layout."""
        from .emit import build

        return build(self.model(model), backend, seed=seed, source=self.file, dtype=dtype)

    def render_diagnostics(self, fmt: str = "full") -> str:
        from .diagnostics import render

        return render(self.diagnostics, {self.file: self.source}, fmt)


def analyze(text: str, name: str = "<string>") -> tuple[Program | None, list[Diagnostic]]:
    """Run the pipeline; return the program (None on syntax errors) and every diagnostic."""
    # The pipeline allocates many small, acyclic objects that reference counting
    # frees; pausing the cyclic collector meanwhile saves 10-30% on large programs
    # (bench/bench_check.py). Cycles made meanwhile are collected afterwards.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _analyze(text, name)
    finally:
        if enabled:
            gc.enable()


def _analyze(text: str, name: str) -> tuple[Program | None, list[Diagnostic]]:
    try:
        tree = parse_tree(text, name)
    except ParseFailure as f:
        return None, [f.diagnostic]
    prog, diags = lower(tree, name, text)
    models, check_diags = check_program(prog)
    all_diags = _dedupe(diags + check_diags)
    return Program(name, text, prog, tuple(models), tuple(all_diags)), all_diags


def _dedupe(diags: Sequence[Diagnostic]) -> list[Diagnostic]:
    """One diagnostic per code and location: a `repeat` body is checked once per copy."""
    seen: set[tuple[str, object]] = set()
    out: list[Diagnostic] = []
    for d in diags:
        key = (d.code, None if d.span is None else (d.span.file, d.span.line, d.span.col))
        if d.span is None or key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _raise_on_errors(diags: Sequence[Diagnostic], name: str, text: str) -> None:
    if any(d.is_error for d in diags):
        raise SeqError(diags, {name: text})


def loads(text: str, name: str = "<string>") -> Program:
    """Parse and check ``text``; raise SeqError if it has errors."""
    prog, diags = analyze(text, name)
    _raise_on_errors(diags, name, text)
    assert prog is not None
    return prog


def load(path: str | Path) -> Program:
    """Parse and check a ``.seq`` file; raise SeqError if it has errors (OSError if unreadable)."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    return loads(text, name=str(path))
