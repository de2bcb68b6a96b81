"""The torch emitter's cell blocks and extern layers (see /docs/backend-torch.md).

Kept apart from :mod:`seqdsl.emit.torch_backend`, which calls in at three places
(layer dispatch, the generated classes and the imports) and hands itself over as a
:class:`Host`, an interface this module owns: this module imports nothing of the
emitter (no import cycle). The run-time classes (``CellRNN``, ``Extern``) are real
code in :mod:`seqdsl.runtime.torch`:

* ``RNN(MyCell(...))`` and ``Bidirectional(RNN(MyCell(...)))``: each cell block
  used becomes a small ``nn.Module`` class, a subclass of the ``CellRNN`` run-time
  class, holding the cell's weights as parameters under their canonical names
  (``kernel``, ...) and a ``step`` method that is the cell's equations, one line per
  statement. ``CellRNN.forward`` loops over time in Python and applies the masked
  update with ``torch.where`` on per-step masks split off once before the loop (no
  host synchronisation, the same ops at every step whatever the mask). Work that
  depends on the inputs alone (``x @ kernel``) is hoisted out of the loop into a
  ``project`` method that runs once on the whole sequence.
* ``extern layer`` declarations: the ``Extern`` run-time class resolves the
  implementation when the module is made (``seqdsl.externs.get_extern``), holds the
  declared weights as parameters, and checks a call against the declaration in
  debug mode; the output masks are computed in ``forward`` from the declared
  contract.

This module only writes text; it imports no framework.
"""

from __future__ import annotations

import builtins
import keyword
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..catalogue import BoundLayer
from ..cells import BINARY, UNARY, BoundCell, bound_cell_of, const_value, infer_cell
from ..checker import CheckedModel, LayerInfo
from ..dims import Dim, sym
from ..ir import ApplyOp, CellDef, CExpr, DimExpr, ExternDef
from ..types import MaskKind, TensorType
from . import CodeWriter, Unsupported
from .standalone import ImportItem
from .torch_common import MODULE_ATTRS, class_name, runtime_names

__all__ = ["Custom", "Host", "emit_cell_rnn", "emit_extern", "cell_class_text"]


class Host(Protocol):
    """What these functions need of the emitter that calls them
    (:class:`seqdsl.emit.torch_backend._Emitter`): the interface this module owns, so
    that it imports nothing of the emitter above it."""

    model: CheckedModel
    source: str
    init: CodeWriter
    fwd: CodeWriter
    snippets: set[str]
    var: dict[str, str]
    mask: dict[str, str | None]
    stateful_layers: list[str]
    custom: Custom

    def fresh(self, base: str) -> str: ...

    def bind(self, value: str) -> str: ...

    def bind_mask(self, value: str) -> str: ...

    def attr(self, layer: str) -> str: ...

    def register(
        self, layer: str, fn: str, args: list[str], comment: str | None = None
    ) -> None: ...

    def freeze(self, layer: str) -> None: ...

    def tensor(self, value: str) -> TensorType: ...

    def bidirectional(
        self, name: str, cls: str, ctor: Callable[[str, bool], list[str]], merge: str
    ) -> None: ...

    def debug_generated(
        self, layer: str, what: str, mv: str, kind: MaskKind | None, in_t: TensorType, token: str
    ) -> None: ...

    @staticmethod
    def stmt(w: CodeWriter, code: str, comment: str = "") -> None: ...

    @staticmethod
    def comment(w: CodeWriter, text: str) -> None: ...

    @staticmethod
    def call(w: CodeWriter, lhs: str, fn: str, args: list[str], comment: str = "") -> None: ...


_KEEP_NAMES = frozenset(["self", "inputs", "states", "torch", "F", "nn", "np"])

#: attributes CellRNN sets or defines: no weight, state or parameter of a cell may take them
_CELLRNN_ATTRS = frozenset(
    ["name", "state_names", "state_shapes", "output_shapes", "return_sequences", "return_state",
     "go_backwards", "masked_output", "stateful", "step", "project", "reset_states"]
)  # fmt: skip
_EXTERN_ATTRS = frozenset(
    ["fn", "returns_mask", "kind", "name", "config", "declared", "declaration", "weight_names",
     "returned_mask", "check"]
)  # fmt: skip

_UNARY_EXPR = {
    "tanh": "torch.tanh",
    "sigmoid": "torch.sigmoid",
    "relu": "torch.relu",
    "exp": "torch.exp",
    "log": "torch.log",
    "abs": "torch.abs",
    "sqrt": "torch.sqrt",
    "square": "torch.square",
    "softplus": "softplus",  # Keras' exact softplus (a runtime snippet)
    "softsign": "F.softsign",
}
assert set(_UNARY_EXPR) == set(UNARY) and set(BINARY) == {"maximum", "minimum"}


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------
# what the emitter collects


@dataclass
class Custom:
    """What one model's emission collects for its cell blocks and extern layers."""

    #: class name -> its text, in order of first use
    classes: dict[str, str] = field(default_factory=dict)
    #: cell name -> [(class text, class name)] (one class per distinct text)
    by_cell: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


# --------------------------------------------------------------------------
# expressions


@dataclass(frozen=True)
class _X:
    """A translated expression: its text and precedence, batched or not, and its rank
    (per step for a batched value); `scalar` for a Python number."""

    text: str
    prec: int
    batched: bool
    rank: int
    scalar: bool = False
    states: bool = False  # depends on a state
    #: a binary operator chain at the top: its operators ("add", "mul" or "mat") and
    #: its operands as (operator, text), the first with ""; for wrapping long lines
    group: str = ""
    chain: tuple[tuple[str, str], ...] = ()
    #: a call of one argument at the top: (the text before "(", the argument)
    inner: tuple[str, _X] | None = None


_ATOM, _UNARY_P, _MUL, _ADD = 100, 80, 70, 60
_PREC = {"+": _ADD, "-": _ADD, "*": _MUL, "/": _MUL, "@": _MUL}


def _paren(x: _X, need: int) -> str:
    return x.text if x.prec >= need else f"({x.text})"


class _Translator:
    """Cell equations -> torch expressions over ``lead`` leading axes: 1 (the batch) for
    one step, 2 (batch and time) for a whole sequence (what ``project`` computes)."""

    def __init__(self, cell: _CellClass, lead: int) -> None:
        self.cell = cell
        self.lead = lead
        self.values: dict[str, _X] = {}  # cell name -> the value as a Python name

    def name(self, n: str) -> _X:
        v = self.values.get(n)
        if v is not None:
            return v
        c = self.cell
        if n in c.weight_rank:
            return _X(f"self.{n}", _ATOM, False, c.weight_rank[n])
        if n in c.scalars:  # a parameter or a dimension used as a number
            return _X(f"self.{c.attr(n)}", _ATOM, False, 0, scalar=True)
        raise Unsupported(
            c.cdef.name, f"`{n}` has no value in the torch translation"
        )  # pragma: no cover

    def axis(self, x: _X, call: CExpr, default: int = -1) -> int:
        ax = default
        for k, e in call.kwargs:
            if k == "axis":
                v = self.cell.const(e)
                assert isinstance(v, int)
                ax = v
        return ax + self.lead if (x.batched and ax >= 0) else ax

    def expand(self, x: _X, rank: int) -> _X:
        """A batched value with axes inserted after the leading ones up to ``rank``."""
        if not x.batched or x.rank >= rank:
            return x
        idx = ", ".join([":"] * self.lead + ["None"] * (rank - x.rank))
        return _X(f"{_paren(x, _ATOM)}[{idx}]", _ATOM, True, rank, states=x.states)

    def tensor(self, x: _X) -> str:
        """A Python number as a 0-d tensor (for torch functions that take tensors only)."""
        return f"torch.as_tensor({x.text}, dtype=torch.float64)" if x.scalar else x.text

    def expr(self, e: CExpr) -> _X:
        op = e.op
        if op == "num":
            v = e.value
            assert isinstance(v, (int, float))
            return _X(repr(v), _ATOM if v >= 0 else _UNARY_P, False, 0, scalar=True)
        if op == "name":
            return self.name(str(e.value))
        if op == "neg":
            a = self.expr(e.args[0])
            return _X(f"-{_paren(a, _UNARY_P)}", _UNARY_P, a.batched, a.rank, a.scalar, a.states)
        if op in ("+", "-", "*", "/"):
            a, b = (self.expr(x) for x in e.args)
            if a.batched and b.batched:
                r = max(a.rank, b.rank)
                a, b = self.expand(a, r), self.expand(b, r)
            p = _PREC[op]
            group = "add" if p == _ADD else "mul"
            left = _paren(a, p) if a.group != "mat" else f"({a.text})"  # `(m @ w) * 2`
            right = _paren(b, p + 1)
            chain = a.chain if a.group == group else (("", left),)
            return _X(f"{left} {op} {right}", p, a.batched or b.batched, max(a.rank, b.rank),
                      a.scalar and b.scalar, a.states or b.states, group,
                      (*chain, (op, right)))  # fmt: skip
        if op == "@":
            a, b = (self.expr(x) for x in e.args)
            if a.batched and b.batched:
                r = max(a.rank, b.rank)
                a, b = self.expand(a, r), self.expand(b, r)
                rank = r
            else:
                rank = a.rank
            left = a.text if a.prec > _MUL or a.group == "mat" else f"({a.text})"  # `(r * h) @ w`
            right = _paren(b, _MUL + 1)
            chain = a.chain if a.group == "mat" else (("", left),)
            return _X(f"{left} @ {right}", _MUL, a.batched or b.batched, rank, False,
                      a.states or b.states, "mat", (*chain, ("@", right)))  # fmt: skip
        if op == "index":
            return self.index(e)
        if op == "call":
            return self.call(e)
        raise Unsupported(
            self.cell.cdef.name, f"no torch translation of `{op}`"
        )  # pragma: no cover

    def index(self, e: CExpr) -> _X:
        base = self.expr(e.args[0])
        items = e.args[1:]
        parts: list[str | tuple[str, str]] = []
        if base.batched and (not items or items[0].op != "ellipsis"):
            parts = [":"] * self.lead
        dropped = 0
        for it in items:
            if it.op == "ellipsis":
                parts.append("...")
            elif it.op == "at":
                parts.append(self.cell.const_text(it.args[0]))
                dropped += 1
            else:
                lo, hi = ("" if b.op == "none" else self.cell.const_text(b) for b in it.args)
                parts.append((lo, hi))
        # ruff (black) spaces the colons of a subscript with a bound that is not a name
        # or a number: `z[:, 0 : self.units]`, `z[:, 0:4]`
        bounds = [b for p in parts if isinstance(p, tuple) for b in p if b]
        spaced = any(not (b.isidentifier() or b.lstrip("-").isdigit()) for b in bounds)
        texts = [p if isinstance(p, str) else _slice(*p, spaced) for p in parts]
        text = f"{_paren(base, _ATOM)}[{', '.join(texts)}]"
        return _X(text, _ATOM, base.batched, base.rank - dropped, False, base.states)

    def call(self, e: CExpr) -> _X:
        fn = str(e.value)
        if fn == "einsum":
            return self.einsum(e)
        args = [self.expr(a) for a in e.args]
        states = any(a.states for a in args)
        if fn in _UNARY_EXPR:
            (a,) = args
            f = _UNARY_EXPR[fn]
            if f == "softplus":
                self.cell.snippets.add("softplus")
            elif f.startswith("F."):
                self.cell.snippets.add("F")  # torch.nn.functional
            inner = (f, a) if not a.scalar else None
            return _X(f"{f}({self.tensor(a)})", _ATOM, a.batched, a.rank, False, states,
                      inner=inner)  # fmt: skip
        if fn in ("maximum", "minimum"):
            a, b = args
            if a.scalar and not b.scalar:
                a, b = b, a
            batched, rank = a.batched or b.batched, max(a.rank, b.rank)
            if b.scalar and not a.scalar:
                bound = "min" if fn == "maximum" else "max"
                return _X(f"torch.clamp({a.text}, {bound}={b.text})", _ATOM, batched, rank,
                          False, states)  # fmt: skip
            if a.batched and b.batched:
                a, b = self.expand(a, rank), self.expand(b, rank)
            text = f"torch.{fn}({self.tensor(a)}, {self.tensor(b)})"
            return _X(text, _ATOM, batched, rank, False, states)
        if fn == "softmax":
            (a,) = args
            return _X(f"torch.softmax({a.text}, dim={self.axis(a, e)})", _ATOM, a.batched, a.rank,
                      False, states)  # fmt: skip
        if fn in ("sum", "mean"):
            (a,) = args
            return _X(f"{_paren(a, _ATOM)}.{fn}({self.axis(a, e)})", _ATOM, a.batched, a.rank - 1,
                      False, states)  # fmt: skip
        if fn == "concat":
            a = args[0]
            text = f"torch.cat([{', '.join(x.text for x in args)}], dim={self.axis(a, e)})"
            return _X(text, _ATOM, True, a.rank, False, states)
        raise Unsupported(
            self.cell.cdef.name, f"no torch translation of `{fn}`"
        )  # pragma: no cover

    def einsum(self, e: CExpr) -> _X:
        eq = str(e.args[0].value).replace(" ", "")
        args = [self.expr(a) for a in e.args[1:]]
        lhs, rhs = eq.split("->")
        subs = lhs.split(",")
        batched = any(a.batched for a in args)
        if self.lead == 2 and batched:  # a time letter after the batch letter
            t = next(c for c in "tsuvwxyzabcdefghijklmnopqrTSUVWXYZ" if c not in eq)
            subs = [s[0] + t + s[1:] if a.batched else s for s, a in zip(subs, args, strict=True)]
            rhs = rhs[0] + t + rhs[1:]
        operands = ", ".join(self.tensor(a) for a in args)
        text = f"torch.einsum({_q(','.join(subs) + '->' + rhs)}, {operands})"
        rank = len(rhs) - self.lead if batched else len(rhs)
        return _X(text, _ATOM, batched, rank, False, any(a.states for a in args))


# --------------------------------------------------------------------------
# one cell block's class


def _slice(lo: str, hi: str, spaced: bool) -> str:
    if not spaced or not (lo or hi):
        return f"{lo}:{hi}"
    return f"{lo} : {hi}" if lo and hi else (f"{lo} :" if lo else f": {hi}")


def _dimexpr_text(e: DimExpr, names: Mapping[str, str], prec: int = 0) -> str:
    if e.op == "int":
        return str(e.value)
    if e.op == "name":
        return names[str(e.value)]
    p = _ADD if e.op in ("+", "-") else _MUL
    a = _dimexpr_text(e.args[0], names, p)
    b = _dimexpr_text(e.args[1], names, p + 1)
    op = "//" if e.op in ("/", "//") else e.op
    text = f"{a} {op} {b}"
    return f"({text})" if p < prec else text


def _dim_text(d: Dim, names: Mapping[str, str]) -> str | None:
    """A symbolic dimension as Python over the constructor's arguments, or None."""
    parts: list[str] = []
    for atom, coef in d.terms:
        if atom.op == "sym":
            if atom.name not in names:
                return None
            a = names[atom.name]
        else:
            assert atom.arg is not None
            inner = _dim_text(atom.arg, names)
            if inner is None:
                return None
            a = (
                f"(({inner}) // {atom.div})"
                if atom.op == "floor"
                else f"(-(-({inner}) // {atom.div}))"
            )
        if coef.denominator != 1:
            return None
        parts.append(a if coef == 1 else f"{coef.numerator} * {a}")
    if d.const.denominator != 1:
        return None
    if d.const or not parts:
        parts.append(str(int(d.const)))
    return " + ".join(parts).replace("+ -", "- ")


class _CellClass:
    """The text of one cell block's class, for one binding (uses whose text is the same
    share the class)."""

    def __init__(self, bc: BoundCell, cls: str, reserved: frozenset[str]) -> None:
        self.bc = bc
        self.cdef: CellDef = bc.cdef
        self.cls = cls
        self.snippets: set[str] = set()
        cdef = self.cdef
        self.weight_rank = {w.name: len(w.shape) for w in bc.weights}
        self.state_names = [s for s, _ in bc.states]
        # parameters and the dimension names the inputs bind
        self.dim_names: list[str] = [p.name for p in cdef.params]
        for t in cdef.inputs:
            for d in t.dims:
                if d.op == "name" and isinstance(d.value, str) and d.value not in self.dim_names:
                    self.dim_names.append(d.value)
        self.scalars = {n for n in self.dim_names if self._numeric(n)}
        taken = set(reserved) | set(self.weight_rank) | set(self.state_names)
        for w in self.weight_rank:
            if w in reserved or not w.isidentifier():
                raise Unsupported(cdef.name, f"a cell weight cannot be named `{w}` on torch "
                                  "(an attribute of the layer module): rename it")  # fmt: skip
        self.attrs: dict[str, str] = {}
        for n in self.dim_names:
            a = n
            while a in taken or keyword.iskeyword(a):
                a += "_"
            taken.add(a)
            self.attrs[n] = a
        self.args: dict[str, str] = {}
        arg_taken = {"self", "name", "options", "torch", "nn", "F", "np"}
        for n in self.dim_names:
            a = n
            while a in arg_taken or keyword.iskeyword(a):
                a += "_"
            arg_taken.add(a)
            self.args[n] = a
        self.used_attrs: set[str] = set()
        self.ctor_args: list[str] = []

    def _numeric(self, n: str) -> bool:
        v = self.bc.params.get(n, self.bc.dims.get(n))
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def attr(self, n: str) -> str:
        self.used_attrs.add(n)
        return self.attrs[n]

    def const(self, e: CExpr) -> int | float:
        v = const_value(e, {**self.bc.dims, **self.bc.params})
        assert v is not None
        return v

    def const_text(self, e: CExpr, prec: int = 0) -> str:
        """A constant expression (slice bound, index) over the cell's parameters."""
        if e.op == "num":
            return repr(e.value)
        if e.op == "name":
            return f"self.{self.attr(str(e.value))}"
        if e.op == "neg":
            return "-" + self.const_text(e.args[0], _UNARY_P)
        p = _PREC[e.op]
        text = f"{self.const_text(e.args[0], p)} {e.op} {self.const_text(e.args[1], p + 1)}"
        return f"({text})" if p < prec else text

    # ------------------------------------------------------------------ the text
    def text(self, source: str) -> str:
        cdef, bc = self.cdef, self.bc
        step = self.step_lines()
        w = CodeWriter()
        with w.block(f"class {self.cls}(CellRNN):"):
            sig = ", ".join(f"{p.name}: {p.type}" for p in cdef.params)
            head = (f'"""One step of cell {cdef.name}({sig}); CellRNN runs it over time. '
                    f"Defined in {source}, line {cdef.span.line}.")  # fmt: skip
            for line in textwrap.wrap(head, 92):
                w(line)
            w()
            ins = ", ".join(f"{t.name} [{', '.join(self._decl(t.dims))}]" for t in cdef.inputs)
            w(f"inputs: {ins}")
            sts = ", ".join(f"{t.name} [{', '.join(self._decl(t.dims))}]" for t in cdef.states)
            w(f"states: {sts}")
            outs = ", ".join(n + (" (updated)" if n in self.state_names else "")
                             for n, _ in cdef.outputs)  # fmt: skip
            w(f"outputs: {outs}")
            w('"""')
            w()
            init = CodeWriter()
            init._level = 2
            states = ", ".join(f"{_q(t.name)}: {_tuple(self._dims(t.dims))}" for t in cdef.states)
            symbolic = self.symbolic_outputs()
            outputs = ", ".join(_tuple(self._out_shape(s, symbolic.get(n))) for n, s in bc.outputs)
            sup = ["name", f"{{{states}}}", f"[{outputs}]", "**options"]
            if len(f"        super().__init__({', '.join(sup)})") <= 100:
                init(f"super().__init__({', '.join(sup)})")
            else:
                init("super().__init__(")
                for a in sup:
                    init(f"    {a},")
                init(")")
            for n in self.dim_names:
                if n in self.used_attrs:
                    init(f"self.{self.attrs[n]} = {self.args[n]}")
            for cw in cdef.weights:
                init(
                    f"self.{cw.name} = nn.Parameter(torch.zeros({', '.join(self._dims(cw.dims))}))"
                )
            self.ctor_args = [n for n in self.dim_names if self._arg_used(n, init.lines)]
            used = [self.args[n] for n in self.ctor_args]
            w(f"def __init__(self, name, {', '.join([*used, '**options'])}):")
            w.lines += init.lines
            w.lines += step
        return w.text()

    def _arg_used(self, n: str, lines: Sequence[str]) -> bool:
        return any(_mentions(line, self.args[n]) for line in lines)

    def _decl(self, dims: Sequence[DimExpr]) -> list[str]:
        return [_dimexpr_text(d, {n: n for n in self.dim_names}) for d in dims]

    def _dims(self, dims: Sequence[DimExpr]) -> list[str]:
        return [_dimexpr_text(d, self.args) for d in dims]

    def _out_shape(self, shape: tuple[int, ...], sym_shape: tuple[Dim, ...] | None) -> list[str]:
        """An output's shape over the constructor's arguments where it can be, else numbers."""
        if sym_shape is not None and len(sym_shape) == len(shape):
            texts = [_dim_text(d, self.args) for d in sym_shape]
            if all(t is not None for t in texts):
                return [t for t in texts if t is not None]
        return [str(n) for n in shape]

    def symbolic_outputs(self) -> dict[str, tuple[Dim, ...]]:
        """The outputs' shapes at the definition (sizes as symbols)."""
        cdef = self.cdef
        dims: dict[str, Dim] = {}
        for n in self.dim_names:
            p = next((p for p in cdef.params if p.name == n), None)
            if p is None or p.type == "int":
                dims[n] = sym(n)
        scalars = {p.name for p in cdef.params if p.type == "float"}
        _, types, _ = infer_cell(cdef, dims, scalars)
        out: dict[str, tuple[Dim, ...]] = {}
        for name, _span in cdef.outputs:
            v = types.get("<-" + name) if "<-" + name in types else types.get(name)
            if v is not None:
                out[name] = v.shape
        return out

    def step_lines(self) -> list[str]:
        """`project` (what depends on the inputs alone, for every step at once) and `step`."""
        cdef = self.cdef
        taken = set(_KEEP_NAMES) | set(runtime_names())

        def fresh(base: str) -> str:
            n = base
            while n in taken or keyword.iskeyword(n) or hasattr(builtins, n):
                n += "_"
            taken.add(n)
            return n

        seq = _Translator(self, 2)  # over [B, T, ...]: in `project`
        one = _Translator(self, 1)  # over [B, ...]: in `step`
        pyname: dict[str, str] = {}
        for t in cdef.inputs:
            pyname[t.name] = fresh(t.name)
            for tr in (seq, one):
                tr.values[t.name] = _X(pyname[t.name], _ATOM, True, len(t.dims))
        for s, shape in self.bc.states:
            pyname[s] = fresh(s)
            one.values[s] = _X(pyname[s], _ATOM, True, len(shape), states=True)
        # `stay`: what cannot be computed before the loop (reads a state, or a local
        # without a batch axis, which `project` does not compute)
        stay: dict[str, bool] = {t.name: False for t in cdef.inputs}
        stay.update({s: True for s in self.state_names})
        proj: list[str] = []  # the lines of `project`
        reads: list[str] = []  # the sequences it returns (besides inputs), in order
        body: list[str] = []  # the lines of `step`
        new_state: dict[str, str] = {}

        def hoist(e: CExpr) -> CExpr:
            """``e`` with its largest sub-expressions on the inputs alone computed in
            `project` and read in the step by name."""
            if e.op in ("num", "name", "str", "none", "ellipsis", "at", "slice"):
                return e
            if not _reads(e, stay) and self.batched(e) and _worth(e):
                x = seq.expr(e)
                n = fresh(_slug(e))
                proj.extend(_assign(n, x, 8))
                reads.append(n)
                one.values["#" + n] = _X(n, _ATOM, True, x.rank)
                return CExpr("name", "#" + n, (), e.span)
            args = tuple(hoist(a) for a in e.args)
            kwargs = tuple((k, hoist(v)) for k, v in e.kwargs)
            return CExpr(e.op, e.value, args, e.span, kwargs)

        for st in cdef.body:
            split = st.expr.op == "call" and st.expr.value == "split"
            whole = not st.update and not _reads(st.expr, stay) and self.batched(st.expr)
            tr, lines = (seq, proj) if whole else (one, body)
            e = st.expr if whole else hoist(st.expr)
            if st.update:
                (s,) = st.targets
                new_state[s] = fresh(f"{s}_next")
                body += _assign(new_state[s], one.expr(e), 8)
                continue
            names = [fresh(n) for n in st.targets]
            if split:
                x = tr.expr(e.args[0])
                lhs = ", ".join(names) if len(names) > 1 else names[0] + ","
                lines.append(f"{lhs} = {_paren(x, _ATOM)}.chunk({len(names)}, dim={tr.axis(x, e)})")
            else:
                x = tr.expr(e)
                lines += _assign(names[0], x, 8)
            for cell_name, n in zip(st.targets, names, strict=True):
                pyname[cell_name] = n
                stay[cell_name] = not whole
                v = _X(n, _ATOM, x.batched, x.rank, x.scalar and not split, x.states)
                one.values[cell_name] = v
                if whole:
                    seq.values[cell_name] = v
                    reads.append(n)
        outputs = [new_state.get(n) or one.values[n].text for n, _ in cdef.outputs]
        returned = [*outputs, *(new_state[s] for s in self.state_names)]
        inputs = [pyname[t.name] for t in cdef.inputs]
        if proj:  # the step reads the inputs it uses directly, then the projections
            text = "\n".join([*body, *returned])
            inputs = [n for n in inputs if _mentions(text, n)]
        w = CodeWriter()
        w._level = 1
        if proj:
            w()
            with w.block("def project(self, inputs):"):
                w(f'"""What {cdef.name} computes from its inputs alone: every step at once."""')
                w(f"{_unpack([pyname[t.name] for t in cdef.inputs])} = inputs")
                for line in proj:
                    w(line)
                w(f"return [{', '.join([*inputs, *reads])}]")
        w()
        with w.block("def step(self, inputs, states):"):
            if proj and not inputs and not reads:  # pragma: no cover - nothing read per step
                w("del inputs")
            else:
                w(f"{_unpack([*inputs, *reads])} = inputs")
            w(f"{_unpack([pyname[s] for s in self.state_names])} = states")
            for line in body:
                w(line)
            w(
                f"return [{', '.join(outputs)}], [{', '.join(new_state[s] for s in self.state_names)}]"
            )
        return w.lines

    def batched(self, e: CExpr) -> bool:
        """Whether an expression derives from an input or a state (a per-step value)."""
        if e.op == "name":
            n = str(e.value)
            return n in self.bc.locals or n.startswith("#")
        return any(self.batched(a) for a in e.args)


def _assign(name: str, x: _X, indent: int) -> list[str]:
    """``name = x`` as ruff formats it: on one line when it fits in 100 columns, else the
    operator chain at the top one operand a line in parentheses (or inside a call of one
    argument). Longer operands are left long (correct, if not formatted)."""

    def fits(lines: list[str]) -> bool:
        return all(indent + len(line) <= 100 for line in lines)

    def chain(x: _X, pad: str) -> list[str]:
        return [f"{pad}{op + ' ' if op else ''}{t}" for op, t in x.chain]

    one = [f"{name} = {x.text}"]
    if fits(one):
        return one
    if x.chain:
        lines = [f"{name} = (", *chain(x, "    "), ")"]
        if fits(lines):
            return lines
    if x.inner is not None:
        f, arg = x.inner
        lines = [f"{name} = {f}(", f"    {arg.text}", ")"]
        if fits(lines):
            return lines
        if arg.chain:
            lines = [f"{name} = {f}(", *chain(arg, "    "), ")"]
            if fits(lines):
                return lines
    return one


def _tuple(items: Sequence[str]) -> str:
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


def _unpack(names: Sequence[str]) -> str:
    return ", ".join(names) if len(names) > 1 else f"({names[0]},)"


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w.#]){re.escape(name)}(?!\w)", text) is not None


def _reads(e: CExpr, stay: Mapping[str, bool]) -> bool:
    """Whether ``e`` reads a name marked in ``stay`` (a local without a batch axis counts)."""
    if e.op == "name":
        return stay.get(str(e.value), False)
    return any(_reads(a, stay) for a in e.args) or any(_reads(v, stay) for _, v in e.kwargs)


def _worth(e: CExpr) -> bool:
    """Whether computing ``e`` before the loop saves work in it: it computes something
    (not a name or a subscript of one)."""
    if e.op == "name":
        return False
    if e.op == "index":
        return _worth(e.args[0])
    return True


def _slug(e: CExpr) -> str:
    """A name for a hoisted expression: `x @ kernel` -> `x_kernel`."""
    names: list[str] = []

    def walk(x: CExpr) -> None:
        if x.op == "name" and not str(x.value).startswith("#"):
            names.append(str(x.value))
        for a in x.args:
            walk(a)

    walk(e)
    return "_".join(dict.fromkeys(names))[:32] or "projected"


# --------------------------------------------------------------------------
# the emitter's entry points


def cell_class_text(e: Host, bc: BoundCell) -> tuple[str, list[str]]:
    """The class for ``bc`` (its text added to the module once; uses with the same text
    share it) and the constructor's keyword arguments for this use."""
    custom = e.custom
    reserved = MODULE_ATTRS | _CELLRNN_ATTRS
    base = bc.cdef.name
    cell = _CellClass(bc, "__CLASS__", reserved)
    text = cell.text(e.source)
    e.snippets |= cell.snippets
    args = [f"{cell.args[n]}={_value(bc, n)}" for n in cell.dim_names if n in cell.ctor_args]
    for known_text, known_cls in custom.by_cell.get(base, []):
        if known_text == text:
            return known_cls, args
    taken = set(runtime_names()) | set(custom.classes) | {class_name(e.model)}
    cls, k = base, 2
    while cls in taken:
        cls, k = f"{base}_{k}", k + 1
    custom.by_cell.setdefault(base, []).append((text, cls))
    custom.classes[cls] = text.replace("class __CLASS__(", f"class {cls}(", 1)
    return cls, args


def emit_cell_rnn(e: Host, op: ApplyOp, info: LayerInfo) -> None:
    """``RNN(MyCell(...))`` or ``Bidirectional(RNN(MyCell(...)))``."""
    cfg = info.config
    name = info.name
    bi = op.layer.kind == "Bidirectional"
    inner = cfg["layer"] if bi else None
    flags = inner.config if isinstance(inner, BoundLayer) else cfg
    bc = bound_cell_of(info, e.model.types)
    cls, cell_args = cell_class_text(e, bc)
    e.snippets.add("CellRNN")
    ins = [e.var[u.name] for u in op.inputs]
    # the layer's mask: the explicit one, else the AND of the inputs' masks
    mask: str | None
    if op.mask is not None:
        mask = e.var[op.mask.name]
    else:
        present = list(dict.fromkeys(m for u in op.inputs if (m := e.mask[u.name]) is not None))
        if len(present) > 1:
            mask = e.fresh(f"{name}_mask")
            e.stmt(e.fwd, f"{mask} = {' & '.join(present)}",
                   "a cell reads every input at each step: valid where all are")  # fmt: skip
        else:
            mask = present[0] if present else None
    go_back = bool(flags["go_backwards"])
    stateful = bool(flags["stateful"])
    carry = flags["masked_output"] == "carry"
    opts: list[str] = []
    for flag in ("return_sequences", "return_state"):
        if flags[flag]:
            opts.append(f"{flag}=True")
    if carry and mask is not None:
        opts.append('masked_output="carry"')
    if stateful:
        for s, _ in bc.states:  # buffers named after the states
            if s in MODULE_ATTRS | _CELLRNN_ATTRS | {w.name for w in bc.weights}:
                raise Unsupported(name, f"a stateful cell's state cannot be named `{s}` on torch "
                                  "(an attribute of the layer module): rename it")  # fmt: skip
        t0 = e.tensor(op.inputs[0].name)
        batch = t0.batch.value if t0.batch is not None else None
        opts.append(f"stateful_batch={batch}")
        e.stateful_layers.append(name)

    def ctor(layer_name: str, backwards: bool) -> list[str]:
        o = list(opts)
        if backwards:
            o.insert(0, "go_backwards=True")
        return [_q(layer_name), *cell_args, *o]

    if bi:  # the built-in layers' wrapper, from seqdsl.runtime.torch
        e.bidirectional(name, cls, ctor, str(cfg["merge_mode"]))
    else:
        e.register(name, cls, ctor(name, go_back))
    args = list(ins)
    if mask is not None:
        args.append(f"mask={mask}")
    if op.initial_state is not None:
        args.append(f"initial_state=[{', '.join(e.var[s.name] for s in op.initial_state)}]")
    what = f"Bidirectional(RNN({bc.cdef.name}))" if bi else f"RNN({bc.cdef.name})"
    how = "a Python loop over time (CellRNN)"
    if mask is not None:
        how += "; a masked step keeps the states (torch.where, masks split once)"
    e.comment(e.fwd, f"{what}: {how}")
    outs = [e.bind(r) for r in op.results]
    lhs = outs[0] if len(outs) == 1 else ", ".join(outs)
    e.call(e.fwd, f"{lhs} = ", e.attr(name), args)
    for r in op.results:
        e.mask[r] = None
    if mask is None or not flags["return_sequences"]:
        return
    flipped: str | None = None
    for r in op.results:
        if e.tensor(r).mask is None:
            continue
        if go_back and not bi:
            if flipped is None:
                flipped = e.bind_mask(r)
                e.fwd(f"{flipped} = {mask}.flip(1)  # outputs in reversed time order")
            e.mask[r] = flipped
        else:
            e.mask[r] = mask


def _value(bc: BoundCell, n: str) -> str:
    v = bc.params.get(n, bc.dims.get(n))
    if isinstance(v, str):
        return _q(v)
    return repr(v)


# --------------------------------------------------------------------------
# extern layers


def _declaration(edef: ExternDef) -> str:
    mk = edef.mask
    contract = mk.kind
    if mk.kind == "generate":
        v = mk.value if mk.value is not None else 0
        contract = f"generate(x != {int(v) if float(v).is_integer() else v})"
        if mk.cond:
            contract += f" if {mk.cond}"
    elif mk.kind == "consume" and mk.required:
        contract = "consume(required)"
    return f"extern layer {edef.name} at {edef.file}:{edef.span.line}, mask: {contract}"


def _literal(v: object) -> str:
    if isinstance(v, str):
        return _q(v)
    if isinstance(v, tuple):
        return "(" + ", ".join(_literal(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v)


def emit_extern(e: Host, op: ApplyOp, info: LayerInfo) -> None:
    """An extern layer: its call, the output masks of its contract, the debug check."""
    kind = op.layer.kind
    edef = e.model.externs[kind]
    name = info.name
    reserved = MODULE_ATTRS | _EXTERN_ATTRS
    for wspec in info.weights:
        if wspec.name in reserved or not wspec.name.isidentifier():
            raise Unsupported(name, f"an extern weight cannot be named `{wspec.name}` on torch "
                              "(an attribute of the layer module): rename it")  # fmt: skip
    e.snippets.add("Extern")
    cfg = info.config
    config = ", ".join(f"{_q(p.name)}: {_literal(cfg.get(p.name))}" for p in edef.params)
    weights = ", ".join(f"{_q(w.name)}: {_literal(tuple(w.shape))}" for w in info.weights)
    declared = []
    for r in op.results:
        t = e.tensor(r)
        shape = ", ".join("None" if d is None or d.value is None else str(d.value) for d in t.shape)
        declared.append(f"({_q(t.dtype)}, ({shape}{',' if t.rank == 1 else ''}))")
    e.comment(e.init, f"extern layer {kind}: its torch implementation, looked up now")
    e.call(e.init, f"{e.attr(name)} = ", "Extern", [
        _q(kind), _q(name), f"weights={{{weights}}}", f"config={{{config}}}",
        f"declared=[{', '.join(declared)}]", f"declaration={_q(_declaration(edef))}",
        "externs=externs",
    ])  # fmt: skip
    e.freeze(name)
    # the call
    ins = [e.var[u.name] for u in op.inputs]
    in_masks: list[str | None] = [e.mask[u.name] for u in op.inputs]
    if op.mask is not None:
        in_masks = [e.var[op.mask.name]] * len(op.inputs)
    args = list(ins)
    if len(in_masks) == 1:
        if in_masks[0] is not None:
            args.append(f"mask={in_masks[0]}")
    elif any(m is not None for m in in_masks):
        args.append(f"mask=({', '.join(str(m) for m in in_masks)})")
    training = "self.training" if op.training is None else str(bool(op.training.value))
    args.append(f"training={training}")
    n = len(op.results)
    mk = edef.mask
    active = mk.cond is None or bool(cfg.get(mk.cond))
    contract = mk.kind if active else "none"
    e.comment(e.fwd, f"extern layer {kind} (mask: {contract})")
    if n == 1:
        out = e.bind(op.results[0])
        outs = [out]
    else:
        out = e.fresh("outputs")
        outs = []
    e.call(e.fwd, f"{out} = ", e.attr(name), args)
    # the output masks of the contract
    first = next((m for m in in_masks if m is not None), None)
    x0 = ins[0]
    t_in = e.tensor(op.inputs[0].name)
    masks: list[str | None] = [None] * n
    lit = ""
    wants = [e.tensor(r).mask is not None for r in op.results]
    if contract == "propagate":
        masks = [first if w else None for w in wants]
    elif contract == "split" and first is not None:
        ms = [e.fresh(f"{r}_mask") for r in op.results]
        lhs = ", ".join(ms) if n > 1 else ms[0] + ","
        e.stmt(e.fwd, f"{lhs} = {first}.chunk({n}, dim=1)", "mask: split, each part its slice")
        masks = [m if w else None for m, w in zip(ms, wants, strict=True)]
    elif contract == "concat" and first is not None:
        if None in in_masks:
            e.snippets.add("all_valid")
        parts = [
            m if m is not None else f"all_valid({x})" for x, m in zip(ins, in_masks, strict=True)
        ]
        mv = e.fresh(f"{op.results[0]}_mask")
        e.stmt(
            e.fwd, f"{mv} = torch.cat([{', '.join(parts)}], dim=1)", "mask: concat, joined in time"
        )
        masks = [mv]
    elif contract == "generate" and any(wants):
        assert mk.value is not None
        v = mk.value
        dtype = t_in.dtype
        lit = (
            str(int(v))
            if dtype in ("i32", "i64", "bool") and float(v).is_integer()
            else repr(float(v))
        )
        mv = e.fresh(f"{op.results[0]}_mask")
        expr = f"{x0} != {lit}" if t_in.rank == 2 else f"({x0} != {lit}).flatten(2).any(-1)"
        e.stmt(e.fwd, f"{mv} = {expr}", f"{kind}: mask: generate(x != {lit})")
        masks = [mv if w else None for w in wants]
    for r, m in zip(op.results, masks, strict=True):
        if m is not None:
            e.mask[r] = m
        else:
            e.mask[r] = None
    e.fwd(f"if self.debug:  # the call against the declaration of {kind}")
    e.fwd._level += 1
    e.call(e.fwd, "", f"{e.attr(name)}.check", [out, f"[{', '.join(str(m) for m in masks)}]"])
    e.fwd._level -= 1
    if contract == "generate" and masks[0] is not None:
        e.debug_generated(name, f"{kind}, mask: generate(x != {lit})", masks[0],
                          e.tensor(op.results[0]).mask, t_in, lit)  # fmt: skip
    if n > 1:
        outs = [e.bind(r) for r in op.results]
        e.fwd(f"{', '.join(outs)} = {out}")
        for r, m in zip(op.results, masks, strict=True):
            e.mask[r] = m


def extern_imports(e: Host) -> list[ImportItem]:
    """The imports of a model with extern layers: the `use`d Python modules (they
    register the implementations; the runtime's Extern imports seqdsl.externs)."""
    note = "# noqa: F401 (registers extern implementations)"
    return [ImportItem(m, comment=note) for m in e.model.python_modules]


def docstring_lines(e: Host, lines: list[str]) -> list[str]:
    """The module docstring, told about extern layers and cell blocks."""
    model = e.model
    out = []
    for line in lines:
        out.append(line)
        if model.externs and line.startswith("Run-time code: seqdsl.runtime.torch"):
            mods = ", ".join(model.python_modules) or "none"
            out.append(f"Extern layers: seqdsl.externs and the `use`d modules ({mods}).")
        if e.custom.classes and line == "the comments say.":
            out.append(
                "Cell blocks run their equations step by step in a loop over time (CellRNN)."
            )
    return out
