"""The typed intermediate representation: frozen dataclasses with source spans.

Lowering (``lower.py``) builds it from the parse tree; nothing past the parser
sees a Lark object. A model body is in SSA form: a tuple of operations, each
producing named values. Pipes and nested expressions are flattened into
operations whose intermediate values are named after the layer that made them;
``repeat`` blocks are unrolled with the repeat index in each layer's name.
Calls of ``layer`` blocks (composites) are expanded into the operations of
their bodies; spans inside an expansion carry the chain of call sites
(:attr:`Span.via`), so a diagnostic there can say where the block was called.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "Span",
    "Expansion",
    "Literal",
    "Arg",
    "LayerCall",
    "Decorator",
    "ValueUse",
    "ApplyOp",
    "MergeOp",
    "DropMaskOp",
    "Op",
    "DimDecl",
    "InputDecl",
    "OutputDecl",
    "BlockInputCheck",
    "ParamDecl",
    "LayerBlock",
    "Model",
    "Program",
    "DimExpr",
    "CExpr",
    "CellTensor",
    "CellWeight",
    "CellStmt",
    "CellDef",
    "MaskContract",
    "ExternDef",
    "MERGE_FUNCTIONS",
]

#: Functions over values (not layers): ``concat(a, b, axis=time)``.
MERGE_FUNCTIONS = ("add", "subtract", "multiply", "average", "maximum", "minimum", "concat")


@dataclass(frozen=True)
class Span:
    file: str
    line: int
    col: int
    end_line: int
    end_col: int
    #: for a span inside an expanded ``layer`` block: the calls that expanded it,
    #: outermost first (empty elsewhere)
    via: tuple[Expansion, ...] = ()

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Expansion:
    """One step of an expansion chain: ``block`` was called at ``call``."""

    block: str
    call: Span
    #: the layer-name prefix of this expansion (``encoder``, ``h_r0_head``): tells apart
    #: the expansions of one call site (a call inside ``repeat``); not part of equality
    prefix: str = field(default="", compare=False)


@dataclass(frozen=True)
class Literal:
    """A configuration value as written.

    ``kind`` is one of ``int``, ``float``, ``bool``, ``str`` (quoted), ``name``
    (a bare identifier such as ``post``, ``time`` or ``tanh``), ``list`` (value
    is a tuple of Literal) or ``layer`` (value is a :class:`LayerCall`).
    """

    kind: str
    value: object
    span: Span

    def describe(self) -> str:
        if self.kind == "list":
            assert isinstance(self.value, tuple)
            return "[" + ", ".join(v.describe() for v in self.value) + "]"
        if self.kind == "layer":
            assert isinstance(self.value, LayerCall)
            return f"{self.value.kind}(...)"
        if self.kind == "bool":
            return "true" if self.value else "false"
        if self.kind == "str":
            return f'"{self.value}"'
        return str(self.value)


@dataclass(frozen=True)
class Arg:
    """A positional (``name is None``) or keyword argument of a constructor."""

    name: str | None
    value: Literal
    span: Span
    name_span: Span | None = None


@dataclass(frozen=True)
class Decorator:
    name: str
    args: tuple[Arg, ...]
    span: Span


@dataclass(frozen=True)
class LayerCall:
    """A layer constructor, e.g. ``LSTM(32, return_sequences=true)``."""

    kind: str
    name: str
    args: tuple[Arg, ...]
    decorators: tuple[Decorator, ...]
    span: Span
    kind_span: Span
    repeat_index: tuple[int, ...] = ()
    auto_named: bool = True


@dataclass(frozen=True)
class ValueUse:
    name: str
    span: Span


@dataclass(frozen=True)
class ApplyOp:
    """``results = layer(inputs, mask=..., initial_state=..., training=...)``."""

    layer: LayerCall
    inputs: tuple[ValueUse, ...]
    results: tuple[str, ...]
    span: Span
    mask: ValueUse | None = None
    initial_state: tuple[ValueUse, ...] | None = None
    initial_state_span: Span | None = None
    training: Literal | None = None
    in_pipe_middle: bool = False
    result_spans: tuple[Span, ...] = ()


@dataclass(frozen=True)
class MergeOp:
    """``result = fn(inputs..., axis=...)`` for the merge functions."""

    fn: str
    name: str
    inputs: tuple[ValueUse, ...]
    args: tuple[Arg, ...]
    results: tuple[str, ...]
    span: Span
    result_spans: tuple[Span, ...] = ()


@dataclass(frozen=True)
class DropMaskOp:
    input: ValueUse
    results: tuple[str, ...]
    span: Span
    result_spans: tuple[Span, ...] = ()


Op = ApplyOp | MergeOp | DropMaskOp


@dataclass(frozen=True)
class DimDecl:
    """A declared dimension: an int, a symbol, or None for ``_``."""

    value: int | str | None
    span: Span


@dataclass(frozen=True)
class InputDecl:
    name: str
    dtype: str
    dims: tuple[DimDecl, ...]
    span: Span
    name_span: Span
    dtype_span: Span
    is_mask: bool = False
    mask_words: tuple[tuple[str, Span], ...] = ()
    pad: tuple[Arg, ...] | None = None
    pad_span: Span | None = None
    masked: bool = False
    masked_span: Span | None = None


@dataclass(frozen=True)
class OutputDecl:
    name: str
    with_mask: bool
    span: Span


@dataclass(frozen=True)
class BlockInputCheck:
    """A typed input of a ``layer`` block, checked against the value passed at a call.

    ``ops[start:end]`` are the operations of that expansion: when the value does
    not fit the declared type, the checker reports it at the call and skips them.
    """

    block: str
    value: ValueUse
    decl: InputDecl
    start: int
    end: int
    #: which call (one number per expansion): symbols bind per call
    call: int = 0


@dataclass(frozen=True)
class ParamDecl:
    name: str
    type: str
    default: Literal | None
    span: Span


@dataclass(frozen=True)
class LayerBlock:
    """A ``layer Name(params) { ... }`` definition (its body is expanded at each call)."""

    name: str
    file: str
    params: tuple[ParamDecl, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    span: Span
    name_span: Span
    #: False when the definition has errors (its calls are then not expanded)
    ok: bool = True


@dataclass(frozen=True)
class DimExpr:
    """A dimension expression of a cell or extern declaration: ``4 * units``, ``T / parts``.

    ``op`` is ``int`` (value: int), ``name`` (value: str), or one of ``+ - * / //``
    over ``args``.
    """

    op: str
    value: int | str | None
    args: tuple[DimExpr, ...]
    span: Span

    def __str__(self) -> str:
        if self.op in ("int", "name"):
            return str(self.value)
        a, b = self.args
        inner = f"{a} {self.op} {b}"
        return inner if self.op in ("+", "-") else inner


@dataclass(frozen=True)
class CExpr:
    """A node of the cell equation language.

    ``op``: ``num`` (value: int | float), ``name`` (value: str), ``str``
    (value: str, only as einsum's equation), ``neg``, ``+ - * / @`` (two args),
    ``call`` (value: function name, args, kwargs), ``index`` (args[0] indexed by
    args[1:], each an ``at``, ``slice`` or ``ellipsis`` node), ``at`` (args[0]),
    ``slice`` (args: start, stop; a missing bound is a ``none`` node),
    ``ellipsis``, ``none``.
    """

    op: str
    value: object
    args: tuple[CExpr, ...]
    span: Span
    kwargs: tuple[tuple[str, CExpr], ...] = ()


@dataclass(frozen=True)
class CellTensor:
    """An ``input`` or ``state`` of a cell: per-step shape without the batch axis."""

    name: str
    dtype: str
    dims: tuple[DimExpr, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class CellWeight:
    name: str
    dims: tuple[DimExpr, ...]
    initializer: str
    span: Span
    name_span: Span
    init_span: Span | None = None


@dataclass(frozen=True)
class CellStmt:
    """``a, b = expr`` (``update=False``) or ``state <- expr`` (``update=True``)."""

    targets: tuple[str, ...]
    expr: CExpr
    update: bool
    span: Span
    target_spans: tuple[Span, ...]


@dataclass(frozen=True)
class CellDef:
    """A ``cell Name(params) { ... }`` definition.

    In equations a state's name reads the state at the start of the step; in
    ``output`` it names the updated state (see docs/custom.md).
    """

    name: str
    file: str
    params: tuple[ParamDecl, ...]
    inputs: tuple[CellTensor, ...]
    states: tuple[CellTensor, ...]
    weights: tuple[CellWeight, ...]
    body: tuple[CellStmt, ...]
    outputs: tuple[tuple[str, Span], ...]
    span: Span
    name_span: Span
    #: False when the definition has errors (a call then reports nothing more)
    ok: bool = True


@dataclass(frozen=True)
class MaskContract:
    """The declared mask behaviour of an extern layer (static ``compute_mask``).

    ``kind``: ``propagate`` (each output keeps the input's mask), ``generate``
    (``x != value`` on the input, optionally only ``if`` a bool parameter),
    ``consume`` (uses the mask, outputs none; ``required``: a mask must reach
    it), ``drop`` (ignores and removes it), ``split`` (the outputs are time
    slices, each with its slice of the mask), ``concat`` (the inputs are
    concatenated in time, and so are their masks).
    """

    kind: str
    span: Span
    required: bool = False
    value: float | None = None
    cond: str | None = None


@dataclass(frozen=True)
class ExternDef:
    """An ``extern layer Name(params) { clause; ... }`` declaration."""

    name: str
    file: str
    params: tuple[ParamDecl, ...]
    #: declared input and output types (dtype, dims incl. batch and time), if given
    in_types: tuple[tuple[str, tuple[DimExpr, ...], Span], ...]
    out_types: tuple[tuple[str, tuple[DimExpr, ...], Span], ...]
    #: ``shape: same``
    same_shape: bool
    #: ``outputs: n`` (default 1)
    outputs: DimExpr | None
    #: ``time: T / parts`` (``T`` is the input's time)
    time: DimExpr | None
    #: ``inputs: n`` (default 1)
    inputs: DimExpr | None
    mask: MaskContract
    weights: tuple[CellWeight, ...]
    span: Span
    name_span: Span
    ok: bool = True


@dataclass(frozen=True)
class Model:
    name: str
    inputs: tuple[InputDecl, ...]
    ops: tuple[Op, ...]
    outputs: tuple[OutputDecl, ...]
    span: Span
    name_span: Span
    #: user-visible names bound by statements (targets), with their spans
    bindings: tuple[tuple[str, Span], ...] = ()
    #: every name a statement refers to, including statements that failed to lower
    referenced: frozenset[str] = frozenset()
    #: typed inputs of the layer blocks expanded into this model
    block_checks: tuple[BlockInputCheck, ...] = ()
    #: values bound inside expanded layer blocks (not user names: never "unused")
    internal: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Program:
    file: str
    source: str
    models: tuple[Model, ...]
    #: the layer blocks of the file and of every file it uses
    blocks: tuple[LayerBlock, ...] = ()
    #: the text of every file of the program (display name -> text), this one included
    sources: Mapping[str, str] = field(default_factory=dict)
    #: the cell blocks and extern layers of the program (name -> definition)
    cells: Mapping[str, CellDef] = field(default_factory=dict)
    externs: Mapping[str, ExternDef] = field(default_factory=dict)
    #: ``use "python.module"`` declarations: modules that register extern implementations
    python_modules: tuple[str, ...] = ()
