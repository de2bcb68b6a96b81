"""What the JAX emitter and its cell/extern part share (both import this; it
imports neither): the runtime's names and the interface of the emitter that
:mod:`seqdsl.emit.jax_cells` writes into.

Text only: this module imports no framework (``seqdsl compile`` runs without JAX).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path
from typing import Protocol

from ..cells import BoundCell
from ..checker import CheckedModel, LayerInfo
from ..ir import ApplyOp
from ..types import MaskKind, TensorType
from . import CodeWriter

__all__ = ["ACTIVATION_EXPR", "RUNTIME_MODULE", "EmitterLike", "runtime_names"]

#: the module every generated module imports its run-time code from
RUNTIME_MODULE = "seqdsl.runtime.jax"

#: Keras activation name -> the expression naming the JAX function (a runtime
#: function when jax.nn has no exact twin of Keras' definition).
ACTIVATION_EXPR = {
    "linear": "_linear",
    "relu": "jax.nn.relu",
    "sigmoid": "jax.nn.sigmoid",
    "tanh": "jnp.tanh",
    "softmax": "_softmax",
    "log_softmax": "_log_softmax",
    "softplus": "jax.nn.softplus",
    "softsign": "jax.nn.soft_sign",
    "elu": "jax.nn.elu",
    "selu": "jax.nn.selu",
    "gelu": "_gelu",
    "silu": "jax.nn.silu",
    "swish": "jax.nn.silu",
    "exponential": "jnp.exp",
    "hard_sigmoid": "_hard_sigmoid",
    "relu6": "jax.nn.relu6",
    "leaky_relu": "_leaky_relu",
    "mish": "_mish",
}


@functools.cache
def runtime_names() -> frozenset[str]:
    """The top-level names :data:`RUNTIME_MODULE` defines (read from its source with
    :mod:`ast`: JAX is not imported). Generated code never binds them."""
    spec = importlib.util.find_spec(RUNTIME_MODULE)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return frozenset(names)


class Namer(Protocol):
    def fresh(self, base: str) -> str: ...

    def value(self, v: str) -> str: ...


class EmitterLike(Protocol):
    """What the cell-block and extern emitters use of the JAX emitter."""

    m: CheckedModel
    body: CodeWriter
    mask: dict[str, str | None]
    pending: list[str]
    cell_states: dict[str, tuple[int, tuple[tuple[int, ...], ...], tuple[str, ...]]]

    @property
    def names(self) -> Namer: ...

    def kind_of(self, v: str) -> MaskKind | None: ...

    def tensor(self, v: str) -> TensorType: ...

    def training_expr(self, op: ApplyOp) -> str: ...

    def cell_function(self, bc: BoundCell) -> str: ...

    def emit_declared_check(
        self, mk: str, kind: MaskKind, layer: LayerInfo, src: str, what: str, hint: str
    ) -> None: ...
