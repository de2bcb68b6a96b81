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
