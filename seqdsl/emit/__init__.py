"""Emitters: one module per target, each turning a checked model into source code.

Emitters produce text and import no framework: ``seqdsl compile`` works with
only lark and numpy installed. :func:`build` executes the emitted source (the
same text ``compile`` writes: one path) and is the only place a framework is
imported, lazily, by the emitted code itself.

Each target module (``seqdsl.emit.torch_backend``, ``seqdsl.emit.jax_backend``,
``seqdsl.emit.keras_backend``) provides::

    emit_model(model: CheckedModel, source: str) -> str
    instantiate(module: types.ModuleType, model: CheckedModel, weights: dict[str, np.ndarray],
                dtype: str | None = None) -> object

``dtype`` is the build's float dtype (``build(..., dtype=)``); a model without
weights has no other way to tell it.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..checker import CheckedModel
from ..initializers import initial_weights

__all__ = ["BACKENDS", "CodeWriter", "Unsupported", "build", "emit", "module_for"]

_ALL_BACKENDS = {"torch": "torch_backend", "jax": "jax_backend", "keras": "keras_backend"}

#: the targets this installation can emit (a target module ships when its emitter is complete)
BACKENDS = {
    name: mod
    for name, mod in _ALL_BACKENDS.items()
    if importlib.util.find_spec(f"{__name__}.{mod}") is not None
}

_counter = itertools.count()


class Unsupported(Exception):
    """A construct the target cannot express (reported, never a crash)."""

    def __init__(self, layer: str, reason: str):
        super().__init__(f"{layer}: {reason}")
        self.layer = layer
        self.reason = reason


class CodeWriter:
    """Indented lines, for readable generated code."""

    def __init__(self, indent: str = "    "):
        self.lines: list[str] = []
        self._level = 0
        self._indent = indent

    def __call__(self, line: str = "") -> None:
        self.lines.append((self._indent * self._level + line) if line else "")

    @contextmanager
    def block(self, header: str) -> Iterator[None]:
        self(header)
        self._level += 1
        try:
            yield
        finally:
            self._level -= 1

    def text(self) -> str:
        out = "\n".join(self.lines).rstrip() + "\n"
        while "\n\n\n\n" in out:
            out = out.replace("\n\n\n\n", "\n\n\n")
        return out


def module_for(backend: str) -> types.ModuleType:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"{__name__}.{BACKENDS[backend]}")


def emit(
    model: CheckedModel, backend: str, source: str = "<string>", standalone: bool = False
) -> str:
    """The module source for ``model`` on ``backend``. It imports its run-time code
    from :mod:`seqdsl.runtime`; ``standalone`` copies that code in instead, so that
    the file needs only NumPy and the framework (:mod:`seqdsl.emit.standalone`)."""
    text: str = module_for(backend).emit_model(model, source)
    if standalone:
        from .standalone import make_standalone

        text = make_standalone(text)
    return text


def load_source(text: str, name: str) -> types.ModuleType:
    """Execute emitted source as a real module (registered in sys.modules)."""
    modname = f"seqdsl_generated_{name}_{next(_counter)}"
    mod = types.ModuleType(modname)
    mod.__file__ = f"<seqdsl:{name}>"
    sys.modules[modname] = mod
    code = compile(text, mod.__file__, "exec")
    exec(code, mod.__dict__)
    return mod


#: what ``build(..., dtype=)`` takes: the float dtype of the weights and the computation
FLOAT_DTYPES = ("float32", "float64")


def build(
    model: CheckedModel,
    backend: str,
    seed: int = 0,
    source: str = "<string>",
    dtype: str = "float32",
    externs: Mapping[str, Callable[..., object]] | None = None,
) -> Any:
    """A runnable model for ``backend``, built from the emitted code, with the
    initial weights drawn from ``seed`` in the canonical layout.

    Extern layers take their implementations from ``externs`` (name -> function),
    then from the registry (``@seqdsl.extern``), after importing the modules the
    program names with ``use "python.module"`` (see ``seqdsl/externs.py``)."""
    if dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"build(dtype={dtype!r}): the float dtype of the weights and the computation "
            f"is one of {', '.join(FLOAT_DTYPES)}"
        )
    if model.python_modules:
        from ..externs import import_modules

        folder = Path(model.file).parent if model.file else Path(".")
        import_modules(model.python_modules, [folder])
    backend_mod = module_for(backend)
    text = emit(model, backend, source)
    mod = load_source(text, model.name)
    weights: dict[str, np.ndarray] = initial_weights(
        ((layer.name, layer.weights) for layer in model.layers), seed, dtype
    )
    if model.externs:
        return backend_mod.instantiate(mod, model, weights, dtype=dtype, externs=externs)
    return backend_mod.instantiate(mod, model, weights, dtype=dtype)
