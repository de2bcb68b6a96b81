"""Cell blocks and extern layers: their type rules, and their catalogue entries.

A ``cell`` is checked twice with one function, :func:`infer_cell`:

* at its definition, with its integer parameters and the input dimensions it
  names (``in``) as symbols, so a shape error in an equation is reported once,
  on the equation, whatever the call;
* at each use inside ``RNN(...)``, with the parameters bound and the input
  dimensions taken from the value passed, giving the concrete state, output
  and weight shapes (:class:`BoundCell`) that the catalogue's recurrent rule,
  the reference interpreter and the emitters read.

The equation language works on per-step values: a value is *batched* (it
derives from an input or a state, shape ``[B, *shape]``) or not (a weight, a
number). Shapes are written without the batch axis; axes and subscripts count
from the first non-batch axis; ``einsum`` equations name the batch axis
explicitly (``"bij,ijkl->bkl"``, as in Keras' NestedCell).

An ``extern layer`` becomes a :class:`~seqdsl.layerspec.LayerSpec` whose rule
is its declaration: types, the number of outputs, the time rule and the mask
contract. The checker trusts it; built models can verify it (debug mode).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from .diagnostics import Diagnostic, did_you_mean
from .dims import Dim, divisible, exact_div, sym
from .ir import CellDef, CExpr, DimExpr, ExternDef, ParamDecl, Span
from .layerspec import (
    REQUIRED,
    BoundLayer,
    CallInfo,
    KernelChoice,
    LayerSpec,
    Param,
    RuleContext,
    RuleError,
    WeightSpec,
    concat_time_kind,
    pad_mask_kind,
)
from .types import FLOAT_DTYPES, MaskKind, TensorType, fmt_shape

__all__ = [
    "UNARY",
    "BINARY",
    "REDUCTIONS",
    "FUNCTIONS",
    "BoundCell",
    "CellTypeError",
    "check_cell",
    "bind_cell",
    "cell_spec",
    "extern_spec",
    "check_extern",
    "bound_cell_of",
    "names_read",
    "is_cell_layer",
    "eval_dim",
    "const_value",
]

#: elementwise functions of one value
UNARY = ("tanh", "sigmoid", "relu", "exp", "log", "abs", "sqrt", "square", "softplus", "softsign")
#: elementwise functions of two values (broadcast like ``+``)
BINARY = ("maximum", "minimum")
#: reductions over one axis (``axis=-1`` by default; the axis is removed)
REDUCTIONS = ("sum", "mean")
FUNCTIONS = (*UNARY, *BINARY, *REDUCTIONS, "softmax", "concat", "split", "einsum")

_B = "__batch__"  # the symbol the batch axis gets inside einsum


_DEFAULT_HINTS = {
    "SEQ310": "shapes here are per step, without the batch axis; see docs/custom.md for the "
    "rules of `@`, einsum, broadcasting and subscripts",
    "SEQ205": "see docs/custom.md for the functions of the equation language and their arguments",
    "SEQ203": "see docs/custom.md for the equation language",
}


class CellTypeError(Exception):
    def __init__(self, code: str, message: str, span: Span, hint: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.span = span
        self.hint = hint or _DEFAULT_HINTS.get(code, "see docs/custom.md")


@dataclass(frozen=True)
class _V:
    """The type of a per-step value: batched or not, and the shape without the batch."""

    batched: bool
    shape: tuple[Dim, ...]


def _fmt(v: _V) -> str:
    return (
        ("[B, " if v.batched and v.shape else "[B" if v.batched else "[")
        + ", ".join(str(d) for d in v.shape)
        + "]"
    )


# ---------------------------------------------------------------------------- dimensions


def eval_dim(e: DimExpr, env: Mapping[str, Dim]) -> Dim:
    """A declared dimension under ``env`` (names -> dims). Raises CellTypeError."""
    if e.op == "int":
        assert isinstance(e.value, int)
        return Dim.of(e.value)
    if e.op == "name":
        assert isinstance(e.value, str)
        d = env.get(e.value)
        if d is None:
            dym = did_you_mean(e.value, list(env))
            raise CellTypeError(
                "SEQ101",
                f"`{e.value}` is not a dimension here",
                e.span,
                f"did you mean `{dym}`?"
                if dym
                else "a dimension is an integer, an int parameter, or a name bound by an input's shape",
            )
        return d
    a, b = (eval_dim(x, env) for x in e.args)
    if e.op == "+":
        return a + b
    if e.op == "-":
        return a - b
    if e.op == "*":
        if a.value is not None:
            return b * a.value
        if b.value is not None:
            return a * b.value
        return sym(f"({a} * {b})")
    k = b.value
    if k is None:
        return sym(f"({a} {e.op} {b})")
    if k <= 0:
        raise CellTypeError(
            "SEQ203", f"division of a dimension by {k}", e.span, "divide by a positive integer"
        )
    if e.op == "//":
        return a.floordiv(k)
    q, _exact = exact_div(a, k)
    if divisible(a, k) is False:
        raise CellTypeError(
            "SEQ402",
            f"`{a}` is not divisible by {k}",
            e.span,
            "use `//` for a floor division, or choose sizes that divide",
        )
    return q


def _dims(es: Sequence[DimExpr], env: Mapping[str, Dim]) -> tuple[Dim, ...]:
    return tuple(eval_dim(e, env) for e in es)


def const_value(e: CExpr, env: Mapping[str, object]) -> int | float | None:
    """The value of a constant expression (numbers, numeric parameters, + - * / //), or None."""
    if e.op == "num":
        assert isinstance(e.value, (int, float))
        return e.value
    if e.op == "name":
        v = env.get(str(e.value))
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        return v
    if e.op == "neg":
        x = const_value(e.args[0], env)
        return None if x is None else -x
    if e.op in ("+", "-", "*", "/") and len(e.args) == 2:
        a, b = (const_value(x, env) for x in e.args)
        if a is None or b is None:
            return None
        if e.op == "+":
            return a + b
        if e.op == "-":
            return a - b
        if e.op == "*":
            return a * b
        if b == 0:
            return None
        q = a / b
        return int(q) if isinstance(a, int) and isinstance(b, int) and a % b == 0 else q
    return None


def _const_dim(e: CExpr, env: Mapping[str, Dim]) -> Dim | None:
    """A slice bound or split count as a dimension (symbolic at the definition)."""
    if e.op == "num":
        return Dim.of(e.value) if isinstance(e.value, int) else None
    if e.op == "name":
        return env.get(str(e.value))
    if e.op == "neg":
        x = _const_dim(e.args[0], env)
        return None if x is None else -x
    if e.op in ("+", "-", "*") and len(e.args) == 2:
        a, b = (_const_dim(x, env) for x in e.args)
        if a is None or b is None:
            return None
        if e.op == "+":
            return a + b
        if e.op == "-":
            return a - b
        if a.value is not None:
            return b * a.value
        if b.value is not None:
            return a * b.value
        return sym(f"({a} * {b})")
    return None


# ---------------------------------------------------------------------------- equations


@dataclass
class _Env:
    dims: dict[str, Dim]
    scalars: set[str]  # float/int parameters usable as numbers
    values: dict[str, _V | None]  # None: its statement had an error (no cascade)
    kinds: dict[str, str]  # name -> input/state/weight/local/param


def _same_dim(a: Dim, b: Dim) -> bool:
    return a == b


def _broadcast(a: _V, b: _V, span: Span, what: str) -> _V:
    # an unbatched value of higher rank would broadcast against the batch axis
    for u, v in ((a, b), (b, a)):
        if v.batched and not u.batched and len(u.shape) > len(v.shape):
            raise CellTypeError(
                "SEQ310",
                f"{what}: a weight of shape {_fmt(u)} against a per-step value {_fmt(v)}",
                span,
                "the weight has more axes than the value; contract it with `@` or `einsum`",
            )
    n = max(len(a.shape), len(b.shape))
    pa = (Dim.of(1),) * (n - len(a.shape)) + a.shape
    pb = (Dim.of(1),) * (n - len(b.shape)) + b.shape
    out: list[Dim] = []
    for x, y in zip(pa, pb, strict=True):
        if _same_dim(x, y) or y.value == 1:
            out.append(x)
        elif x.value == 1:
            out.append(y)
        else:
            raise CellTypeError(
                "SEQ310",
                f"{what}: shapes {_fmt(a)} and {_fmt(b)} do not broadcast ({x} vs {y})",
                span,
                "elementwise operations need equal sizes (or 1) axis by axis, from the last",
            )
    return _V(a.batched or b.batched, tuple(out))


def _axis(call: CExpr, v: _V, env: Mapping[str, Dim], default: int = -1) -> int:
    """The (unbatched) axis a call names, normalised to 0..rank-1."""
    ax: int = default
    for k, e in call.kwargs:
        if k == "axis":
            c = _const_dim(e, env)
            if c is None or c.value is None:
                raise CellTypeError(
                    "SEQ203", "`axis=` must be an integer", e.span, "e.g. `axis=-1`"
                )
            ax = c.value
    r = len(v.shape)
    if not -r <= ax < r:
        raise CellTypeError(
            "SEQ203",
            f"axis {ax} is out of range for a value of shape {_fmt(v)}",
            call.span,
            "axes count from the first axis after the batch (0), or from the end (-1)",
        )
    return ax % r


def _kwargs_only(call: CExpr, allowed: Sequence[str]) -> None:
    for k, e in call.kwargs:
        if k not in allowed:
            raise CellTypeError(
                "SEQ201",
                f"`{call.value}` has no argument `{k}`",
                e.span,
                f"its keyword arguments: {', '.join(allowed)}"
                if allowed
                else "it takes no keyword arguments",
            )


def _nargs(call: CExpr, lo: int, hi: int | None = None) -> None:
    n = len(call.args)
    hi = lo if hi is None else hi
    if not lo <= n <= hi:
        want = str(lo) if lo == hi else f"{lo} or more" if hi > 99 else f"{lo} to {hi}"
        raise CellTypeError(
            "SEQ205", f"`{call.value}` takes {want} argument(s), got {n}", call.span, None
        )


def _infer(e: CExpr, env: _Env) -> _V | None:
    op = e.op
    if op == "num":
        return _V(False, ())
    if op == "str":
        raise CellTypeError(
            "SEQ310",
            "a string is only einsum's equation",
            e.span,
            'e.g. `einsum("bi,ij->bj", x, w)`',
        )
    if op == "name":
        n = str(e.value)
        if n in env.values:
            return env.values[n]
        if n in env.scalars:
            return _V(False, ())
        if n in env.dims:
            return _V(False, ())
        dym = did_you_mean(n, [*env.values, *env.scalars])
        raise CellTypeError(
            "SEQ101",
            f"`{n}` is not defined in this cell",
            e.span,
            f"did you mean `{dym}`?"
            if dym
            else "equations read inputs, states, weights, parameters and earlier results",
        )
    if op == "neg":
        return _infer(e.args[0], env)
    if op in ("+", "-", "*", "/"):
        a, b = (_infer(x, env) for x in e.args)
        if a is None or b is None:
            return None
        return _broadcast(a, b, e.span, f"`{op}`")
    if op == "@":
        a, b = (_infer(x, env) for x in e.args)
        if a is None or b is None:
            return None
        return _matmul(a, b, e.span)
    if op == "index":
        base = _infer(e.args[0], env)
        if base is None:
            return None
        return _index(base, e, env)
    if op == "call":
        return _call(e, env)
    raise CellTypeError("SEQ310", "this expression has no value", e.span, None)  # pragma: no cover


def _matmul(a: _V, b: _V, span: Span) -> _V:
    if not a.shape or not b.shape:
        raise CellTypeError(
            "SEQ310", "`@` needs values with at least one axis", span, "multiply a number with `*`"
        )
    if not b.batched and len(b.shape) == 2:
        k, m = b.shape
        if not _same_dim(a.shape[-1], k):
            raise CellTypeError(
                "SEQ310",
                f"`@`: {_fmt(a)} @ {_fmt(b)}: the last axis of the left ({a.shape[-1]}) "
                f"must match the first of the right ({k})",
                span,
                "check the weight's declared shape, or transpose with einsum",
            )
        return _V(a.batched, (*a.shape[:-1], m))
    if a.batched and b.batched and len(a.shape) >= 2 and len(b.shape) >= 2:
        if not _same_dim(a.shape[-1], b.shape[-2]):
            raise CellTypeError(
                "SEQ310",
                f"`@`: {_fmt(a)} @ {_fmt(b)}: inner sizes {a.shape[-1]} and {b.shape[-2]} differ",
                span,
                None,
            )
        lead = _broadcast(_V(True, a.shape[:-2]), _V(True, b.shape[:-2]), span, "`@`").shape
        return _V(True, (*lead, a.shape[-2], b.shape[-1]))
    raise CellTypeError(
        "SEQ310",
        f"`@` of {_fmt(a)} and {_fmt(b)} is not supported",
        span,
        "`@` multiplies a value by a 2-D weight (`x @ kernel`) or two per-step matrices; "
        'use `einsum` for anything else, e.g. `einsum("bij,ijkl->bkl", x, w)`',
    )


def _index(base: _V, e: CExpr, env: _Env) -> _V:
    items = e.args[1:]
    n_ell = sum(1 for it in items if it.op == "ellipsis")
    if n_ell > 1:
        raise CellTypeError("SEQ310", "only one `...` in a subscript", e.span, None)
    axes = [it for it in items if it.op != "ellipsis"]
    if len(axes) > len(base.shape):
        raise CellTypeError(
            "SEQ310",
            f"{len(axes)} subscripts on a value of shape {_fmt(base)}",
            e.span,
            "subscripts count the axes after the batch axis",
        )
    # place the subscripts on axes
    if n_ell:
        i = next(k for k, it in enumerate(items) if it.op == "ellipsis")
        before, after = items[:i], items[i + 1 :]
        placed = list(before) + [None] * (len(base.shape) - len(before) - len(after)) + list(after)
    else:
        placed = list(items) + [None] * (len(base.shape) - len(items))
    out: list[Dim] = []
    for d, it in zip(base.shape, placed, strict=True):
        if it is None:
            out.append(d)
            continue
        if it.op == "at":
            c = _const_dim(it.args[0], env.dims)
            if c is None or (c.value is not None and not 0 <= c.value < (d.value or 1 << 62)):
                raise CellTypeError(
                    "SEQ310", f"index `{_text(it.args[0])}` is not a valid position on an axis of size {d}", it.span,
                    "indices are integers (or int parameters) from 0",
                )  # fmt: skip
            continue
        lo_e, hi_e = it.args
        lo = Dim.of(0) if lo_e.op == "none" else _const_dim(lo_e, env.dims)
        hi = d if hi_e.op == "none" else _const_dim(hi_e, env.dims)
        if lo is None or hi is None:
            raise CellTypeError(
                "SEQ310",
                "slice bounds must be integers or int parameters (`z[0:units]`)",
                it.span,
                None,
            )
        ln = hi - lo
        if ln.value is not None and ln.value <= 0:
            raise CellTypeError("SEQ310", f"the slice `{_text(it)}` is empty", it.span, None)
        if (lo.value is not None and lo.value < 0) or (
            hi.value is not None and d.value is not None and hi.value > d.value
        ):
            raise CellTypeError(
                "SEQ310", f"the slice `{_text(it)}` is outside an axis of size {d}", it.span, None
            )
        out.append(ln)
    return _V(base.batched, tuple(out))


def _text(e: CExpr) -> str:
    if e.op == "num" or e.op == "name":
        return str(e.value)
    if e.op == "neg":
        return "-" + _text(e.args[0])
    if e.op == "slice":
        a, b = e.args
        return ("" if a.op == "none" else _text(a)) + ":" + ("" if b.op == "none" else _text(b))
    if e.op == "at":
        return _text(e.args[0])
    if len(e.args) == 2 and e.op in "+-*/":
        return f"{_text(e.args[0])} {e.op} {_text(e.args[1])}"
    return "..."


def _call(e: CExpr, env: _Env) -> _V | None:
    fn = str(e.value)
    if fn == "split":
        raise CellTypeError(
            "SEQ310",
            "`split` gives several values: assign them, e.g. `i, f, c, o = split(z, 4)`",
            e.span,
            None,
        )
    if fn == "einsum":
        return _einsum(e, env)
    if fn not in FUNCTIONS:
        dym = did_you_mean(fn, list(FUNCTIONS))
        raise CellTypeError(
            "SEQ103",
            f"unknown function `{fn}` in a cell equation",
            e.span,
            f"did you mean `{dym}`?" if dym else "functions: " + ", ".join(FUNCTIONS),
        )
    args = [_infer(a, env) for a in e.args]
    if any(a is None for a in args):
        return None
    vs = [a for a in args if a is not None]
    if fn in UNARY:
        _nargs(e, 1)
        _kwargs_only(e, ())
        return vs[0]
    if fn in BINARY:
        _nargs(e, 2)
        _kwargs_only(e, ())
        return _broadcast(vs[0], vs[1], e.span, f"`{fn}`")
    if fn == "softmax":
        _nargs(e, 1)
        _kwargs_only(e, ("axis",))
        if not vs[0].shape:
            raise CellTypeError("SEQ310", "softmax of a number", e.span, None)
        _axis(e, vs[0], env.dims)
        return vs[0]
    if fn in REDUCTIONS:
        _nargs(e, 1)
        _kwargs_only(e, ("axis",))
        v = vs[0]
        if not v.shape:
            raise CellTypeError("SEQ310", f"{fn} of a number", e.span, None)
        ax = _axis(e, v, env.dims)
        return _V(v.batched, v.shape[:ax] + v.shape[ax + 1 :])
    assert fn == "concat"
    _nargs(e, 2, 999)
    _kwargs_only(e, ("axis",))
    first = vs[0]
    if not all(v.batched for v in vs):
        raise CellTypeError(
            "SEQ310",
            "concat joins per-step values (inputs, states and what derives from them)",
            e.span,
            None,
        )
    if any(len(v.shape) != len(first.shape) for v in vs) or not first.shape:
        raise CellTypeError(
            "SEQ310",
            "concat needs values of one rank: " + ", ".join(_fmt(v) for v in vs),
            e.span,
            None,
        )
    ax = _axis(e, first, env.dims)
    total = Dim.of(0)
    for v in vs:
        for i, (x, y) in enumerate(zip(v.shape, first.shape, strict=True)):
            if i != ax and not _same_dim(x, y):
                raise CellTypeError(
                    "SEQ310",
                    f"concat: shapes {', '.join(_fmt(v) for v in vs)} differ off the joined axis",
                    e.span,
                    None,
                )
        total = total + v.shape[ax]
    return _V(True, first.shape[:ax] + (total,) + first.shape[ax + 1 :])


def _einsum(e: CExpr, env: _Env) -> _V | None:
    if not e.args or e.args[0].op != "str":
        raise CellTypeError("SEQ310", "einsum's first argument is its equation in quotes", e.span,
                            'e.g. `einsum("bij,ijkl->bkl", x, w)`')  # fmt: skip
    eq = str(e.args[0].value).replace(" ", "")
    _kwargs_only(e, ())
    vals = [_infer(a, env) for a in e.args[1:]]
    if any(v is None for v in vals):
        return None
    vs = [v for v in vals if v is not None]
    if "->" not in eq or "." in eq:
        raise CellTypeError("SEQ310", "einsum equations here name every axis and the result: `\"bi,ij->bj\"`",
                            e.args[0].span, None)  # fmt: skip
    lhs, rhs = eq.split("->")
    subs = lhs.split(",")
    if len(subs) != len(vs):
        raise CellTypeError(
            "SEQ310",
            f"einsum equation has {len(subs)} operand(s), got {len(vs)} value(s)",
            e.span,
            None,
        )
    sizes: dict[str, Dim] = {}
    batch_letter: str | None = None
    for s, v in zip(subs, vs, strict=True):
        full = ((Dim.of(-1),) if v.batched else ()) + v.shape  # -1 marks the batch
        if len(s) != len(full) or not s.isalpha():
            raise CellTypeError(
                "SEQ310",
                f"einsum operand `{s}` does not match a value of shape {_fmt(v)}"
                + (" (the batch axis counts: name it too)" if v.batched else ""),
                e.args[0].span,
                None,
            )
        for ch, d in zip(s, full, strict=True):
            if d.value == -1:
                if batch_letter not in (None, ch) or s[0] != ch:
                    raise CellTypeError("SEQ310", "einsum: the batch axis must be the first letter of every per-step operand, the same letter",
                                        e.args[0].span, None)  # fmt: skip
                batch_letter = ch
            prev = sizes.get(ch)
            if prev is not None and not _same_dim(prev, d):
                raise CellTypeError(
                    "SEQ310", f"einsum: axis `{ch}` has sizes {prev} and {d}", e.args[0].span, None
                )
            sizes[ch] = d
    if batch_letter is not None and not rhs.startswith(batch_letter):
        raise CellTypeError("SEQ310", f"einsum: the result must keep the batch axis `{batch_letter}` first",
                            e.args[0].span, None)  # fmt: skip
    for ch in rhs:
        if ch not in sizes:
            raise CellTypeError(
                "SEQ310", f"einsum: result axis `{ch}` is on no operand", e.args[0].span, None
            )
    shape = (
        tuple(sizes[ch] for ch in rhs[1:] if batch_letter)
        if batch_letter
        else tuple(sizes[c] for c in rhs)
    )
    return _V(batch_letter is not None, shape)


# ---------------------------------------------------------------------------- whole cells


@dataclass(frozen=True)
class BoundCell:
    """A cell at one use: parameters bound, every shape concrete (no batch axis)."""

    cdef: CellDef
    #: bound parameter values (ints, floats, bools, strings)
    params: Mapping[str, object]
    #: every dimension name (int parameters and names bound by the inputs) -> size
    dims: Mapping[str, int]
    dtype: str
    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    states: tuple[tuple[str, tuple[int, ...]], ...]
    #: outputs: (name, shape); a state's name stands for its updated value
    outputs: tuple[tuple[str, tuple[int, ...]], ...]
    weights: tuple[WeightSpec, ...]
    #: every local of the body -> its shape (batched values; weights are in ``weights``)
    locals: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def axis(self, call: CExpr, default: int = -1) -> int:
        """The axis a call (concat/split/softmax/sum/mean) names, as written: counted from
        the first axis after the batch axis (negative: from the end)."""
        for k, e in call.kwargs:
            if k == "axis":
                v = const_value(e, self.params)
                assert isinstance(v, int)
                default = v
        return default

    def const(self, e: CExpr) -> int | float:
        v = const_value(e, {**self.dims, **self.params})
        assert v is not None
        return v


def _cell_env(cdef: CellDef, dims: dict[str, Dim], scalars: set[str]) -> _Env:
    env = _Env(dims, scalars, {}, {})
    for p in cdef.params:
        env.kinds[p.name] = "param"
    return env


def infer_cell(
    cdef: CellDef, dims: dict[str, Dim], scalars: set[str]
) -> tuple[list[CellTypeError], dict[str, _V | None], dict[str, tuple[Dim, ...]]]:
    """Type the body of a cell under ``dims``. Returns the errors, the type of every
    name, and the shapes of the weights."""
    errors: list[CellTypeError] = []
    env = _cell_env(cdef, dims, scalars)
    wshapes: dict[str, tuple[Dim, ...]] = {}
    for what, tensors in (("input", cdef.inputs), ("state", cdef.states)):
        for t in tensors:
            try:
                env.values[t.name] = _V(True, _dims(t.dims, dims))
            except CellTypeError as err:
                errors.append(err)
                env.values[t.name] = None
            env.kinds[t.name] = what
    for w in cdef.weights:
        try:
            wshapes[w.name] = _dims(w.dims, dims)
            env.values[w.name] = _V(False, wshapes[w.name])
        except CellTypeError as err:
            errors.append(err)
            env.values[w.name] = None
        env.kinds[w.name] = "weight"
    updated: dict[str, _V | None] = {}
    for st in cdef.body:
        try:
            if st.expr.op == "call" and st.expr.value == "split":
                vals = _split(st.expr, env, len(st.targets))
            else:
                v = _infer(st.expr, env)
                if len(st.targets) != 1:
                    raise CellTypeError(
                        "SEQ306",
                        f"{len(st.targets)} names on the left, but the expression gives one value",
                        st.span,
                        "only `split(x, n)` gives several values",
                    )
                vals = [v]
        except CellTypeError as err:
            errors.append(err)
            vals = [None] * len(st.targets)
        if st.update:
            (name,) = st.targets
            state = env.values.get(name)
            v = vals[0]
            if v is not None and state is not None and (not v.batched or v.shape != state.shape):
                errors.append(
                    CellTypeError(
                        "SEQ311",
                        f"state `{name}` is declared {_fmt(state)}, but the update gives {_fmt(v)}",
                        st.span,
                        "the new value of a state has the state's declared shape (and a batch axis)",
                    )
                )
            updated[name] = v
        else:
            for n, v in zip(st.targets, vals, strict=True):
                env.values[n] = v
                env.kinds[n] = "local"
    for name, span in cdef.outputs:
        if env.kinds.get(name) == "state":
            continue  # its update is checked against the declaration above
        v = env.values.get(name)
        if v is not None and not v.batched:
            errors.append(
                CellTypeError(
                    "SEQ311",
                    f"output `{name}` does not depend on the inputs or states (shape {_fmt(v)})",
                    span,
                    "a cell outputs per-step values",
                )
            )
    out = dict(env.values)
    for k, v in updated.items():
        out["<-" + k] = v
    return errors, out, wshapes


def _split(e: CExpr, env: _Env, n_targets: int) -> list[_V | None]:
    _kwargs_only(e, ("axis",))
    _nargs(e, 2)
    v = _infer(e.args[0], env)
    cnt = _const_dim(e.args[1], env.dims)
    if cnt is None or cnt.value is None or cnt.value < 1:
        raise CellTypeError(
            "SEQ203",
            "split's count must be a positive integer",
            e.args[1].span,
            "e.g. `split(z, 4)`",
        )
    n = cnt.value
    if n != n_targets:
        raise CellTypeError(
            "SEQ306",
            f"split(..., {n}) gives {n} values, but {n_targets} name(s) are assigned",
            e.span,
            f"assign {n} names, e.g. `{', '.join('abcdefgh'[: min(n, 8)])} = split(...)`",
        )
    if v is None:
        return [None] * n
    if not v.shape:
        raise CellTypeError("SEQ310", "split of a number", e.span, None)
    ax = _axis(e, v, env.dims)
    d = v.shape[ax]
    if divisible(d, n) is False:
        raise CellTypeError("SEQ310", f"split: an axis of size {d} does not split into {n} equal parts", e.span,
                            None)  # fmt: skip
    part, _ = exact_div(d, n)
    piece = _V(v.batched, v.shape[:ax] + (part,) + v.shape[ax + 1 :])
    return [piece] * n


def _definition_dims(cdef: CellDef) -> tuple[dict[str, Dim], set[str]]:
    dims: dict[str, Dim] = {}
    scalars: set[str] = set()
    for p in cdef.params:
        if p.type == "int":
            dims[p.name] = sym(p.name)
        elif p.type == "float":
            scalars.add(p.name)
    for t in cdef.inputs:
        for d in t.dims:
            if d.op == "name" and isinstance(d.value, str) and d.value not in dims:
                dims[d.value] = sym(d.value)
    return dims, scalars


def check_cell(cdef: CellDef) -> list[Diagnostic]:
    """The definition check: every equation typed with symbolic sizes."""
    dims, scalars = _definition_dims(cdef)
    errors, _, _ = infer_cell(cdef, dims, scalars)
    return [Diagnostic.make(e.code, e.message, e.span, e.hint) for e in errors]


def bind_cell(cdef: CellDef, cfg: Mapping[str, object], ins: Sequence[TensorType]) -> BoundCell:
    """The cell at a call: raises RuleError when the values passed do not fit."""
    if len(ins) != len(cdef.inputs):
        raise RuleError(
            "SEQ205",
            f"cell {cdef.name} takes {len(cdef.inputs)} input(s) per step, got {len(ins)}",
            "pass one sequence per cell input, in the order of its `input` declarations: "
            + ", ".join(t.name for t in cdef.inputs),
            where="input",
        )
    dims: dict[str, Dim] = {}
    params: dict[str, object] = {}
    for p in cdef.params:
        v = cfg.get(p.name)
        params[p.name] = v
        if p.type == "int" and isinstance(v, int):
            dims[p.name] = Dim.of(v)
    dtype = ins[0].dtype
    for i, (t, decl) in enumerate(zip(ins, cdef.inputs, strict=True)):
        if t.dtype not in FLOAT_DTYPES or t.dtype != dtype:
            raise RuleError(
                "SEQ301",
                f"cell input `{decl.name}` needs float steps of one dtype, got {t.dtype}",
                "integer ids need an `Embedding` first",
                where="input",
                index=i,
            )
        step = t.shape[2:]
        if t.rank < 3 or len(step) != len(decl.dims):
            raise RuleError(
                "SEQ303",
                f"cell input `{decl.name}` is declared {decl.dtype}[{', '.join(map(str, decl.dims))}] per step, "
                f"so the sequence must be [B, T, {', '.join(map(str, decl.dims))}]; got {fmt_shape(t.shape)}",
                "check the layers before it",
                where="input",
                index=i,
            )
        for d_decl, d in zip(decl.dims, step, strict=True):
            if d is None or d.value is None:
                raise RuleError(
                    "SEQ309",
                    f"cell input `{decl.name}` needs known sizes after the time axis, got {fmt_shape(t.shape)}",
                    "declare them as integers on the model's input",
                    where="input",
                    index=i,
                )
            if d_decl.op == "name" and isinstance(d_decl.value, str) and d_decl.value not in dims:
                dims[d_decl.value] = d
                continue
            try:
                want = eval_dim(d_decl, dims)
            except CellTypeError as err:
                raise RuleError(err.code, err.message, err.hint, where="input", index=i) from None
            if want != d:
                raise RuleError(
                    "SEQ302",
                    f"cell input `{decl.name}` has size {want} on an axis where the value has {d}",
                    f"the cell declares `{decl.name}: {decl.dtype}[{', '.join(map(str, decl.dims))}]`",
                    where="input",
                    index=i,
                )
    scalars = {p.name for p in cdef.params if p.type == "float"}
    errors, types, wshapes = infer_cell(cdef, dims, scalars)
    if errors:
        e = errors[0]
        raise RuleError(e.code, f"in cell {cdef.name} at {e.span}: {e.message}", e.hint)

    def concrete(shape: Sequence[Dim], what: str) -> tuple[int, ...]:
        out = []
        for d in shape:
            if d.value is None or d.value < 1:
                raise RuleError("SEQ309", f"cell {cdef.name}: {what} has size {d}, not a positive integer",
                                "give the cell's size parameters positive values")  # fmt: skip
            out.append(d.value)
        return tuple(out)

    def shape_of(name: str) -> tuple[int, ...]:
        v = types.get(name)
        assert v is not None
        return concrete(v.shape, f"`{name}`")

    states = tuple((s.name, shape_of(s.name)) for s in cdef.states)
    outputs = []
    for name, _ in cdef.outputs:
        v = (
            types.get("<-" + name)
            if name in dict(states) and "<-" + name in types
            else types.get(name)
        )
        assert v is not None
        outputs.append((name, concrete(v.shape, f"output `{name}`")))
    weights = tuple(
        WeightSpec(w.name, concrete(wshapes[w.name], f"weight `{w.name}`"), w.initializer)
        for w in cdef.weights
    )
    locals_ = {
        n: concrete(v.shape, f"`{n}`")
        for n, v in types.items()
        if v is not None and v.batched and not n.startswith("<-")
    }
    return BoundCell(
        cdef=cdef,
        params=params,
        dims={k: d.value for k, d in dims.items() if d.value is not None},
        dtype=dtype,
        inputs=tuple((t.name, shape_of(t.name)) for t in cdef.inputs),
        states=states,
        outputs=tuple(outputs),
        weights=weights,
        locals=locals_,
    )


# ---------------------------------------------------------------------------- catalogue entries


def _params(decls: Sequence[ParamDecl]) -> tuple[Param, ...]:
    out = []
    for p in decls:
        default: object = REQUIRED if p.default is None else p.default.value
        out.append(Param(p.name, p.type, default, lo=1 if p.type == "int" else None))
    return (*out, Param("name", "str", None), Param("trainable", "bool", True))


def cell_spec(cdef: CellDef) -> LayerSpec:
    def rule(
        cfg: Mapping[str, object], ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
    ) -> list[TensorType]:
        raise RuleError(
            "SEQ203",
            f"{cdef.name} is a cell, not a layer",
            f"run it over a sequence with `RNN({cdef.name}(...))`",
        )

    return LayerSpec(
        name=cdef.name,
        category="cell",
        params=_params(cdef.params),
        rule=rule,
        weights=lambda cfg, ins: [],
        mask_rule="none",
        padding_invariant=True,
        doc=f"cell block defined in {cdef.file}",
    )


def check_extern(edef: ExternDef) -> list[Diagnostic]:
    """Declaration-level consistency of an extern (beyond what lowering checks)."""
    out: list[Diagnostic] = []
    k = edef.mask.kind
    if edef.time is not None and k in ("propagate",):
        out.append(
            Diagnostic.make(
                "SEQ014",
                f"extern layer `{edef.name}` changes the time axis but declares `mask: propagate`",
                edef.mask.span,
                "a mask cannot follow a time change as it is: declare `mask: split`, `mask: drop` "
                "or `mask: consume`",
            )
        )
    if (
        not edef.out_types
        and not edef.same_shape
        and edef.time is None
        and k not in ("concat", "split")
    ):
        out.append(
            Diagnostic.make(
                "SEQ014",
                f"extern layer `{edef.name}` declares no output type",
                edef.name_span,
                "add `shape: same` (the output has the input's type), `time: ...`, or `out: f32[B, T, n]`",
            )
        )
    return out


def _int_env(edef: ExternDef, cfg: Mapping[str, object]) -> dict[str, Dim]:
    return {
        p.name: Dim.of(v)
        for p in edef.params
        if p.type == "int" and isinstance(v := cfg.get(p.name), int)
    }


#: the most results an extern layer may declare (`outputs:`), as TemporalSplit's `parts`
MAX_EXTERN_OUTPUTS = 1024


def extern_spec(edef: ExternDef) -> LayerSpec:
    """The catalogue entry an extern declaration stands for."""

    def n_outputs(cfg: Mapping[str, object]) -> int:
        if edef.outputs is None:
            return 1
        d = eval_dim(edef.outputs, _int_env(edef, cfg))
        if d.value is None or d.value < 1:
            raise RuleError("SEQ207", f"{edef.name} declares `outputs: {edef.outputs}` = {d}",
                            "the number of outputs must be a positive integer")  # fmt: skip
        if d.value > MAX_EXTERN_OUTPUTS:
            shown = (
                f"{d.value:,}"
                if d.value < 10**30
                else f"about 10^{int(d.value.bit_length() * 0.30103)}"
            )
            raise RuleError("SEQ207", f"{edef.name} declares `outputs: {edef.outputs}` = {shown}; a layer "
                            f"gives at most {MAX_EXTERN_OUTPUTS} results",
                            "as for TemporalSplit(parts), at most 1024 parts")  # fmt: skip
        return d.value

    def bind_inputs(cfg: Mapping[str, object], ins: Sequence[TensorType]) -> dict[str, Dim]:
        env = _int_env(edef, cfg)
        for i, (t, (dtype, dims, _sp)) in enumerate(zip(ins, edef.in_types, strict=False)):
            if t.dtype != dtype:
                raise RuleError("SEQ301", f"{edef.name} declares its input {i + 1} as {dtype}, got {t.dtype}",
                                "convert the value, or change the declaration", where="input", index=i)  # fmt: skip
            if len(dims) != t.rank:
                raise RuleError("SEQ303", f"{edef.name} declares its input {i + 1} with {len(dims)} axes, "
                                f"got {t.dtype}{fmt_shape(t.shape)}", "check the layers before it",
                                where="input", index=i)  # fmt: skip
            for de, d in zip(dims, t.shape, strict=True):
                if de.op == "name" and isinstance(de.value, str) and de.value not in env:
                    if d is not None:
                        env[de.value] = d
                    continue
                try:
                    want = eval_dim(de, env)
                except CellTypeError as err:
                    raise RuleError(err.code, err.message, err.hint) from None
                if d is not None and want != d:
                    raise RuleError("SEQ302", f"{edef.name} declares size {want} where its input {i + 1} "
                                    f"has {d}", "check the declaration's `in:` type", where="input",
                                    index=i)  # fmt: skip
        if ins:
            t = ins[0]
            env.setdefault("B", t.batch or sym("B"))
            if t.rank >= 2 and t.time is not None:
                env.setdefault("T", t.time)
        return env

    def rule(
        cfg: Mapping[str, object], ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
    ) -> list[TensorType]:
        env = bind_inputs(cfg, ins)
        n = n_outputs(cfg)
        t = ins[0]
        mk = edef.mask
        active = mk.cond is None or bool(cfg.get(mk.cond))
        kind = mk.kind if active else "none"
        # the mask that arrives
        in_mask = t.mask
        if len(ins) > 1 and kind != "concat":
            masks = [x.mask for x in ins if x.mask is not None]
            in_mask = masks[0] if masks else None
        if in_mask is not None and kind in ("none", "generate"):
            what = "makes its own mask" if kind == "generate" else "declares no mask behaviour"
            raise RuleError(
                "SEQ501",
                f"{edef.name} {what}, and the mask its input carries ({in_mask}) would be dropped",
                f"declare what {edef.name} does with a mask (`mask: propagate`, `consume`, `drop`, ...), "
                "or remove the mask before it with `drop_mask`",
            )
        if kind == "consume" and mk.required and all(x.mask is None for x in ins):
            raise RuleError(
                "SEQ502",
                f"{edef.name} requires a mask (`mask: consume(required)`), and none reaches it",
                "mask the padding upstream (`Embedding(..., mask_zero=true)`, `Masking(...)`, a `masked` "
                "input), or pass one: `" + edef.name + "(...)(x, mask=m)`",
            )
        if kind == "split":
            if t.rank < 2:
                raise RuleError("SEQ303", f"{edef.name} splits a sequence `[B, T, ...]`, got "
                                f"{t.dtype}{fmt_shape(t.shape)}", "check the layers before it",
                                where="input")  # fmt: skip
            part = ctx.exact(t.time, n, edef.name)
            outs = []
            for i in range(n):
                m = in_mask
                if (
                    m is not None
                ):  # only the part holding the row's start (post) or end (pre) is nonempty
                    keep = (m.side == "post" and i == 0) or (m.side == "pre" and i == n - 1)
                    m = replace(m, nonempty=m.nonempty and keep)
                outs.append(TensorType(t.dtype, (t.batch, part, *t.shape[2:]), m, t.padded_from))
        elif kind == "concat":
            kinds = concat_time_kind(ins)
            total: Dim | None = Dim.of(0)
            for x in ins:
                total = None if total is None or x.time is None else total + x.time
            outs = [TensorType(t.dtype, (t.batch, total, *t.shape[2:]), kinds, None)]
        else:
            if edef.out_types:
                outs = []
                for dtype, dims, _sp in edef.out_types:
                    try:
                        oshape = tuple(eval_dim(d, env) for d in dims)
                    except CellTypeError as err:
                        raise RuleError(err.code, f"{edef.name}: {err.message}", err.hint) from None
                    outs.append(TensorType(dtype, oshape, None, t.padded_from))
                if len(outs) == 1 and n > 1:
                    outs = outs * n
            else:
                shape: tuple[Dim | None, ...] = t.shape
                if edef.time is not None:
                    if t.rank < 2 or t.time is None:
                        raise RuleError("SEQ303", f"{edef.name} changes the time axis of a sequence, got "
                                        f"{t.dtype}{fmt_shape(t.shape)}", "give it a `[B, T, ...]` value",
                                        where="input")  # fmt: skip
                    e = edef.time
                    new_t: Dim | None
                    if e.op == "/" and (k := eval_dim(e.args[1], env).value) is not None:
                        new_t = ctx.exact(eval_dim(e.args[0], env), k, edef.name)
                    else:
                        try:
                            new_t = eval_dim(e, env)
                        except CellTypeError as err:
                            raise RuleError(
                                err.code, f"{edef.name}: {err.message}", err.hint
                            ) from None
                    shape = (t.batch, new_t, *t.shape[2:])
                outs = [TensorType(t.dtype, shape, None, t.padded_from) for _ in range(n)]
            if kind == "propagate":
                outs = [
                    replace(o, mask=in_mask) if o.rank >= 2 and _same_time(o, t) else o
                    for o in outs
                ]
                if in_mask is not None and any(o.mask is None for o in outs):
                    raise RuleError("SEQ501", f"{edef.name} propagates the mask, but an output has another "
                                    "time axis", "declare `mask: drop` or `mask: consume` instead")  # fmt: skip
            elif kind == "generate":
                assert mk.value is not None
                pad = ctx.pad_of(t)
                mkind = pad_mask_kind(pad, mk.value) if t.rank == 2 else MaskKind("any")
                outs = [replace(o, mask=mkind) if o.rank >= 2 else o for o in outs]
        if len(outs) != n:
            outs = (outs * n)[:n]
        return outs

    def weights(cfg: Mapping[str, object], ins: Sequence[TensorType]) -> list[WeightSpec]:
        env = bind_inputs(cfg, ins)
        out = []
        for w in edef.weights:
            shape = []
            for de in w.dims:
                d = eval_dim(de, env)
                if d.value is None:
                    raise RuleError("SEQ309", f"{edef.name}: weight `{w.name}` has size {d}",
                                    "weight sizes must be known: declare the input's sizes")  # fmt: skip
                shape.append(d.value)
            out.append(WeightSpec(w.name, tuple(shape), w.initializer))
        return out

    n_in = 1
    if edef.inputs is not None and edef.inputs.op == "int" and isinstance(edef.inputs.value, int):
        n_in = edef.inputs.value
    elif edef.mask.kind == "concat":
        n_in = 2
    return LayerSpec(
        name=edef.name,
        category="extern",
        params=_params(edef.params),
        rule=rule,
        weights=weights,
        mask_rule=edef.mask.kind,
        padding_invariant=False,
        doc=f"extern layer declared in {edef.file}",
        data_args=frozenset({"mask", "training"}),
        n_inputs=(n_in, n_in),
    )


def _same_time(o: TensorType, t: TensorType) -> bool:
    return o.time is None or t.time is None or o.time == t.time


def bound_cell_of(layer: LayerInfoLike, types: Mapping[str, object]) -> BoundCell:
    """The bound cell block of a checked ``RNN(cell)`` or ``Bidirectional(RNN(cell))`` layer.

    ``layer`` is a :class:`seqdsl.checker.LayerInfo`, ``types`` the model's
    ``CheckedModel.types``; emitters and the reference use this."""
    cfg = layer.config
    if "layer" in cfg and isinstance(cfg["layer"], BoundLayer):  # Bidirectional
        cfg = cfg["layer"].config
    cell = cfg["cell"]
    assert isinstance(cell, BoundLayer) and "__cell__" in cell.config
    cdef = cell.config["__cell__"]
    assert isinstance(cdef, CellDef)
    ins: list[TensorType] = []
    for n in layer.inputs:
        t = types[n]
        assert isinstance(t, TensorType)
        ins.append(t)
    return bind_cell(cdef, cell.config, ins)


class LayerInfoLike(Protocol):
    @property
    def config(self) -> Mapping[str, object]: ...

    @property
    def inputs(self) -> tuple[str, ...]: ...


def is_cell_layer(cfg: Mapping[str, object]) -> bool:
    """Whether a recurrent layer's configuration runs a cell block."""
    if "layer" in cfg and isinstance(cfg["layer"], BoundLayer):
        cfg = cfg["layer"].config
    cell = cfg.get("cell")
    return isinstance(cell, BoundLayer) and "__cell__" in cell.config


def names_read(cdef: CellDef) -> set[str]:
    """Every name the equations of ``cdef`` read (not counting its outputs)."""
    out: set[str] = set()
    stack = [st.expr for st in cdef.body]
    while stack:
        e = stack.pop()
        if e.op == "name":
            out.add(str(e.value))
        stack.extend(e.args)
        stack.extend(v for _, v in e.kwargs)
    return out


def cell_kernels() -> dict[str, KernelChoice]:
    why = "a cell block runs its equations step by step"
    return {
        "keras": KernelChoice("scan", why + " (keras.layers.RNN)"),
        "torch": KernelChoice("loop", why),
        "jax": KernelChoice("scan", why + " (lax.scan)"),
    }
