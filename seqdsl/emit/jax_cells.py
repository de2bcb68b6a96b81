"""The JAX emitter's cell blocks and extern layers (docs/backend-jax.md).

A ``cell`` block used as ``RNN(MyCell(...))`` becomes one readable step
function (its equations, one line each, as ``jnp`` expressions) run by
``_cell_rnn`` (``lax.scan``, masked update in the loop body). An ``extern
layer`` becomes a call of its implementation, resolved from seqdsl's registry
when the model is built, with the output masks its declaration gives.

Text only: this module imports no framework (``seqdsl compile`` runs without JAX).
"""

from __future__ import annotations

import builtins
import keyword
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..catalogue import Cfg
from ..cells import BoundCell, bound_cell_of, names_read
from ..checker import LayerInfo
from ..ir import ApplyOp, CellDef, CExpr, ExternDef, MaskContract, ParamDecl
from ..types import TensorType
from . import CodeWriter
from .common import describe_layer, seq_value
from .common import py_literal as _lit
from .jax_common import EmitterLike, runtime_names

__all__ = [
    "EXTERN_NAMES",
    "cell_step_function",
    "emit_cell_rnn",
    "emit_extern",
    "extern_declaration",
    "externs_section",
    "snake_case",
]

#: module-level names an emitted module with extern layers defines or imports
EXTERN_NAMES = {"EXTERNS", "_externs", "externs", "functools", "ExternError",
                "check_output_shapes", "get_extern"}  # fmt: skip

_UNARY = {
    "tanh": "jnp.tanh",
    "sigmoid": "jax.nn.sigmoid",
    "relu": "jax.nn.relu",
    "exp": "jnp.exp",
    "log": "jnp.log",
    "abs": "jnp.abs",
    "sqrt": "jnp.sqrt",
    "square": "jnp.square",
    "softplus": "jax.nn.softplus",
    "softsign": "jax.nn.soft_sign",
}
_PREC = {"+": 10, "-": 10, "*": 20, "/": 20, "@": 20}
_NEG, _ATOM = 30, 40


# --------------------------------------------------------------------------
# descriptions (comments and error messages)


def _param_args(decls: Sequence[ParamDecl], cfg: Mapping[str, object]) -> str:
    """``8, mask_zero=true``: the bound parameters as written in `.seq` (defaults left out)."""
    args = []
    for p in decls:
        if p.name not in cfg:
            continue
        v = cfg[p.name]
        if p.default is None:
            args.append(seq_value(v))
        elif v != p.default.value or type(v) is not type(p.default.value):
            args.append(f"{p.name}={seq_value(v)}")
    return ", ".join(args)


def _cell_call(cdef: CellDef, cfg: Mapping[str, object]) -> str:
    return f"{cdef.name}({_param_args(cdef.params, cfg)})"


def _describe_cell_layer(layer: LayerInfo, cdef: CellDef, cell_cfg: Mapping[str, object]) -> str:
    """``RNN(MyCell(8), return_sequences=true)``."""
    text = describe_layer(layer.kind, layer.config)
    return text.replace(cdef.name, _cell_call(cdef, cell_cfg), 1)


def _mask_text(mk: MaskContract) -> str:
    if mk.kind == "generate":
        v = mk.value
        vs = str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
        return f"generate(x != {vs})" + (f" if {mk.cond}" if mk.cond else "")
    if mk.kind == "consume" and mk.required:
        return "consume(required)"
    return mk.kind


def extern_declaration(edef: ExternDef) -> str:
    """The declaration in one line, for comments and error messages."""
    params = ", ".join(
        f"{p.name}: {p.type}" + ("" if p.default is None else f" = {p.default.describe()}")
        for p in edef.params
    )
    clauses = []
    for key, types in (("in", edef.in_types), ("out", edef.out_types)):
        if types:
            clauses.append(
                f"{key}: "
                + ", ".join(f"{dt}[{', '.join(map(str, dims))}]" for dt, dims, _ in types)
            )
    if edef.same_shape:
        clauses.append("shape: same")
    if edef.inputs is not None:
        clauses.append(f"inputs: {edef.inputs}")
    if edef.outputs is not None:
        clauses.append(f"outputs: {edef.outputs}")
    if edef.time is not None:
        clauses.append(f"time: {edef.time}")
    clauses.append(f"mask: {_mask_text(edef.mask)}")
    for w in edef.weights:
        clauses.append(f"weight {w.name}: [{', '.join(map(str, w.dims))}] = {w.initializer}")
    head = f"extern layer {edef.name}" + (f"({params})" if params else "")
    return f"{head} {{ {'; '.join(clauses)} }} ({edef.file}:{edef.span.line})"


# --------------------------------------------------------------------------
# cell blocks: the step function


@dataclass
class _E:
    """A translated expression: code, its precedence, batched, per-step rank."""

    code: str
    prec: int
    batched: bool
    rank: int
    op: str = ""
    #: the operands of a top-level chain of one precedence: ("a", "+ b", "- c")
    chain: tuple[str, ...] = ()


def _wrap(e: _E, prec: int) -> str:
    return e.code if e.prec >= prec else f"({e.code})"


def _expand(e: _E, rank: int) -> _E:
    """A batched value with new axes after the batch axis, to broadcast per step."""
    if not e.batched or e.rank >= rank:
        return e
    axes = tuple(range(1, 1 + rank - e.rank))
    return _E(f"jnp.expand_dims({e.code}, {_lit(axes)})", _ATOM, True, rank)


def _axis(a: int, batched: bool) -> int:
    """An axis of the cell language (after the batch axis) on the backend array."""
    return a + 1 if batched and a >= 0 else a


class _StepWriter:
    """Translates a bound cell's equations into the body of a step function."""

    def __init__(self, bc: BoundCell):
        self.bc = bc
        reserved = (
            set(dir(builtins))
            | runtime_names()
            | {"p", "inputs", "states", "jax", "jnp", "lax", "np"}
        )
        self.taken = set(reserved)
        self.var: dict[str, _E] = {}

    def fresh(self, base: str) -> str:
        name, i = base, 2
        while name in self.taken or keyword.iskeyword(name) or not name.isidentifier():
            if not name.isidentifier():
                base = "v_" + "".join(c if c.isalnum() else "_" for c in base)
                name = base
                continue
            name = f"{base}_{i}"
            i += 1
        self.taken.add(name)
        return name

    def lines(self, doc: Sequence[str]) -> list[str]:
        bc = self.bc
        w = CodeWriter()
        w._level = 1
        for line in doc:
            w(line)
        used = names_read(bc.cdef)
        ins = [self.bind(n, True, len(s)) for n, s in bc.inputs]
        sts = [self.bind(n, True, len(s)) for n, s in bc.states]
        w(f"{_targets(ins)} = inputs")
        w(f"{_targets(sts)} = states")
        for ws in bc.weights:
            if ws.name not in used:
                continue
            v = self.bind(ws.name, False, len(ws.shape))
            w(f"{v} = p[{_lit(ws.name)}]")
        updated: dict[str, str] = {}
        for st in bc.cdef.body:
            e = st.expr
            if e.op == "call" and e.value == "split":
                x = self.expr(e.args[0])
                n = int(bc.const(e.args[1]))
                ax = _axis(bc.axis(e), x.batched)
                rhs = _E(f"jnp.split({x.code}, {n}, axis={ax})", _ATOM, x.batched, x.rank)
                names = [self.target(t, st.update, rhs, updated) for t in st.targets]
                w(f"{_targets(names)} = {rhs.code}")
                continue
            rhs = self.expr(e)
            (t,) = st.targets
            if st.update and e.op == "name" and str(e.value) in self.var:
                updated[t] = self.var[str(e.value)].code  # `h <- h_new`: no copy
                w(f"# {t} <- {e.value}")
                continue
            name = self.target(t, st.update, rhs, updated)
            _assign(w, name, rhs, f"  # the new {t}" if st.update else "")
        outs = [updated.get(n, self.var[n].code) if n in dict(bc.states) else self.var[n].code
                for n, _ in bc.outputs]  # fmt: skip
        new = [updated[n] for n, _ in bc.states]
        w(f"return {_tuple(outs)}, {_tuple(new)}")
        return w.lines

    def bind(self, name: str, batched: bool, rank: int) -> str:
        v = self.fresh(name)
        self.var[name] = _E(v, _ATOM, batched, rank)
        return v

    def target(self, t: str, update: bool, rhs: _E, updated: dict[str, str]) -> str:
        if update:
            v = self.fresh(f"new_{t}")
            updated[t] = v
            return v
        return self.bind(t, rhs.batched, rhs.rank)

    # ------------------------------------------------------------ expressions
    def expr(self, e: CExpr) -> _E:
        bc = self.bc
        op = e.op
        if op == "num":
            return _E(repr(e.value), _ATOM, False, 0)
        if op == "name":
            n = str(e.value)
            if n in self.var:
                return self.var[n]
            v = bc.params.get(n, bc.dims.get(n))
            assert isinstance(v, (int, float)) and not isinstance(v, bool), n
            return _E(repr(v), _NEG if v < 0 else _ATOM, False, 0)
        if op == "neg":
            a = self.expr(e.args[0])
            return _E("-" + _wrap(a, _NEG), _NEG, a.batched, a.rank)
        if op in ("+", "-", "*", "/"):
            a, b = (self.expr(x) for x in e.args)
            rank = max(a.rank, b.rank)
            if a.batched and b.batched:
                a, b = _expand(a, rank), _expand(b, rank)
            p = _PREC[op]
            # `(a @ w) * b`: a product with a matmul keeps its brackets, for the reader
            left = p + 1 if p == 20 and a.op == "@" else p
            code = f"{_wrap(a, left)} {op} {_wrap(b, p + 1)}"
            head = a.chain if a.prec == p and a.chain and left == p else (_wrap(a, left),)
            chain = (*head, f"{op} {_wrap(b, p + 1)}")
            return _E(code, p, a.batched or b.batched, rank, op, chain)
        if op == "@":
            a, b = (self.expr(x) for x in e.args)
            if a.batched and b.batched:
                rank = max(a.rank, b.rank)
                a, b = _expand(a, rank), _expand(b, rank)
            else:
                rank = a.rank if b.rank == 2 else max(a.rank, b.rank)
            left = 21 if a.op in ("*", "/") else 20  # `(r * h) @ w`, for the reader
            code = f"{_wrap(a, left)} @ {_wrap(b, 21)}"
            return _E(code, 20, a.batched or b.batched, rank, "@")
        if op == "index":
            return self.index(e)
        if op == "call":
            return self.call(e)
        raise AssertionError(f"cell expression {op}")  # pragma: no cover - checked

    def index(self, e: CExpr) -> _E:
        base = self.expr(e.args[0])
        items = e.args[1:]
        parts = []
        for it in items:
            if it.op == "ellipsis":
                parts.append("...")
            elif it.op == "at":
                parts.append(str(int(self.bc.const(it.args[0]))))
            else:
                lo, hi = it.args
                a = "" if lo.op == "none" else str(int(self.bc.const(lo)))
                z = "" if hi.op == "none" else str(int(self.bc.const(hi)))
                parts.append(f"{a}:{z}")
        if base.batched and (not items or items[0].op != "ellipsis"):
            parts.insert(0, ":")  # the batch axis
        rank = base.rank - sum(1 for it in items if it.op == "at")
        return _E(f"{_wrap(base, _ATOM)}[{', '.join(parts)}]", _ATOM, base.batched, rank)

    def call(self, e: CExpr) -> _E:
        fn = str(e.value)
        if fn == "einsum":
            eq = str(e.args[0].value).replace(" ", "")
            args = [self.expr(a) for a in e.args[1:]]
            batched = any(a.batched for a in args)
            rank = len(eq.split("->")[1]) - (1 if batched else 0)
            code = f"jnp.einsum({_lit(eq)}, {', '.join(a.code for a in args)})"
            return _E(code, _ATOM, batched, rank)
        args = [self.expr(a) for a in e.args]
        if fn in _UNARY:
            (a,) = args
            return _E(f"{_UNARY[fn]}({a.code})", _ATOM, a.batched, a.rank)
        if fn in ("maximum", "minimum"):
            a, b = args
            rank = max(a.rank, b.rank)
            if a.batched and b.batched:
                a, b = _expand(a, rank), _expand(b, rank)
            return _E(f"jnp.{fn}({a.code}, {b.code})", _ATOM, a.batched or b.batched, rank)
        if fn == "softmax":
            (a,) = args
            ax = _axis(self.bc.axis(e), a.batched)
            return _E(f"jax.nn.softmax({a.code}, axis={ax})", _ATOM, a.batched, a.rank)
        if fn in ("sum", "mean"):
            (a,) = args
            ax = _axis(self.bc.axis(e), a.batched)
            return _E(f"jnp.{fn}({a.code}, axis={ax})", _ATOM, a.batched, a.rank - 1)
        if fn == "concat":
            ax = _axis(self.bc.axis(e), True)
            code = f"jnp.concatenate([{', '.join(a.code for a in args)}], axis={ax})"
            return _E(code, _ATOM, True, args[0].rank)
        raise AssertionError(f"cell function {fn}")  # pragma: no cover - checked


def _assign(w: CodeWriter, name: str, rhs: _E, comment: str, width: int = 100) -> None:
    """``name = rhs``; too long for a line, a chain of two or more operators is
    bracketed and split at them, as ruff format would (else the emitter's fit()
    splits its last bracket pair). A trailing comment then goes above."""
    line = f"{name} = {rhs.code}"
    if 4 + len(line) + len(comment) <= width or len(rhs.chain) < 3:
        w(line + comment)
        return
    if comment:
        w(comment.strip())
    if 4 + len(line) <= width:
        w(line)
        return
    w(f"{name} = (")
    if 8 + len(rhs.code) <= width:
        w("    " + rhs.code)
    else:
        for part in rhs.chain:
            w("    " + part)
    w(")")


def _targets(names: Sequence[str]) -> str:
    return f"({names[0]},)" if len(names) == 1 else ", ".join(names)


def _tuple(items: Sequence[str]) -> str:
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


def snake_case(name: str) -> str:
    """``MyLSTMCell`` -> ``my_lstm_cell``."""
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()


def _shape(shape: Sequence[int]) -> str:
    return "[B" + "".join(f", {n}" for n in shape) + "]"


def cell_step_function(bc: BoundCell, fname: str) -> list[str]:
    """``def {fname}(p, inputs, states): ... return outputs, new_states``."""
    cdef = bc.cdef
    cfg = {p.name: bc.params[p.name] for p in cdef.params if p.name in bc.params}
    doc_io = "; ".join(
        f"{what}: " + ", ".join(f"{n} {_shape(s)}" for n, s in items)
        for what, items in (("inputs", bc.inputs), ("states", bc.states), ("outputs", bc.outputs))
    )
    doc = [
        f'"""One step of cell {_cell_call(cdef, cfg)} ({cdef.file}:{cdef.span.line}).',
        "",
        doc_io,
        '"""',
    ]
    lines = [f"def {fname}(p, inputs, states):"]
    lines += _StepWriter(bc).lines(doc)
    return lines


# --------------------------------------------------------------------------
# cell blocks in apply


def emit_cell_rnn(em: EmitterLike, op: ApplyOp, layer: LayerInfo) -> None:
    """``RNN(MyCell(...))`` / ``Bidirectional(RNN(MyCell(...)))``: the step function
    (one per distinct bound cell) run by _cell_rnn / _cell_bidirectional."""
    b = em.body
    bc = bound_cell_of(layer, em.m.types)
    cfg = Cfg(layer.config)
    bi = layer.kind == "Bidirectional"
    rcfg = Cfg(cfg.layer("layer").config) if bi else cfg
    cell_bl = rcfg.layer("cell")
    merge_mode = cfg.text("merge_mode") if bi else "concat"
    rs = rcfg.flag("return_sequences")
    rst = rcfg.flag("return_state")
    go_back = "go_backwards" in rcfg and rcfg.flag("go_backwards")
    stateful = "stateful" in rcfg and rcfg.flag("stateful")
    masked_output = rcfg.text("masked_output") if "masked_output" in rcfg else "zero"
    xs = [em.names.value(u.name) for u in op.inputs]
    res = [em.names.value(r) for r in op.results]

    # the mask: the explicit one, else the AND of the inputs' masks
    mask: str | None
    present: list[str] = []
    if op.mask is not None:
        mask = em.mask.get(op.mask.name) or em.names.value(op.mask.name)
        in_kind = em.kind_of(op.mask.name)
    else:
        present = [m for m in (em.mask.get(u.name) for u in op.inputs) if m is not None]
        mask = present[0] if present else None
        kinds = [em.kind_of(u.name) for u in op.inputs if em.mask.get(u.name) is not None]
        in_kind = kinds[0] if len(kinds) == 1 else None
    desc = _describe_cell_layer(layer, bc.cdef, cell_bl.config)
    b(
        f"# {layer.name}: {desc} -- cell block, lax.scan"
        + (f"; input mask {in_kind}" if mask and in_kind else "")
    )
    if len(present) > 1:
        mask = em.names.fresh(f"{layer.name}_mask")
        b(f"{mask} = {' & '.join(present)}  # the AND of the inputs' masks")

    fn = em.cell_function(bc)
    n_states = len(bc.states)
    dirs = 2 if bi else 1
    shapes = tuple(s for _, s in bc.states)
    names = tuple(n for n, _ in bc.states)
    if stateful:
        batch = em.tensor(op.inputs[0].name).batch
        assert batch is not None and batch.value is not None
        em.cell_states[layer.name] = (batch.value, shapes, names)
    if op.initial_state is not None:
        given = [em.names.value(s.name) for s in op.initial_state]
        init = [_tuple(given[d * n_states : (d + 1) * n_states]) for d in range(dirs)]
    elif stateful:
        init = [_tuple([f"state[{_lit(layer.name)}][{_lit(n)}]" for n in names])]
    else:
        init = [f"_cell_states({xs[0]}, {_lit(shapes)})"] * dirs

    rv = em.names.fresh(f"{layer.name}_rnn")
    p = f"params[{_lit(layer.name)}]" if layer.weights else "{}"
    m_arg = mask or "None"
    outputs = _lit(tuple(s for _, s in bc.outputs))
    xs_arg = _tuple(xs)
    if bi:
        b(
            f"{rv} = _cell_bidirectional({fn}, {p}, {xs_arg}, {m_arg}, {init[0]}, {init[1]}, "
            f"{outputs}, merge_mode={_lit(merge_mode)}, return_sequences={_lit(rs)})"
        )
    else:
        kw = ""
        if go_back:
            kw += ", go_backwards=True"
        if rs:
            kw += ", return_sequences=True"
        if masked_output != "zero":
            kw += f", masked_output={_lit(masked_output)}"
        b(f"{rv} = _cell_rnn({fn}, {p}, {xs_arg}, {m_arg}, {init[0]}, {outputs}{kw})")
    if stateful:
        b(
            f"new_state[{_lit(layer.name)}] = dict(zip({_lit(names)}, {rv}.states, strict=True))  # carried to the next call"
        )

    n_main = (2 if merge_mode == "none" else 1) if bi else len(bc.outputs)
    attr = "sequence" if rs else "last"
    main = res[:n_main]
    b(f"{main[0]} = {rv}.{attr}" if bi and n_main == 1 else f"{_targets(main)} = {rv}.{attr}")
    if rst:
        st = res[n_main:]
        b(f"{_targets(st)} = {rv}.states")
        for r in op.results[n_main:]:
            em.mask[r] = None
    flipped: str | None = None
    for r in op.results[:n_main]:
        if em.kind_of(r) is None or mask is None:
            em.mask[r] = None
        elif go_back and not bi:
            if flipped is None:
                flipped = em.names.fresh(f"{res[0]}_mask")
                b(
                    f"{flipped} = jnp.flip({mask}, axis=1)  # go_backwards: outputs in reversed time order"
                )
            em.mask[r] = flipped
        else:
            em.mask[r] = mask


# --------------------------------------------------------------------------
# extern layers


def externs_section(em: EmitterLike) -> list[str]:
    """The EXTERNS table and _externs(): how a module finds its implementations."""
    w = CodeWriter()
    w("#: extern layers: name -> declaration. The implementations come from seqdsl's")
    w('#: registry (backend "jax"; the `use`d modules imported above register them),')
    w("#: or from the `externs=` given to apply / the class (name -> function).")
    w("EXTERNS = {")
    for name in sorted({layer.kind for layer in em.m.layers if layer.kind in em.m.externs}):
        w(f"    {_lit(name)}: {_lit(extern_declaration(em.m.externs[name]))},")
    w("}")
    w("")
    w("")
    w("def _externs(overrides=None):")
    w('    """The implementations of the extern layers: `overrides` (name -> function or')
    w('    seqdsl.externs.Impl) first, then seqdsl\'s registry (backend "jax"). A missing')
    w('    one raises seqdsl.externs.ExternError (when the model is built)."""')
    w('    return {name: get_extern(name, "jax", overrides) for name in EXTERNS}')
    return w.lines


def emit_extern(em: EmitterLike, op: ApplyOp, layer: LayerInfo) -> None:
    """An extern layer: its implementation called on the inputs, the output masks
    computed from the declared contract, debug checks against the declaration."""
    b = em.body
    edef = em.m.externs[layer.kind]
    cfg = layer.config
    xs = [em.names.value(u.name) for u in op.inputs]
    res = [em.names.value(r) for r in op.results]
    if op.mask is not None:
        explicit = em.mask.get(op.mask.name) or em.names.value(op.mask.name)
        masks: list[str | None] = [explicit] * len(xs)
    else:
        masks = [em.mask.get(u.name) for u in op.inputs]
    mk = edef.mask
    active = mk.cond is None or bool(cfg.get(mk.cond))
    kind = mk.kind if active else "none"
    declared = _param_args(edef.params, cfg)
    b(f"# {layer.name}: {edef.name}({declared}) -- extern layer; mask: {_mask_text(mk)}"
      + ("" if active else f" (off: {mk.cond}=false)"))  # fmt: skip
    config = (
        "{"
        + ", ".join(f"{_lit(p.name)}: {_lit(cfg[p.name])}" for p in edef.params if p.name in cfg)
        + "}"
    )
    p = f"params[{_lit(layer.name)}]" if layer.weights else "{}"
    m_arg = (masks[0] or "None") if len(xs) == 1 else _tuple([m or "None" for m in masks])
    returned = em.names.fresh(f"{res[0]}_returned_mask")
    b(
        f"{_tuple(res)}, {returned} = _extern(externs[{_lit(edef.name)}], {_tuple(xs)}, {m_arg}, {p}, "
        f"{config}, {em.training_expr(op)})"
    )

    # output masks, from the declaration
    in_mask = next((m for m in masks if m is not None), None)
    out_masks: list[str | None] = [None] * len(res)
    has = [em.kind_of(r) is not None for r in op.results]
    if kind == "propagate" and in_mask is not None:
        out_masks = [in_mask if h else None for h in has]
        if any(has):
            b(f"# mask: {in_mask} passes to the output(s) (propagate)")
    elif kind == "generate" and any(has):
        x = xs[0]
        v = mk.value
        assert v is not None
        t = em.tensor(op.inputs[0].name)
        lit = str(int(v)) if float(v).is_integer() and t.dtype.startswith("i") else _lit(float(v))
        m = em.names.fresh(f"{res[0]}_mask")
        if t.rank == 2:
            b(f"{m} = {x} != {lit}  # mask: generate(x != {lit}) -> {em.kind_of(op.results[0])}")
        else:
            axes = tuple(range(2, t.rank))
            b(
                f"{m} = jnp.any({x} != {lit}, axis={_lit(axes)})  # mask: a step is valid where some value != {lit}"
            )
        out_masks = [m if h else None for h in has]
    elif kind == "split" and in_mask is not None and any(has):
        ms = [em.names.fresh(f"{r}_mask") for r in res]
        b(
            f"{_targets(ms)} = jnp.split({in_mask}, {len(res)}, axis=1)  # mask: split in time like the outputs"
        )
        out_masks = [m if h else None for m, h in zip(ms, has, strict=True)]
    elif kind == "concat" and any(has):
        parts = [m if m is not None else f"_all_valid({x})" for m, x in zip(masks, xs, strict=True)]
        m = em.names.fresh(f"{res[0]}_mask")
        b(
            f"{m} = jnp.concatenate([{', '.join(parts)}], axis=1)  # mask: joined in time like the inputs"
        )
        out_masks = [m if has[0] else None] + [None] * (len(res) - 1)
    for r, om in zip(op.results, out_masks, strict=True):
        em.mask[r] = om

    # debug: the outputs against the declaration; a returned mask against the contract
    spec = []
    for r in op.results:
        t = em.tensor(r)
        spec.append((t.dtype, tensor_shape(t)))
    where = f"{edef.name} (layer `{layer.name}`)"
    em.pending.append(
        f"_check_extern({_lit(where)}, EXTERNS[{_lit(edef.name)}], {_tuple(res)}, {_lit(tuple(spec))}, "
        f"{returned}, {_tuple([m or 'None' for m in out_masks])})"
    )
    if kind == "generate" and out_masks[0] is not None:
        okind = em.kind_of(op.results[0])
        if okind is not None:
            em.emit_declared_check(
                out_masks[0], okind, layer, op.inputs[0].name,
                f"{edef.name} generates its mask ({_mask_text(mk)})",
                "a padding value inside the data?",
            )  # fmt: skip


def tensor_shape(t: TensorType) -> tuple[int | None, ...]:
    """A type's shape with None where the size is symbolic."""
    return tuple(d.value if d is not None and isinstance(d.value, int) else None for d in t.shape)
