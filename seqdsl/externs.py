"""Implementations of ``extern layer`` declarations, registered per backend.

An ``extern layer`` is declared in ``.seq`` (its types and mask contract, which
the checker trusts) and implemented in Python once per backend it runs on::

    import seqdsl

    @seqdsl.extern("MyActivation", backend="torch")
    def my_activation(x, *, mask, weights, config, training):
        return torch.relu(x)

Backends: ``"torch"``, ``"jax"``, ``"keras"`` (written with ``keras.ops``; it
then runs on every Keras backend) and ``"numpy"`` (float64, used by the
reference interpreter, :func:`seqdsl.reference.run_reference`).

The call contract is the same everywhere: the implementation receives the
layer's inputs positionally (backend arrays), and as keywords ``mask`` (the
boolean ``[B, T]`` mask of the input, or None; a tuple of them when the layer
takes several inputs), ``weights`` (name -> the backend's array or variable,
for the weights the declaration lists: seqdsl creates, initialises, saves and
trains them like any layer's), ``config`` (the declared parameters, bound) and
``training``. It returns the output, or a tuple of the declared number of
outputs. The output mask is computed by seqdsl from the declared contract; an
implementation registered with ``returns_mask=True`` returns ``(outputs, mask)``
and, in debug mode, that mask is compared with the declaration's.

A ``.seq`` file can name the Python module that registers its externs with
``use "my_pkg.my_externs"``: building the program imports it (the folder of the
``.seq`` file is searched first). Implementations can also be passed directly:
``program.build("torch", externs={"MyActivation": fn})``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = [
    "EXTERN_BACKENDS",
    "ExternError",
    "Impl",
    "extern",
    "register_extern",
    "get_extern",
    "registered",
    "import_modules",
    "check_output_shapes",
]

EXTERN_BACKENDS = ("numpy", "torch", "jax", "keras")

F = TypeVar("F", bound=Callable[..., object])


class ExternError(RuntimeError):
    """An extern layer without an implementation, or one that broke its declaration."""


@dataclass(frozen=True)
class Impl:
    fn: Callable[..., object]
    returns_mask: bool = False


_REGISTRY: dict[tuple[str, str], Impl] = {}


def register_extern(
    name: str, backend: str, fn: Callable[..., object], *, returns_mask: bool = False
) -> None:
    """Register ``fn`` as the implementation of extern layer ``name`` on ``backend``."""
    if backend not in EXTERN_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: one of {', '.join(EXTERN_BACKENDS)}")
    _REGISTRY[(name, backend)] = Impl(fn, returns_mask)


def extern(name: str, backend: str, *, returns_mask: bool = False) -> Callable[[F], F]:
    """Decorator form of :func:`register_extern`."""

    def deco(fn: F) -> F:
        register_extern(name, backend, fn, returns_mask=returns_mask)
        return fn

    return deco


def registered(name: str) -> tuple[str, ...]:
    """The backends ``name`` has an implementation on."""
    return tuple(b for b in EXTERN_BACKENDS if (name, b) in _REGISTRY)


def get_extern(
    name: str,
    backend: str,
    overrides: Mapping[str, Callable[..., object] | Impl] | None = None,
) -> Impl:
    """The implementation of ``name`` on ``backend`` (``overrides`` first)."""
    if overrides and name in overrides:
        got = overrides[name]
        return got if isinstance(got, Impl) else Impl(got)
    impl = _REGISTRY.get((name, backend))
    if impl is None:
        have = registered(name)
        raise ExternError(
            f"extern layer {name} has no {backend} implementation"
            + (f" (it has: {', '.join(have)})" if have else "")
            + f'; register one with @seqdsl.extern("{name}", backend="{backend}") in a module '
            f'the .seq file names with `use "your.module"`, or pass '
            f'externs={{"{name}": fn}} to build()'
        )
    return impl


def import_modules(modules: Iterable[str], search: Sequence[Path | str] = ()) -> None:
    """Import the modules of ``use "python.module"`` declarations (they register externs).

    ``search`` folders (the .seq files' folders) are tried before ``sys.path``."""
    added = [str(p) for p in search if str(p) not in sys.path]
    sys.path[:0] = added
    try:
        for m in modules:
            try:
                importlib.import_module(m)
            except ImportError as e:
                raise ExternError(
                    f'use "{m}": cannot import the Python module ({e}); it must be importable '
                    "from the .seq file's folder or sys.path"
                ) from e
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)


def check_output_shapes(
    name: str,
    declared: Sequence[tuple[str, Sequence[int | None]]],
    got: Sequence[tuple[str, Sequence[int]]],
    declaration: str,
) -> None:
    """Debug mode: the outputs of an extern implementation against its declaration.

    ``declared``: (dtype, shape with None for sizes known only at run time) per
    output; ``got``: (dtype, shape) of what the implementation returned."""
    if len(got) != len(declared):
        raise ExternError(
            f"extern layer {name} returned {len(got)} output(s), but its declaration "
            f"({declaration}) gives {len(declared)}"
        )
    for i, ((dt, shape), (gdt, gshape)) in enumerate(zip(declared, got, strict=True)):
        bad = len(shape) != len(gshape) or any(
            d is not None and d != g for d, g in zip(shape, gshape, strict=False)
        )
        if bad or _kind(dt) != _kind(gdt):
            want = f"{dt}[{', '.join('_' if d is None else str(d) for d in shape)}]"
            raise ExternError(
                f"extern layer {name}: output {i + 1} is {gdt}{list(gshape)}, but the "
                f"declaration ({declaration}) says {want}"
            )


def _kind(dtype: str) -> str:
    d = dtype.lower()
    if "bool" in d:
        return "bool"
    if "int" in d or d in ("i32", "i64"):
        return "int"
    return "float"
