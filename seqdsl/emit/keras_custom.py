"""Keras text for cell blocks and extern layers (the Keras emitter's custom classes).

A cell block becomes the ``keras.layers.Layer`` cell a Keras user writes for
``keras.layers.RNN``: ``state_size`` / ``output_size`` in ``__init__``, its
weights created in ``build`` with ``add_weight`` under their canonical names, and
``call(inputs, states)`` with one line of ``keras.ops`` per equation. An extern
layer becomes a small ``keras.layers.Layer`` that creates the declared weights,
calls the registered implementation (``ExternLayer.run``, seqdsl/runtime/keras.py) and
states the declared mask behaviour as ``compute_mask``.

Sizes are written in terms of the cell's (or extern's) parameters where they can
be (``4 * self.units``), and as the numbers of the call otherwise; the emitter
emits one class per distinct text (docs/backend-keras.md). This module only
writes text; it imports no framework.
"""

from __future__ import annotations

import builtins
import json
import keyword
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..catalogue import REQUIRED
from ..cells import BoundCell, eval_dim, infer_cell, names_read
from ..dims import Dim, sym
from ..ir import CellDef, CExpr, DimExpr, ExternDef, ParamDecl
from .common import py_literal as _lit

__all__ = [
    "EXTERN_HELPERS",
    "cell_is_nested",
    "cell_class_lines",
    "extern_class_lines",
    "custom_args",
    "uses_externs",
]

_WIDTH = 100

#: the seqdsl.runtime.keras functions an extern layer's class may call
EXTERN_HELPERS = ("and_masks", "concat_time_masks", "not_equal_mask")

#: attributes a keras.layers.Layer / RNN cell has (a weight or parameter named so gets a `_`)
_LAYER_ATTRS = frozenset(
    {
        "add_loss", "add_metric", "add_variable", "add_weight", "build", "build_from_config",
        "built", "call", "cell", "compute_dtype", "compute_mask", "compute_output_shape",
        "compute_output_spec", "count_params", "dtype", "dtype_policy", "from_config",
        "get_build_config", "get_config", "get_initial_state", "get_weights", "inner_loop",
        "input", "input_dtype", "input_spec", "load_own_variables", "losses", "metrics",
        "metrics_variables", "name", "non_trainable_variables", "non_trainable_weights", "output",
        "output_size", "path", "quantization_mode", "quantize", "quantized_build",
        "quantized_call", "rematerialized_call", "reset_state", "reset_states",
        "save_own_variables", "set_weights", "state_size", "states", "stateless_call",
        "supports_masking", "symbolic_call", "trainable", "trainable_variables",
        "trainable_weights", "variable_dtype", "variables", "weights", "impl", "debug", "extern",
        "declaration", "declared_outputs", "run", "check", "self", "kwargs",
    }
)  # fmt: skip
#: names the generated call() uses itself
_CALL_NAMES = frozenset(
    {"self", "inputs", "states", "ops", "keras", "np", "mask", "training", "l", "O", "I"}
)

_UNARY_OPS = {
    "tanh": "tanh", "sigmoid": "sigmoid", "relu": "relu", "exp": "exp", "log": "log",
    "abs": "abs", "sqrt": "sqrt", "square": "square", "softplus": "softplus",
    "softsign": "softsign",
}  # fmt: skip
_KERAS_DTYPE = {"f32": "float32", "f64": "float64", "i32": "int32", "i64": "int64", "bool": "bool"}


def _safe(name: str, taken: frozenset[str] | set[str] = _LAYER_ATTRS) -> str:
    """A Python name for ``name`` that is no keyword and no reserved attribute."""
    out = name
    while keyword.iskeyword(out) or out in taken:
        out += "_"
    return out


# --------------------------------------------------------------------------
# layout (as `ruff format` leaves it)


def _fits(line: str) -> bool:
    return len(line) <= _WIDTH


def _args_lines(indent: str, head: str, args: Sequence[str], tail: str = "") -> list[str]:
    """``head(args)tail`` on one line, else the arguments on a line of their own, else
    one per line."""
    one = f"{indent}{head}({', '.join(args)}){tail}"
    if _fits(one) or not args:
        return [one]
    body = f"{indent}    {', '.join(args)}"
    if _fits(body):
        return [f"{indent}{head}(", body, f"{indent}){tail}"]
    return [f"{indent}{head}(", *(f"{indent}    {a}," for a in args), f"{indent}){tail}"]


def _collection_lines(indent: str, head: str, items: Sequence[str], brackets: str) -> list[str]:
    """``head[items]`` / ``head{items}``: one line, else one item per line (trailing comma)."""
    o, c = brackets[0], brackets[1]
    one = f"{indent}{head}{o}{', '.join(items)}{c}"
    if _fits(one) or not items:
        return [one]
    return [f"{indent}{head}{o}", *(f"{indent}    {it}," for it in items), f"{indent}{c}"]


# --------------------------------------------------------------------------
# expressions


@dataclass(frozen=True)
class _Expr:
    """Translated code: its text, precedence, whether it has a batch axis, its rank
    without the batch axis, and (for layout) the operands of a top-level operator chain."""

    code: str
    prec: int
    batched: bool
    rank: int
    chain: tuple[tuple[str, str], ...] = ()  # ((op, operand code), ...): first op is ""
    call: tuple[str, tuple[str, ...]] | None = None  # (callee, args) when the root is a call
    tail: tuple[str, tuple[str, ...]] | None = None  # the same for the last operand of a chain


_ATOM, _UNARY, _MUL, _ADD = 100, 90, 80, 70
_PREC = {"+": _ADD, "-": _ADD, "*": _MUL, "/": _MUL}


def _paren(e: _Expr, prec: int, right: bool = False) -> str:
    if e.prec < prec or (right and e.prec == prec):
        return f"({e.code})"
    return e.code


def _dim_code(e: DimExpr, ref: Callable[[str], str | None]) -> tuple[str, int] | None:
    """A declared dimension as Python code (with its precedence), or None if a name has none."""
    if e.op == "int":
        return str(e.value), _ATOM
    if e.op == "name":
        r = ref(str(e.value))
        return None if r is None else (r, _ATOM)
    parts = [_dim_code(a, ref) for a in e.args]
    if parts[0] is None or parts[1] is None:
        return None
    (a, pa), (b, pb) = parts[0], parts[1]
    op = "//" if e.op in ("/", "//") else e.op
    prec = _ADD if op in "+-" else _MUL
    a = a if pa >= prec else f"({a})"
    b = b if pb > prec else f"({b})"
    return f"{a} {op} {b}", prec


def _sym_code(d: Dim, ref: Callable[[str], str | None]) -> str | None:
    """A symbolic dimension (a sum of integer multiples of symbols) as code, or None."""
    if d.value is not None:
        return str(d.value)
    terms: list[str] = []
    for atom, coef in d.terms:
        if atom.op != "sym" or coef.denominator != 1 or coef <= 0:
            return None
        r = ref(atom.name)
        if r is None:
            return None
        terms.append(r if coef == 1 else f"{int(coef)} * {r}")
    if d.const.denominator != 1:
        return None
    c = int(d.const)
    text = " + ".join(terms)
    if c:
        text += f" + {c}" if c > 0 else f" - {-c}"
    return text


def _simple_bound(code: str) -> bool:
    """Whether ruff writes a slice bound without spaces around the colon."""
    s = code.lstrip("-")
    return s.isidentifier() or s.replace(".", "", 1).isdigit()


class _CellText:
    """The Keras cell class of one bound cell block."""

    def __init__(self, bc: BoundCell, cls: str):
        self.bc = bc
        self.cdef: CellDef = bc.cdef
        self.cls = cls
        cdef = self.cdef
        self.params = {p.name: _safe(p.name) for p in cdef.params}
        taken = set(_LAYER_ATTRS) | set(self.params.values())
        self.wattr: dict[str, str] = {}
        for w in cdef.weights:
            self.wattr[w.name] = _safe(w.name, taken)
            taken.add(self.wattr[w.name])
        self.wshape = {w.name: w.shape for w in bc.weights}
        # input-bound dimension names -> (input index, axis)
        self.in_dims: dict[str, tuple[int, int]] = {}
        for i, t in enumerate(cdef.inputs):
            for a, d in enumerate(t.dims):
                if d.op == "name" and str(d.value) not in self.params:
                    self.in_dims.setdefault(str(d.value), (i, a))
        self.nested = cell_is_nested(bc)
        # Python locals of call()
        self.used = names_read(cdef) | {n for n, _ in cdef.outputs}
        self.taken: set[str] = set(_CALL_NAMES) | set(dir(builtins))
        self.var: dict[str, str] = {}
        for t in (*cdef.inputs, *cdef.states):
            self.var[t.name] = self.fresh(t.name)

    def fresh(self, base: str) -> str:
        name = _safe(base, self.taken)
        self.taken.add(name)
        return name

    # ------------------------------------------------------------ references
    def ref_init(self, name: str) -> str | None:
        return self.params.get(name)

    def ref_self(self, name: str) -> str | None:
        return f"self.{self.params[name]}" if name in self.params else None

    def concrete_dims(self, dims: Sequence[DimExpr], ref: Callable[[str], str | None]) -> str:
        """A shape tuple: symbolic where every size can be, else the bound numbers."""
        codes = [_dim_code(d, ref) for d in dims]
        if all(c is not None for c in codes):
            parts = [c[0] for c in codes if c is not None]
        else:
            env = {k: Dim.of(v) for k, v in self.bc.dims.items()}
            parts = [str(eval_dim(d, env).value) for d in dims]
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"

    def size_code(self, name: str, ref: Callable[[str], str | None]) -> tuple[str, ...]:
        """The per-step shape of an output (a state, an input or a local), as codes."""
        cdef = self.cdef
        decl = next((t for t in (*cdef.states, *cdef.inputs) if t.name == name), None)
        shape = dict(self.bc.outputs)[name]
        if decl is not None:
            codes = [_dim_code(d, ref) for d in decl.dims]
            if all(c is not None for c in codes):
                return tuple(c[0] for c in codes if c is not None)
            return tuple(map(str, shape))
        dims: dict[str, Dim] = {p.name: sym(p.name) for p in cdef.params if p.type == "int"}
        for n in self.in_dims:
            dims.setdefault(n, sym(n))
        scalars = {p.name for p in cdef.params if p.type == "float"}
        errors, types, _ = infer_cell(cdef, dims, scalars)
        v = types.get(name)
        if not errors and v is not None:
            syms = [_sym_code(d, ref) for d in v.shape]
            if all(s is not None for s in syms):
                return tuple(s for s in syms if s is not None)
        return tuple(map(str, shape))

    # ------------------------------------------------------------ class text
    def lines(self) -> list[str]:
        cdef, bc = self.cdef, self.bc
        out = ["@_register_own", f"class {self.cls}(keras.layers.Layer):"]
        sig = _signature(cdef.params)
        runner = "NestedRNN" if self.nested else "keras.layers.RNN"
        doc = [
            f'    """cell {cdef.name}({sig}), {cdef.file}:',
            f'    one step of its equations, run by {runner}."""',
        ]
        out += doc
        out.append("")
        # __init__
        params = [_param_sig(p, self.params[p.name]) for p in cdef.params]
        out += _args_lines("    ", "def __init__", ["self", *params, "**kwargs"], ":")
        out.append("        super().__init__(**kwargs)")
        for p in cdef.params:
            out.append(f"        self.{self.params[p.name]} = {self.params[p.name]}")
        states = []
        for t in cdef.states:
            shape = self.concrete_dims(t.dims, self.ref_init)
            states.append(shape[1:-2] if not self.nested else shape)
        out += _collection_lines("        ", "self.state_size = ", states, "[]")
        outputs = [self.size_code(n, self.ref_init) for n, _ in bc.outputs]
        if not self.nested:
            out.append(f"        self.output_size = {outputs[0][0]}")
        elif len(outputs) == 1:
            out.append(f"        self.output_size = {_tuple(outputs[0])}")
        else:
            out += _collection_lines(
                "        ", "self.output_size = ", [_tuple(o) for o in outputs], "[]"
            )
        # build
        out.append("")
        out.append("    def build(self, input_shape):")
        used_dims = {
            str(d)
            for w in cdef.weights
            for de in w.dims
            for d in _dim_names(de)
            if d in self.in_dims and d not in self.params
        }
        dim_var = {n: _safe(n, set(_LAYER_ATTRS) | {"input_shape"}) for n in used_dims}
        several = len(cdef.inputs) > 1
        for n in sorted(used_dims, key=lambda n: self.in_dims[n]):
            i, a = self.in_dims[n]
            rank = len(cdef.inputs[i].dims)
            idx = "-1" if a == rank - 1 else str(a + 1)
            src = f"input_shape[{i}][{idx}]" if several else f"input_shape[{idx}]"
            out.append(f"        {dim_var[n]} = {src}")

        def ref_build(name: str) -> str | None:
            return dim_var.get(name) or self.ref_self(name)

        for w in cdef.weights:
            shape = self.concrete_dims(w.dims, ref_build)
            args = [f"shape={shape}", f"initializer={_lit(w.initializer)}", f"name={_lit(w.name)}"]
            out += _args_lines("        ", f"self.{self.wattr[w.name]} = self.add_weight", args)
        if not cdef.weights:
            out.append("        pass")
        # call
        out.append("")
        out += self.call_lines()
        # get_config
        out.append("")
        out.append("    def get_config(self):")
        items = ["**super().get_config()"]
        items += [f"{_lit(v)}: self.{v}" for v in self.params.values()]
        out += _collection_lines("        ", "return ", items, "{}")
        return out

    def call_lines(self) -> list[str]:
        cdef = self.cdef
        out = ["    def call(self, inputs, states):"]
        ins = [self.var[t.name] for t in cdef.inputs]
        sts = [self.var[t.name] for t in cdef.states]
        if len(ins) == 1:
            if cdef.inputs[0].name in self.used:
                out.append(f"        {ins[0]} = inputs")
        else:
            out.append(f"        {', '.join(ins)} = inputs")
        if len(sts) == 1:
            if cdef.states[0].name in self.used:
                out.append(f"        {sts[0]} = states[0]")
        else:
            out.append(f"        {', '.join(sts)} = states")
        # values: name -> (var, batched, rank)
        self.env: dict[str, tuple[str, bool, int]] = {}
        for t in (*cdef.inputs, *cdef.states):
            self.env[t.name] = (self.var[t.name], True, len(self.bc.locals[t.name]))
        updated: dict[str, str] = {}
        for st in cdef.body:
            e = st.expr
            if e.op == "call" and e.value == "split":
                x = self.expr(e.args[0])
                n = self.const(e.args[1])
                ax = self.axis(e, x.batched)
                targets = []
                for tgt in st.targets:
                    v = self.fresh(tgt)
                    rank = len(self.bc.locals[tgt]) if tgt in self.bc.locals else x.rank
                    self.env[tgt] = (v, x.batched, rank)
                    targets.append(v)
                head = f"{', '.join(targets)} = ops.split"
                out += _args_lines("        ", head, [x.code, n, f"axis={ax}"])
                continue
            x = self.expr(e)
            if st.update:
                (name,) = st.targets
                v = self.fresh(f"next_{name}")
                updated[name] = v
            else:
                (name,) = st.targets
                unused = name not in self.used
                v = self.fresh(("_" + name) if unused else name)
                rank = len(self.bc.locals[name]) if name in self.bc.locals else x.rank
                self.env[name] = (v, x.batched, rank)
            out += _assign_lines("        ", v, x)
        outs = []
        for name, _ in cdef.outputs:
            if name in updated:
                outs.append(updated[name])
            else:
                outs.append(self.env[name][0])
        new_states = "[" + ", ".join(updated[t.name] for t in cdef.states) + "]"
        result = outs[0] if len(outs) == 1 else "[" + ", ".join(outs) + "]"
        out.append(f"        return {result}, {new_states}")
        return out

    # ------------------------------------------------------------ equations
    def const(self, e: CExpr) -> str:
        """A constant expression (slice bound, index, split count) as code."""
        if e.op == "num":
            return _lit(e.value)
        if e.op == "name":
            n = str(e.value)
            if n in self.params:
                return f"self.{self.params[n]}"
            return str(self.bc.const(e))
        if e.op == "neg":
            inner = self.const(e.args[0])
            return f"-{inner}" if inner.replace(".", "").isalnum() else f"-({inner})"
        a, b = (self.const(x) for x in e.args)
        if e.op == "*":
            a = a if " + " not in a and " - " not in a else f"({a})"
            b = b if " + " not in b and " - " not in b else f"({b})"
        elif e.op == "-":
            b = b if " + " not in b and " - " not in b else f"({b})"
        return f"{a} {e.op} {b}"

    def axis(self, call: CExpr, batched: bool) -> int:
        a = self.bc.axis(call)
        return a + 1 if batched and a >= 0 else a

    def expr(self, e: CExpr) -> _Expr:
        op = e.op
        if op == "num":
            code = _lit(e.value)
            return _Expr(code, _UNARY if code.startswith("-") else _ATOM, False, 0)
        if op == "str":
            return _Expr(json.dumps(e.value), _ATOM, False, 0)
        if op == "name":
            n = str(e.value)
            if n in self.env:
                var, batched, rank = self.env[n]
                return _Expr(var, _ATOM, batched, rank)
            if n in self.wattr:
                return _Expr(f"self.{self.wattr[n]}", _ATOM, False, len(self.wshape[n]))
            if n in self.params:
                return _Expr(f"self.{self.params[n]}", _ATOM, False, 0)
            return _Expr(str(self.bc.const(e)), _ATOM, False, 0)  # an input-bound size
        if op == "neg":
            a = self.expr(e.args[0])
            return _Expr(f"-{_paren(a, _UNARY)}", _UNARY, a.batched, a.rank)
        if op in _PREC:
            a, b = (self.expr(x) for x in e.args)
            a, b = _align(a, b)
            prec = _PREC[op]
            left, right = _paren(a, prec), _paren(b, prec, right=True)
            chain = a.chain if a.prec == prec and a.chain else (("", left),)
            return _Expr(
                f"{left} {op} {right}",
                prec,
                a.batched or b.batched,
                max(a.rank, b.rank),
                (*chain, (op, right)),
                tail=b.call if right == b.code else None,
            )
        if op == "@":
            a, b = (self.expr(x) for x in e.args)
            if a.batched and b.batched:
                a, b = _align(a, b)
                rank = max(a.rank, b.rank)
            else:
                rank = a.rank
            return _call_expr("ops.matmul", [a.code, b.code], a.batched or b.batched, rank)
        if op == "index":
            base = self.expr(e.args[0])
            items = e.args[1:]
            texts = [self.subscript(it) for it in items]
            if base.batched and (not items or items[0].op != "ellipsis"):
                texts.insert(0, ":")
            dropped = sum(1 for it in items if it.op == "at")
            code = f"{_paren(base, _ATOM)}[{', '.join(texts)}]"
            return _Expr(code, _ATOM, base.batched, base.rank - dropped)
        assert op == "call", op
        fn = str(e.value)
        if fn == "einsum":
            args = [self.expr(a) for a in e.args]
            batched = any(a.batched for a in args[1:])
            rhs = str(e.args[0].value).replace(" ", "").split("->")[1]
            return _call_expr(
                "ops.einsum", [a.code for a in args], batched, len(rhs) - (1 if batched else 0)
            )
        args = [self.expr(a) for a in e.args]
        if fn in _UNARY_OPS:
            (a,) = args
            return _call_expr(f"ops.{_UNARY_OPS[fn]}", [a.code], a.batched, a.rank)
        if fn in ("maximum", "minimum"):
            a, b = _align(*args)
            return _call_expr(
                f"ops.{fn}", [a.code, b.code], a.batched or b.batched, max(a.rank, b.rank)
            )
        if fn == "softmax":
            (a,) = args
            ax = self.axis(e, a.batched)
            return _call_expr("ops.softmax", [a.code, f"axis={ax}"], a.batched, a.rank)
        if fn in ("sum", "mean"):
            (a,) = args
            ax = self.axis(e, a.batched)
            return _call_expr(f"ops.{fn}", [a.code, f"axis={ax}"], a.batched, a.rank - 1)
        assert fn == "concat", fn
        ax = self.axis(e, True)
        joined = "[" + ", ".join(a.code for a in args) + "]"
        return _call_expr("ops.concatenate", [joined, f"axis={ax}"], True, args[0].rank)

    def subscript(self, it: CExpr) -> str:
        if it.op == "ellipsis":
            return "..."
        if it.op == "at":
            return self.const(it.args[0])
        lo_e, hi_e = it.args
        lo = "" if lo_e.op == "none" else self.const(lo_e)
        hi = "" if hi_e.op == "none" else self.const(hi_e)
        if all(_simple_bound(b) for b in (lo, hi) if b):
            return f"{lo}:{hi}"
        return f"{lo} : {hi}".strip() if lo and hi else (f"{lo} :" if lo else f": {hi}")


def _align(a: _Expr, b: _Expr) -> tuple[_Expr, _Expr]:
    """Two per-step values of different ranks: the lower one gets axes after the batch
    axis (NumPy broadcasting of the per-step shapes; the backends align from the right)."""
    if not (a.batched and b.batched) or a.rank == b.rank:
        return a, b

    def expand(x: _Expr, k: int) -> _Expr:
        code = f"{_paren(x, _ATOM)}[:{', None' * k}]"
        return _Expr(code, _ATOM, True, x.rank + k)

    if a.rank < b.rank:
        return expand(a, b.rank - a.rank), b
    return a, expand(b, a.rank - b.rank)


def _call_expr(callee: str, args: list[str], batched: bool, rank: int) -> _Expr:
    return _Expr(f"{callee}({', '.join(args)})", _ATOM, batched, rank, (), (callee, tuple(args)))


def _assign_lines(indent: str, target: str, x: _Expr) -> list[str]:
    """``target = expr`` laid out as ruff formats it."""
    one = f"{indent}{target} = {x.code}"
    if _fits(one):
        return [one]
    inner = f"{indent}    {x.code}"
    if x.call is not None:  # split at the call's own parentheses
        callee, args = x.call
        return _args_lines(indent, f"{target} = {callee}", list(args))
    if len(x.chain) == 2 and x.tail is not None:  # one operator: split at the last call
        callee, args = x.tail
        head = f"{indent}{target} = {x.chain[0][1]} {x.chain[1][0]} {callee}("
        if _fits(head):
            return _args_lines(indent, head[len(indent) : -1], list(args))
    if _fits(inner):
        return [f"{indent}{target} = (", inner, f"{indent})"]
    if x.chain:
        lines = [f"{indent}{target} = ("]
        for op, code in x.chain:
            lines.append(f"{indent}    {op + ' ' if op else ''}{code}")
        return lines + [f"{indent})"]
    return [one]  # left for the reader (ruff would wrap it differently)


def _dim_names(e: DimExpr) -> list[str]:
    if e.op == "name":
        return [str(e.value)]
    return [n for a in e.args for n in _dim_names(a)]


def _tuple(codes: Sequence[str]) -> str:
    return "(" + ", ".join(codes) + ("," if len(codes) == 1 else "") + ")"


def _signature(params: Sequence[ParamDecl]) -> str:
    return ", ".join(
        f"{p.name}: {p.type}" + ("" if p.default is None else f" = {p.default.describe()}")
        for p in params
    )


def _param_sig(p: ParamDecl, py: str) -> str:
    if p.default is None:
        return py
    return f"{py}={_lit(_typed(p.type, p.default.value))}"


def _typed(kind: str, v: object) -> object:
    if kind == "float" and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v


# --------------------------------------------------------------------------
# public helpers


def cell_is_nested(bc: BoundCell) -> bool:
    """Whether keras.layers.RNN cannot run the cell as it is: several inputs or outputs,
    an input, state or output with other than one axis, or an output other than the
    updated first state (Keras' JAX backend carries state 0 as the output of a masked
    step). It then runs in a NestedRNN."""
    return (
        len(bc.inputs) != 1
        or len(bc.outputs) != 1
        or any(len(s) != 1 for _, s in (*bc.inputs, *bc.states, *bc.outputs))
        or bc.outputs[0][0] != bc.states[0][0]
    )


def cell_class_lines(bc: BoundCell, cls: str) -> list[str]:
    """The Keras cell class of a bound cell block, named ``cls``."""
    return _CellText(bc, cls).lines()


def custom_args(params: Sequence[ParamDecl], cfg: Mapping[str, object]) -> list[str]:
    """Constructor arguments of a cell or extern class: required parameters
    positionally, the others by keyword where they differ from the default."""
    out: list[str] = []
    for p in params:
        v = cfg.get(p.name, REQUIRED)
        if p.default is None:
            out.append(_lit(_typed(p.type, v)))
        elif v is not REQUIRED and v != _typed(p.type, p.default.value):
            out.append(f"{_safe(p.name)}={_lit(_typed(p.type, v))}")
    return out


def custom_text(name: str, params: Sequence[ParamDecl], cfg: Mapping[str, object]) -> str:
    """``Name(args)`` as written in .seq (for comments)."""
    args: list[str] = []
    for p in params:
        v = cfg.get(p.name)
        text = ("true" if v else "false") if isinstance(v, bool) else str(v)
        if p.default is None:
            args.append(text)
        elif v != _typed(p.type, p.default.value):
            args.append(f"{p.name}={text}")
    return f"{name}({', '.join(args)})"


def uses_externs(layers: Sequence[object], externs: Mapping[str, ExternDef]) -> bool:
    return any(getattr(layer, "kind", None) in externs for layer in layers)


# --------------------------------------------------------------------------
# extern layers


def extern_class_lines(edef: ExternDef, cls: str) -> list[str]:
    """The Keras layer class of an extern layer, named ``cls``."""
    params = {p.name: _safe(p.name) for p in edef.params}
    taken = set(_LAYER_ATTRS) | set(params.values())
    wattr: dict[str, str] = {}
    for w in edef.weights:
        wattr[w.name] = _safe(w.name, taken)
        taken.add(wattr[w.name])
    mk = edef.mask
    sig = _signature(edef.params)
    where = f"declared at {edef.span.file}:{edef.span.line}:{edef.span.col}"
    contract = mk.kind + ("(required)" if mk.required else "")
    if mk.kind == "generate":
        contract = f"generate(x != {_num(mk.value)})" + (f" if {mk.cond}" if mk.cond else "")
    out = ["@_register_own", f"class {cls}(ExternLayer):"]
    out.append(f'    """extern layer {edef.name}{f"({sig})" if sig else ""}: mask {contract};')
    out.append(f'    {where}."""')
    out.append("")
    out.append(f"    extern = {_lit(edef.name)}")
    out.append(f"    declaration = {_lit(where)}")
    out.append("    declared_outputs = EXTERNS")
    n_in = len(edef.in_types) if edef.in_types else 1
    if edef.inputs is not None and edef.inputs.op == "int" and isinstance(edef.inputs.value, int):
        n_in = edef.inputs.value
    elif mk.kind == "concat":
        n_in = max(n_in, 2)
    several_in = n_in > 1
    # __init__
    if edef.params or mk.kind == "propagate":
        out.append("")
        sig_args = ["self", *(_param_sig(p, params[p.name]) for p in edef.params), "**kwargs"]
        out += _args_lines("    ", "def __init__", sig_args, ":")
        out.append("        super().__init__(**kwargs)")
        for p in edef.params:
            out.append(f"        self.{params[p.name]} = {params[p.name]}")
        if mk.kind == "propagate":
            out.append("        self.supports_masking = True  # mask: propagate")
    # build
    if edef.weights:
        out.append("")
        out.append("    def build(self, input_shape):")
        bound: dict[str, str] = {}
        for i, (_dt, dims, _sp) in enumerate(edef.in_types):
            for a, d in enumerate(dims):
                n = str(d.value)
                if d.op == "name" and n not in params and n not in bound:
                    bound[n] = f"input_shape[{i}][{a}]" if several_in else f"input_shape[{a}]"
        used = {n for w in edef.weights for de in w.dims for n in _dim_names(de)}
        local = {n: _safe(n, set(_LAYER_ATTRS) | {"input_shape"}) for n in bound if n in used}
        for n, v in local.items():
            out.append(f"        {v} = {bound[n]}")

        def ref(name: str) -> str | None:
            return local.get(name) or (f"self.{params[name]}" if name in params else None)

        for w in edef.weights:
            codes = [_dim_code(d, ref) for d in w.dims]
            shape = _tuple([c[0] if c is not None else "None" for c in codes])
            args = [f"shape={shape}", f"initializer={_lit(w.initializer)}", f"name={_lit(w.name)}"]
            out += _args_lines("        ", f"self.{wattr[w.name]} = self.add_weight", args)
    # call
    out.append("")
    out.append("    def call(self, inputs, mask=None, training=False):")
    witems = [f"{_lit(w.name)}: self.{wattr[w.name]}" for w in edef.weights]
    citems = [f"{_lit(p.name)}: self.{params[p.name]}" for p in edef.params]
    out += _collection_lines("        ", "weights = ", witems, "{}")
    out += _collection_lines("        ", "config = ", citems, "{}")
    out.append("        return self.run(inputs, mask, training, weights, config)")
    # compute_mask
    out.append("")
    out.append("    def compute_mask(self, inputs, mask=None):")
    out += _mask_lines(edef, params, several_in)
    # get_config
    if edef.params:
        out.append("")
        out.append("    def get_config(self):")
        items = ["**super().get_config()", *(f"{_lit(v)}: self.{v}" for v in params.values())]
        out += _collection_lines("        ", "return ", items, "{}")
    return out


def _num(v: float | None) -> str:
    if v is None:
        return "0"
    return str(int(v)) if float(v).is_integer() else repr(v)


def _n_outputs(edef: ExternDef, params: Mapping[str, str]) -> str:
    if edef.outputs is None:
        return "1"
    code = _dim_code(edef.outputs, lambda n: f"self.{params[n]}" if n in params else None)
    return "1" if code is None else code[0]


def _mask_lines(edef: ExternDef, params: Mapping[str, str], several_in: bool) -> list[str]:
    """compute_mask as the declaration states it."""
    mk = edef.mask
    i = "        "
    n = _n_outputs(edef, params)
    single = n == "1"
    first = "and_masks(mask)" if several_in else "mask"
    out: list[str] = []
    if mk.cond is not None and mk.kind != "none":
        out.append(f"{i}if not self.{params.get(mk.cond, mk.cond)}:")
        out.append(f"{i}    return None" if single else f"{i}    return [None] * {n}")
    if mk.kind == "propagate":
        if several_in:  # the first input's mask that exists
            out.append(f"{i}mask = next((m for m in mask if m is not None), None)")
        out.append(f"{i}return mask  # propagate" if single else f"{i}return [mask] * {n}")
    elif mk.kind == "generate":
        x = "inputs[0]" if several_in else "inputs"
        valid = f"not_equal_mask({x}, {_num(mk.value)})"
        note = f"  # generate(x != {_num(mk.value)})"
        out.append(f"{i}return {valid}{note}" if single else f"{i}return [{valid}] * {n}{note}")
    elif mk.kind == "split":
        out.append(f"{i}if {first} is None:")
        out.append(f"{i}    return [None] * {n}")
        out.append(f"{i}return ops.split({first}, {n}, axis=1)  # split: the mask in time slices")
    elif mk.kind == "concat":
        joined = "concat_time_masks(inputs, mask)"
        note = "  # concat: the masks joined in time"
        out.append(f"{i}return {joined}{note}" if single else f"{i}return [{joined}] * {n}{note}")
    else:
        what = {
            "consume": "consume: the mask is used, the outputs have none",
            "drop": "drop: the mask is ignored and removed",
            "none": "none: the layer makes no mask",
        }[mk.kind]
        out.append(f"{i}return None  # {what}" if single else f"{i}return [None] * {n}  # {what}")
    return out
