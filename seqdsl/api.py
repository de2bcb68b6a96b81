"""The Python API: ``seqdsl.load(path)`` and ``seqdsl.loads(text, name=...)``.

Both run the pure pipeline parse -> lower -> check and return a
:class:`Program`; user errors raise :class:`~seqdsl.diagnostics.SeqError`
carrying every diagnostic. :func:`analyze` and :func:`analyze_sources` are the
non-raising forms (the CLI uses the latter: it also returns the text of every
file the program uses, for the excerpts of diagnostics inside them).

``use "file.seq"`` is resolved against the folder of the file that writes it.
For a program given as text, ``name`` doubles as its location: ``loads(text,
name="models/m.seq")`` resolves like ``load("models/m.seq")``, and the default
``"<string>"`` resolves against the current directory. ``search_path`` adds
folders to try after that one.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import ir
from .checker import CheckedModel, check_program
from .diagnostics import Diagnostic, SeqError, render
from .imports import SearchPath, load_sources
from .ir import LayerBlock, Span
from .lower import lower_sources
from .parser import normalize_source
from .summary import summary_json, summary_text

__all__ = ["Analysis", "Program", "analyze", "analyze_sources", "load", "loads"]


@dataclass(frozen=True)
class Program:
    """A checked ``.seq`` program: its IR, checked models and diagnostics (warnings)."""

    file: str
    source: str
    ir: ir.Program
    models: tuple[CheckedModel, ...]
    diagnostics: tuple[Diagnostic, ...]
    #: the text of every file of the program (display name -> text), this one included
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def blocks(self) -> tuple[LayerBlock, ...]:
        """The layer blocks of the file and of every file it uses."""
        return self.ir.blocks

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if not d.is_error)

    def model(self, name: str | None = None) -> CheckedModel:
        """The model called ``name``, or the only/first model."""
        if name is None:
            if not self.models:  # compile, build, summary, export: SEQ016, as the CLI says
                raise SeqError([no_model(self.file)], {**self.sources, self.file: self.source})
            return self.models[0]
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model named {name!r}; models: {', '.join(m.name for m in self.models)}")

    def summary(self, model: str | None = None, fmt: str = "text") -> str:
        models = [self.model(model)] if model is not None else list(self.models)
        if fmt == "json":
            return summary_json(models, self.file)
        return "\n".join(summary_text(m, self.file) for m in models)

    def compile(self, backend: str, model: str | None = None, standalone: bool = False) -> str:
        """The module source of ``model`` for ``backend`` (compiling imports no
        framework). The module imports its run-time code from ``seqdsl.runtime``;
        with ``standalone`` it carries a copy instead and needs only NumPy and the
        framework."""
        from .emit import emit

        return emit(self.model(model), backend, self.file, standalone=standalone)

    def build(
        self,
        backend: str,
        seed: int = 0,
        model: str | None = None,
        dtype: str = "float32",
        externs: Mapping[str, Callable[..., object]] | None = None,
    ) -> object:
        """A runnable model for ``backend`` (the emitted module, executed), with
        the initial weights drawn from ``seed`` in the canonical layout.
        ``externs`` maps extern layer names to implementations (else the registry)."""
        from .emit import build

        return build(
            self.model(model), backend, seed=seed, source=self.file, dtype=dtype, externs=externs
        )

    def export_onnx(
        self,
        model: str | None = None,
        weights: Mapping[str, np.ndarray] | None = None,
        seed: int = 0,
        opset: int = 17,
    ) -> bytes:
        """The serialized ONNX model of ``model`` (see :mod:`seqdsl.emit.onnx_backend`):
        ``weights`` in the canonical layout, else the initial weights of ``seed``.
        Needs the ``onnx`` package; raises :class:`seqdsl.emit.Unsupported` naming
        a layer that ONNX cannot express."""
        from .emit.onnx_backend import export_onnx

        return export_onnx(self.model(model), weights, seed=seed, opset=opset)

    def render_diagnostics(self, fmt: str = "full") -> str:
        return render(self.diagnostics, {**self.sources, self.file: self.source}, fmt)


@dataclass(frozen=True)
class Analysis:
    """What :func:`analyze_sources` found: the program (None after a syntax error in
    any of its files), every diagnostic, and the text of every file it read."""

    program: Program | None
    diagnostics: tuple[Diagnostic, ...]
    sources: Mapping[str, str]

    def render(self, fmt: str = "full") -> str:
        return render(self.diagnostics, self.sources, fmt)


def analyze(
    text: str, name: str = "<string>", *, search_path: SearchPath = None
) -> tuple[Program | None, list[Diagnostic]]:
    """Run the pipeline; return the program (None on syntax errors) and every diagnostic."""
    a = analyze_sources(text, name, search_path=search_path)
    return a.program, list(a.diagnostics)


def analyze_sources(
    text: str, name: str = "<string>", *, search_path: SearchPath = None, need_model: bool = False
) -> Analysis:
    """Like :func:`analyze`, and also the text of every file the program uses.

    ``need_model``: the program is to be compiled (``seqdsl compile``, ``summary``,
    ``export``), so a file without a model is an error (SEQ016); ``check``
    accepts one, as a library of layer blocks."""
    # The pipeline allocates many small, acyclic objects that reference counting
    # frees; pausing the cyclic collector meanwhile saves 10-30% on large programs
    # (bench/bench_check.py). Cycles made meanwhile are collected afterwards.
    enabled = gc.isenabled()
    gc.disable()
    try:
        a = _analyze(text, name, search_path)
    finally:
        if enabled:
            gc.enable()
    if need_model and a.program is not None and not a.program.models:
        diags = (*a.diagnostics, no_model(name))
        return Analysis(replace(a.program, diagnostics=diags), diags, a.sources)
    return a


def no_model(name: str) -> Diagnostic:
    """SEQ016: a file without a model cannot be compiled, built or exported."""
    return Diagnostic.make(
        "SEQ016",
        "the file declares no model",
        Span(name, 1, 1, 1, 2),
        "compiling needs a `model Name { ... }`; a file of layer blocks only is a "
        'library: `use "file.seq"` it from a file that declares a model',
    )


def _analyze(text: str, name: str, search_path: SearchPath) -> Analysis:
    text = normalize_source(text)  # line endings and a BOM as editors read them
    src = load_sources(text, name, search_path)
    sources = src.texts()
    if not src.parsed:
        return Analysis(None, tuple(_dedupe(src.diagnostics)), sources)
    prog, diags = lower_sources(src)
    models, check_diags = check_program(prog)
    all_diags = tuple(_dedupe(src.diagnostics + diags + check_diags))
    program = Program(name, text, prog, tuple(models), all_diags, sources)
    return Analysis(program, all_diags, sources)


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


def loads(text: str, name: str = "<string>", *, search_path: SearchPath = None) -> Program:
    """Parse and check ``text``; raise SeqError if it has errors.

    ``use`` paths resolve against the folder of ``name`` (the current directory
    for ``"<string>"``), then against each ``search_path`` folder."""
    a = analyze_sources(text, name, search_path=search_path)
    if a.program is None or any(d.is_error for d in a.diagnostics):
        raise SeqError(a.diagnostics, a.sources)
    return a.program


def load(path: str | Path, *, search_path: SearchPath = None) -> Program:
    """Parse and check a ``.seq`` file; raise SeqError if it has errors (OSError if unreadable).

    ``use`` paths resolve against the file's folder, then each ``search_path`` folder."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    return loads(text, name=str(path), search_path=search_path)
