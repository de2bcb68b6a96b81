"""The JAX emitter: a checked model -> a readable JAX module.

The emitted module holds the model (its tables, ``apply``, thin ``init``,
``from_canonical``, ``to_canonical``, ``pad`` and ``debug``, and a small class
named after the model: docs/backend-jax.md) and imports its run-time code from
:mod:`seqdsl.runtime.jax` (``from seqdsl.runtime.jax import _dense, _lstm``);
``standalone=True`` copies that code in instead (:mod:`seqdsl.emit.standalone`).
Recurrent layers run on ``jax.lax.scan`` (never a per-step Python loop), or on
the fused cuDNN LSTM of ``jax.experimental.rnn`` on CUDA GPUs.

Each layer kind has one small method, found through a table (``_Emitter.LAYERS``).
This module only writes text; it imports no framework (``seqdsl compile``
runs without JAX installed).
"""

from __future__ import annotations

import builtins
import functools
import keyword
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..catalogue import BoundLayer, Cfg, backward_of
from ..cells import is_cell_layer
from ..checker import CheckedModel, Constraint, LayerInfo
from ..ir import ApplyOp, DropMaskOp, InputDecl, MergeOp
from ..types import MaskKind, MaskType, TensorType
from . import CodeWriter, Unsupported
from .common import constraint_values, f_string, scaled_size_code
from .common import decl_text as _decl_text
from .common import describe_layer as _describe
from .common import py_literal as _lit
from .common import seq_value as _fmt_value
from .jax_cells import (
    EXTERN_NAMES,
    cell_step_function,
    emit_cell_rnn,
    emit_extern,
    externs_section,
    snake_case,
)
from .jax_common import ACTIVATION_EXPR, RUNTIME_MODULE, runtime_names
from .standalone import ImportItem, format_imports

if TYPE_CHECKING:
    from ..cells import BoundCell

__all__ = ["emit_model", "instantiate", "class_name"]

_NP_DTYPE = {"f32": "float32", "f64": "float64", "i32": "int32", "i64": "int64", "bool": "bool"}
_CELL_OF = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "simple_rnn"}
_CELL_LAYER = {"LSTMCell": "lstm", "GRUCell": "gru", "SimpleRNNCell": "simple_rnn"}
_N_STATES = {"lstm": 2, "gru": 1, "simple_rnn": 1}
_STATE_NAMES = {"lstm": ("h", "c"), "gru": ("h",), "simple_rnn": ("h",)}
_CELL_FN = {"lstm": "_lstm", "gru": "_gru", "simple_rnn": "_simple_rnn"}
_MODULE_NAMES = {
    "MODEL", "INPUTS", "OUTPUTS", "WEIGHTS", "STATEFUL", "PADS", "FUSED_LSTM", "init", "apply",
    "debug", "pad", "from_canonical", "to_canonical", "jax", "jnp", "lax", "np", "zlib",
    "functools", "Any", "NamedTuple", "seqdsl",
}  # fmt: skip
_APPLY_LOCALS = {
    "l", "O", "I",  # ambiguous names (E741)
    "variables", "params", "state", "new_state", "training", "rng", "lengths", "masks",
    "dropout_masks", "return_state", "debug", "dtype", "outputs", "self",
}  # fmt: skip


def class_name(model: CheckedModel) -> str:
    """The name of the wrapper class in the emitted module."""
    name = model.name
    if name in _MODULE_NAMES or name in runtime_names() or keyword.iskeyword(name):
        name += "Model"
    return name


def instantiate(
    module: ModuleType,
    model: CheckedModel,
    weights: Mapping[str, np.ndarray],
    externs: Mapping[str, object] | None = None,
    dtype: str | None = None,
) -> object:
    """The emitted module's model class, loaded with canonical ``weights`` (it
    computes in the dtype of its weights and inputs). ``dtype="float64"`` needs
    jax_enable_x64 (``with jax.enable_x64(True):``): without it JAX would make the
    float64 weights float32, so it is a ValueError.

    ``externs``: implementations of extern layers (name -> function), before the
    registry; a missing implementation raises ``ExternError`` here."""
    import jax

    if dtype == "float64" and not jax.config.read("jax_enable_x64"):  # type: ignore[no-untyped-call]
        raise ValueError(
            'build("jax", dtype="float64") needs JAX\'s 64-bit mode: build and call the '
            "model inside `with jax.enable_x64(True):` (or set jax_enable_x64); without it "
            "JAX computes in float32"
        )
    cls = getattr(module, class_name(model))
    if model.externs:
        return cls(module.from_canonical(dict(weights)), externs=externs)
    return cls(module.from_canonical(dict(weights)))


def emit_model(model: CheckedModel, source: str) -> str:
    return _Emitter(model, source).module()


# --------------------------------------------------------------------------
# small helpers


def _home(kind: str, weight: str) -> str:
    """Where a weight lives in the variables: "params", or "state" for the moving
    statistics of BatchNormalization."""
    return "state" if kind == "BatchNormalization" and weight.startswith("moving_") else "params"


@functools.lru_cache(maxsize=4096)  # nested dims repeat their inner dims
def _fold(fn: str) -> Callable[[list[str]], str]:
    def expr(ins: list[str]) -> str:
        out = ins[0]
        for x in ins[1:]:
            out = f"jnp.{fn}({out}, {x})"
        return out

    return expr


#: elementwise merges (concat has its own code): fn -> the expression of the inputs
_MERGES: dict[str, Callable[[list[str]], str]] = {
    "add": lambda ins: " + ".join(ins),
    "subtract": lambda ins: f"{ins[0]} - {ins[1]}",
    "multiply": lambda ins: " * ".join(ins),
    "average": lambda ins: f"({' + '.join(ins)}) / {len(ins)}.0",
    "maximum": _fold("maximum"),
    "minimum": _fold("minimum"),
}


class _Namer:
    """Python identifiers for values: the value's own name unless it collides."""

    def __init__(self, reserved: set[str]):
        self.taken = set(reserved)
        self.of: dict[str, str] = {}

    def fresh(self, base: str) -> str:
        base = (
            base if base.isidentifier() else "v_" + "".join(c if c.isalnum() else "_" for c in base)
        )
        name, i = base, 2
        while name in self.taken or keyword.iskeyword(name):
            name = f"{base}_{i}"
            i += 1
        self.taken.add(name)
        return name

    def value(self, v: str) -> str:
        if v not in self.of:
            self.of[v] = self.fresh(v)
        return self.of[v]


# --------------------------------------------------------------------------
# the emitter


@dataclass
class _Apply:
    """One application of a built-in layer, as its method in the table sees it."""

    op: ApplyOp
    layer: LayerInfo
    cfg: Cfg
    #: the first input: its value name and its variable
    src: str
    x: str
    #: the mask the layer reads (the explicit one, else its input's) and its kind
    mask: str | None
    in_kind: MaskKind | None
    #: the layer's parameters and the variables of its results
    p: str
    res: list[str]

    @property
    def out(self) -> str:
        return self.res[0]


class _Emitter:
    def __init__(self, model: CheckedModel, source: str):
        self.m = model
        self.source = source
        reserved = (
            set(dir(builtins))
            | _MODULE_NAMES
            | _APPLY_LOCALS
            | runtime_names()
            | {class_name(model)}
        )
        if model.externs:
            reserved |= EXTERN_NAMES | {m.split(".")[0] for m in model.python_modules}
        self.names = _Namer(reserved)
        self.mask: dict[str, str | None] = {}
        self.by_op = {layer.op_index: layer for layer in model.layers}
        self.body = CodeWriter()
        self.body._level = 1
        self.n_keep = 0
        self.stateful: dict[str, tuple[int, int, tuple[str, ...]]] = {}
        self.bn_layers: list[str] = []
        self.pending: list[str] = []
        #: cell blocks: step function text (named __STEP__) -> its name; stateful cell layers
        self.cell_fns: dict[str, str] = {}
        self.cell_states: dict[str, tuple[int, tuple[tuple[int, ...], ...], tuple[str, ...]]] = {}

    def flush_debug(self) -> None:
        """The run-time checks of the last statement, under one ``if debug:``."""
        if not self.pending:
            return
        self.body("if debug:")
        for call in self.pending:
            self.body("    " + call)
        self.pending = []

    # ------------------------------------------------------------ types
    def tensor(self, v: str) -> TensorType:
        t = self.m.types[v]
        assert isinstance(t, TensorType), v
        return t

    def kind_of(self, v: str) -> MaskKind | None:
        t = self.m.types.get(v)
        if isinstance(t, MaskType):
            return t.kind
        if isinstance(t, TensorType):
            return t.mask
        return None

    def act(self, name: str) -> str:
        return ACTIVATION_EXPR[name]

    def cell_options(self, cell: str, c: Cfg) -> list[str]:
        """The keyword arguments of a built-in recurrent cell's function (_lstm, _gru,
        _simple_rnn) that come from its configuration, as `name=expr`."""
        kw: list[str] = []
        if c.text("activation") != "tanh":
            kw.append(f"activation={self.act(c.text('activation'))}")
        if cell != "simple_rnn" and c.text("recurrent_activation") != "sigmoid":
            kw.append(f"recurrent_activation={self.act(c.text('recurrent_activation'))}")
        if cell == "gru" and not c.flag("reset_after"):
            kw.append("reset_after=False")
        return kw

    # ------------------------------------------------------------ module
    def module(self) -> str:
        """The module: docstring, imports (what the code below reads), tables,
        cell step functions, extern lookup, then the model's functions and class."""
        m = self.m
        apply_text = self.apply_text()
        w = CodeWriter()
        t = CodeWriter()
        self.tables(t)
        w.lines.extend(fit(t.lines))
        n_tables = len(w.lines)  # literals only: no names to import
        if self.cell_fns:
            w("")
            w("")
            w(f"# {'-' * 74}")
            w("# cell blocks: one step function each, the cell's equations (lax.scan runs them)")
            for template, name in self.cell_fns.items():
                w("")
                w("")
                w.lines.extend(fit(template.replace("__STEP__", name, 1).split("\n")))
        if m.externs:
            w("")
            w("")
            w(f"# {'-' * 74}")
            w("# extern layers")
            w("")
            w.lines.extend(fit(externs_section(self)))
        w("")
        w("")
        w(f"# {'-' * 74}")
        w("# variables, padding and input checks")
        w.lines.extend(_glue_lines())
        w("")
        w("")
        t = CodeWriter()
        self.check_inputs(t)
        w.lines.extend(fit(t.lines))
        w("")
        w("")
        w(f"# {'-' * 74}")
        w("# the model")
        w("")
        w("")
        for line in apply_text:
            w(line)
        w("")
        w("")
        w.lines.extend(_class_lines(class_name(m), bool(m.externs)))
        imports = self.imports("\n".join(w.lines[n_tables:]))
        head = CodeWriter()
        self.header(head)
        return head.text() + "\n" + "\n".join(imports) + "\n" + w.text()

    def imports(self, code: str) -> list[str]:
        """The import block: the libraries and runtime names ``code`` reads, in ruff's order."""
        read = set(_NAMES.findall(code))
        items = [ImportItem("__future__", "annotations")]
        items += [_LIBRARIES[n] for n in sorted(read & set(_LIBRARIES))]
        items += [ImportItem(RUNTIME_MODULE, n) for n in sorted(read & runtime_names())]
        if self.m.externs:  # the modules of `use "..."` register the implementations
            items += [ImportItem(mod, comment="# noqa: F401") for mod in self.m.python_modules]
        return format_imports(items)

    def header(self, w: CodeWriter) -> None:
        m = self.m
        w(f'"""{m.name}: a JAX module generated by seqdsl from {self.source}.')
        w("")
        w("Pure JAX (jax.numpy, jax.lax), no neural-network library; weights in the")
        w("canonical (Keras) layout. The layers' functions (_lstm, _dense, ...) are those")
        w("of seqdsl.runtime.jax: imported, or copied in by `seqdsl compile --standalone`.")
        w("Usage:")
        w("")
        ins = ", ".join(i.name for i in m.model.inputs)
        w("    variables = init(jax.random.key(0))           # or from_canonical(weights)")
        w(f"    outputs = apply(variables, {ins})")
        w(f"    outputs, new_state = apply(variables, {ins}, return_state=True)")
        w(f"    model = {class_name(m)}(variables)              # keeps its state between calls")
        w("")
        w("apply(..., return_state=True) is THE way to get updated state: the")
        w("BatchNormalization moving statistics after a training step and the final")
        w("states of stateful recurrent layers. apply is jax.jit-able: `training` and")
        w("`return_state` are static Python values; lengths, masks and dropout masks")
        w("are arrays.")
        rnn = [layer for layer in m.layers if layer.kernels is not None]
        if rnn:
            w("")
            w("Recurrent kernels (lax.scan unless the fused cuDNN LSTM applies on a CUDA GPU):")
            for layer in rnn:
                kc = layer.kernels["jax"] if layer.kernels else None
                reason = f" ({kc.reason})" if kc is not None and kc.reason else ""
                w(f"    {layer.name}: {kc}{reason}")
        w('"""')

    def tables(self, w: CodeWriter) -> None:
        m = self.m
        w("")
        w(f"MODEL = {_lit(m.name)}")
        w("")
        w(
            "#: declared inputs, in order: name -> (dtype, dims); a dim is an int, a symbol or None (_)"
        )
        w("INPUTS = {")
        for inp in m.model.inputs:
            dtype = "mask" if inp.is_mask else inp.dtype
            dims = tuple(d.value for d in inp.dims)
            w(f"    # {_decl_text(inp)}")
            w(f"    {_lit(inp.name)}: ({_lit(dtype)}, {_lit(dims)}),")
        w("}")
        w(
            f"OUTPUTS = {_lit(tuple(o.name + (' with mask' if o.with_mask else '') for o in m.model.outputs))}"
        )
        w("")
        w("#: canonical weights, Keras layout and get_weights() order:")
        w("#: layer -> [(weight, shape, initializer, trainable, kept in 'params' or 'state')]")
        if not any(layer.weights for layer in m.layers):
            w("WEIGHTS = {}")
        else:
            w("WEIGHTS = {")
        for layer in m.layers:
            if not layer.weights:
                continue
            w(f"    {_lit(layer.name)}: [")
            for ws in layer.weights:
                where = _home(layer.kind, ws.name)
                w(
                    f"        ({_lit(ws.name)}, {_lit(ws.shape)}, {_lit(ws.initializer)}, {_lit(ws.trainable)}, {_lit(where)}),"
                )
            w("    ],")
        if any(layer.weights for layer in m.layers):
            w("}")
        w("")
        if self.cell_states:
            w("#: stateful recurrent layers: layer -> (batch, state shapes, state names)")
            w("STATEFUL = {")
            for layer in m.layers:
                if layer.name in self.stateful:
                    b, u, names = self.stateful[layer.name]
                    shapes: tuple[tuple[int, ...], ...] = ((u,),) * len(names)
                elif layer.name in self.cell_states:
                    b, shapes, names = self.cell_states[layer.name]
                else:
                    continue
                w(f"    {_lit(layer.name)}: ({b}, {_lit(shapes)}, {_lit(names)}),")
            w("}")
        elif not self.stateful:
            w("#: stateful recurrent layers: layer -> (batch, units, state names)")
            w("STATEFUL = {}")
        else:
            w("#: stateful recurrent layers: layer -> (batch, units, state names)")
            w("STATEFUL = {")
            for name, (b, u, names) in self.stateful.items():
                w(f"    {_lit(name)}: ({b}, {u}, {_lit(names)}),")
            w("}")
        w("")
        w("#: pad(...) declarations: input -> (side, value, maxlen, truncate, dtype, time dim)")
        pads = []
        for inp in m.model.inputs:
            pad = m.pads.get(inp.name)
            if pad is None:
                continue
            t = inp.dims[1].value if len(inp.dims) > 1 else None
            pads.append(
                f"    {_lit(inp.name)}: ({_lit(pad.side)}, {_lit(pad.value)}, {_lit(pad.maxlen)}, "
                f"{_lit(pad.truncate)}, {_lit(_NP_DTYPE[inp.dtype])}, {_lit(t)}),"
            )
        _dict(w, "PADS", pads)

    def check_inputs(self, w: CodeWriter) -> None:
        masked = tuple(inp.name for inp in self.m.model.inputs if inp.masked)
        call = f"_input_symbols(INPUTS, arrays, lengths, masks, {_lit(masked)})"
        w("def _check_inputs(*arrays, lengths=None, masks=None):")
        w('    """Static checks (shapes are known at trace time, also under jax.jit): ranks,')
        w("    declared sizes, dtype kinds, symbols agreeing across inputs (B, T, ...),")
        w("    lengths and masks, and the checker's run-time constraints. Returns the")
        w('    symbol values."""')
        if not self.m.constraints:
            w(f"    return {call}")
            return
        w(f"    env = {call}")
        for c in self.m.constraints:
            code, den = scaled_size_code(c.dim, "env")
            names = sorted(c.dim.symbols())
            cond = " and ".join(f'"{s}" in env' for s in names) or "True"
            values = f_string(constraint_values(c, "env"))
            w(f"    if {cond}:")
            if c.minimum is None:
                w(f"        _divisible({code}, {c.divisor * den}, {_lit(c.rule)}, {values})")
            else:
                least = _least(c, self.m.constraints)  # where it differs from the size's
                hint = "" if least in (None, c.minimum * den) else f", {least}"
                w(f"        _at_least({code}, {c.minimum * den}, {_lit(c.rule)}, {values}{hint})")
        w("    return env")

    # ------------------------------------------------------------ apply
    def apply_text(self) -> list[str]:
        m = self.m
        inputs = [(inp, self.names.value(inp.name)) for inp in m.model.inputs]
        # body first: it decides which helpers are used
        b = self.body
        b("params, state = variables['params'], variables['state']".replace("'", '"'))
        b("new_state = dict(state)")
        if m.externs:
            b("externs = _externs(externs)  # the given implementations, else seqdsl's registry")
        masked = [inp.name for inp in m.model.inputs if inp.masked]
        if masked:
            b(f'lengths = _named(lengths, {_lit(tuple(masked))}, "lengths")')
            b(f'masks = _named(masks, {_lit(tuple(masked))}, "masks")')
        b("dropout_masks = dropout_masks or {}")
        frozen = [
            layer.name
            for layer in m.layers
            if any(not w.trainable for w in layer.weights) and layer.kind != "BatchNormalization"
        ]
        if frozen:
            b("# trainable=false: no gradient flows into these weights")
            items = ", ".join(f"{_lit(n)}: lax.stop_gradient(params[{_lit(n)}])" for n in frozen)
            b(f"params = {{**params, {items}}}")
        b(f"_check_inputs({', '.join(v for _, v in inputs)}, lengths=lengths, masks=masks)")
        floats = [v for inp, v in inputs if not inp.is_mask and inp.dtype in ("f32", "f64")]
        b(f"dtype = _compute_dtype(params{''.join(', ' + v for v in floats)})")
        dtype_line = len(b.lines) - 1
        b("")
        for inp, v in inputs:
            self.emit_input(inp, v)
        for i, op in enumerate(m.model.ops):
            b("")
            if isinstance(op, DropMaskOp):
                src = self.names.value(op.input.name)
                out = self.names.value(op.results[0])
                b(f"{out} = {src}  # drop_mask: the mask is dropped on purpose")
                self.mask[op.results[0]] = None
            elif isinstance(op, MergeOp):
                self.emit_merge(op, self.by_op[i])
            else:
                self.emit_apply(op, self.by_op[i])
            self.flush_debug()
        b("")
        outs: list[str] = []
        for o in m.model.outputs:
            v = self.names.value(o.name)
            if o.with_mask:
                mk = self.mask.get(o.name)
                assert mk is not None
                outs.append(f"({v}, {mk})")
            else:
                outs.append(v)
        if len(outs) == 1:
            b(f"outputs = {outs[0]}")
        else:
            b(f"outputs = ({', '.join(outs)})")
        b("return (outputs, new_state) if return_state else outputs")
        if not any(re.search(r"\bdtype\b", line) for line in b.lines[dtype_line + 1 :]):
            del b.lines[dtype_line]

        w = CodeWriter()
        params = ", ".join(v for _, v in inputs)
        w(
            f"def apply(variables, {params}, *, training=False, rng=None, lengths=None, masks=None, "
            "dropout_masks=None, return_state=False, debug=False"
            + (", externs=None):" if m.externs else "):")
        )
        w.lines = fit(w.lines)
        w(f'    """Run {m.name}: inputs in declaration order, then keyword options.')
        w("")
        for inp, _ in inputs:
            w(f"    {_decl_text(inp)}")
        w("")
        w("    training: dropout on, batch statistics (a static Python bool).")
        w("    rng: a jax.random key for dropout masks not given in dropout_masks.")
        if masked:
            w("    lengths / masks: for the `masked` inputs, {name: lengths [B]} or")
            w("        {name: bool mask [B, T]} (a bare array when there is one).")
        w('    dropout_masks: keep-masks by key: "{layer}" for Dropout (the input\'s shape) and')
        w('        SpatialDropout1D ([B, 1, F]), "{layer}/input" [B, F] and "{layer}/recurrent"')
        w('        [B, U] for recurrent layers ("{layer}/forward/input" ... in Bidirectional),')
        w('        "{layer}" for the weights of an attention layer ([B, Tq, Tk],')
        w("        [B, heads, Tq, Tk]); kept values are divided by 1 - rate.")
        w("    return_state: also return the new state (BatchNormalization moving")
        w("        statistics, final states of stateful layers): (outputs, new_state).")
        w("    debug: verify declared mask kinds and lengths (concrete values, no jit).")
        if m.externs:
            w("        Extern layers: their outputs against the declarations (also under jit).")
            w("    externs: implementations of extern layers by name (function or")
            w("        seqdsl.externs.Impl), before seqdsl's registry.")
        w("")
        descr = []
        for o in m.model.outputs:
            descr.append(f"({o.name}, its mask)" if o.with_mask else o.name)
        w(f"    Returns {', '.join(descr) if len(descr) == 1 else '(' + ', '.join(descr) + ')'}.")
        w('    """')
        w.lines.extend(fit(self.body.lines))
        return w.lines

    def emit_input(self, inp: InputDecl, v: str) -> None:
        b = self.body
        decl = _decl_text(inp)
        if inp.is_mask:
            b(f"{v} = jnp.asarray({v}, bool)  # explicit mask input: {decl}")
            self.mask[inp.name] = None
            kind = self.kind_of(inp.name)
            if kind is not None and (kind.side != "any" or kind.nonempty):
                hint = "pass a mask of the declared kind, or declare it `mask[B, T]` (kind any)"
                self.pending.append(
                    f"_check_mask({v}, {_lit(kind.side)}, {_lit(kind.nonempty)}, "
                    f"{_lit('mask input `' + decl + '`')}, {_lit(hint)})"
                )
                self.flush_debug()
            return
        if inp.dtype in ("f32", "f64"):
            b(f"{v} = jnp.asarray({v}, dtype)  # {decl}")
        else:
            b(f"{v} = jnp.asarray({v})  # {decl}")
        t = self.tensor(inp.name)
        if inp.masked and t.mask is not None:
            mk = self.names.fresh(f"{v}_mask")
            b(
                f"{mk} = _input_mask({_lit(inp.name)}, {v}, {_lit(t.mask.side)}, lengths, masks)  # mask {t.mask}"
            )
            self.mask[inp.name] = mk
            self.pending.append(
                f"_check_lengths({_lit(inp.name)}, {v}, lengths, {_lit(t.mask.nonempty)})"
            )
            if t.mask.side != "any" or t.mask.nonempty:
                hint = "pass lengths=, or a mask of the declared side"
                self.pending.append(
                    f"_check_mask({mk}, {_lit(t.mask.side)}, {_lit(t.mask.nonempty)}, "
                    f"{_lit('input `' + decl + '`')}, {_lit(hint)})"
                )
            self.flush_debug()
        else:
            self.mask[inp.name] = None

    # ------------------------------------------------------------ merges
    def emit_merge(self, op: MergeOp, layer: LayerInfo) -> None:
        b = self.body
        ins = [self.names.value(u.name) for u in op.inputs]
        out = self.names.value(op.results[0])
        fn = op.fn
        b(f"# {layer.name}: {fn}({', '.join(u.name for u in op.inputs)}"
          + (f", axis={layer.config.get('axis')}" if fn == "concat" else "") + ")")  # fmt: skip
        first = self.tensor(op.inputs[0].name)
        masks = [self.mask.get(u.name) for u in op.inputs]
        time_concat = False
        if fn == "concat":
            axis = layer.config.get("axis", "features")
            if axis == "features":
                ax = first.rank - 1
            elif axis == "time":
                ax = 1
            else:
                assert isinstance(axis, int)
                ax = axis % first.rank
            time_concat = ax == 1  # rank 2 too: the last axis of ids [B, T] is time
            b(
                f"{out} = jnp.concatenate([{', '.join(ins)}], axis={-1 if ax == first.rank - 1 else ax})"
            )
        elif fn in _MERGES:
            b(f"{out} = {_MERGES[fn](ins)}")
        else:  # pragma: no cover - catalogue and emitter out of step
            raise Unsupported(layer.name, f"merge {fn}")
        kind = self.kind_of(op.results[0])
        if kind is None:
            self.mask[op.results[0]] = None
            return
        mk = self.names.fresh(f"{out}_mask")
        if time_concat:
            parts = [
                m if m is not None else f"_all_valid({x})" for m, x in zip(masks, ins, strict=True)
            ]
            b(
                f"{mk} = jnp.concatenate([{', '.join(parts)}], axis=1)  # masks joined in time: {kind}"
            )
        else:
            present = [m for m in masks if m is not None]
            if len(present) == 1:
                self.mask[op.results[0]] = present[0]
                b(f"# mask: {present[0]} ({kind}); an unmasked input imposes nothing")
                return
            b(f"{mk} = {' & '.join(present)}  # the AND of the input masks: {kind}")
        self.mask[op.results[0]] = mk

    # ------------------------------------------------------------ layers
    def training_expr(self, op: ApplyOp) -> str:
        if op.training is not None:
            return "True" if op.training.value else "False"
        return "training"

    def keep(self, key: str, shape: str, rate: float) -> str:
        idx = self.n_keep
        self.n_keep += 1
        return f"_keep(dropout_masks, rng, {_lit(key)}, {idx}, {shape}, {_lit(rate)}, dtype)"

    def emit_apply(self, op: ApplyOp, layer: LayerInfo) -> None:
        """One layer application: extern layers and cell blocks have their own
        emitters (jax_cells); every built-in kind its method in :attr:`LAYERS`."""
        kind = layer.kind
        if kind in self.m.externs:
            return emit_extern(self, op, layer)
        if kind in ("RNN", "Bidirectional") and is_cell_layer(layer.config):
            return emit_cell_rnn(self, op, layer)
        method = self.LAYERS.get(kind)
        if method is None:
            raise Unsupported(layer.name, f"the JAX backend has no implementation of {kind}")
        src = op.inputs[0].name
        x = self.names.value(src)
        mask: str | None
        if op.mask is not None:
            mask = self.mask.get(op.mask.name) or self.names.value(op.mask.name)
            in_kind = self.kind_of(op.mask.name)
        else:
            mask = self.mask.get(src)
            in_kind = self.kind_of(src)
        a = _Apply(
            op=op,
            layer=layer,
            cfg=Cfg(layer.config),
            src=src,
            x=x,
            mask=mask,
            in_kind=in_kind,
            # a layer without parameters (LayerNormalization(center=false, scale=false))
            # has no entry in params
            p=f"params[{_lit(layer.name)}]"
            if any(_home(layer.kind, w.name) == "params" for w in layer.weights)
            else "{}",
            res=[self.names.value(r) for r in op.results],
        )
        self.body(
            f"# {layer.name}: {_describe(kind, layer.config)}"
            + (f" -- input mask {in_kind}" if mask else "")
        )
        method(self, a)

    def out_mask(self, a: _Apply) -> str:
        """A fresh name for the output's mask, or ``_`` when the output has none."""
        if self.kind_of(a.op.results[0]) is None:
            return "_"
        return self.names.fresh(f"{a.out}_mask")

    # one method per layer kind or family (the table LAYERS below)

    def layer_embedding(self, a: _Apply) -> None:
        b = self.body
        b(f"{a.out} = _embedding({a.p}, {a.x})")
        self.emit_debug_ids(a.x, a.layer)
        okind = self.kind_of(a.op.results[0])
        if not a.cfg.flag("mask_zero"):
            self.mask[a.op.results[0]] = a.mask  # the ids' own mask (a `masked` input), if any
        elif okind is not None:
            mk = self.names.fresh(f"{a.out}_mask")
            b(f"{mk} = {a.x} != 0  # mask_zero: id 0 is padding -> mask {okind}")
            self.mask[a.op.results[0]] = mk
            self.emit_declared_check(mk, okind, a.layer, a.src, "Embedding(mask_zero=true) masks id 0",
                                     "an id 0 inside the data? Keep id 0 for padding only")  # fmt: skip
        else:
            self.mask[a.op.results[0]] = None

    def layer_masking(self, a: _Apply) -> None:
        mk = self.names.fresh(f"{a.out}_mask")
        okind = self.kind_of(a.op.results[0])
        value = a.cfg.number("mask_value")
        self.body(f"{a.out}, {mk} = _masking({a.x}, {_lit(value)})  # mask {okind}")
        self.mask[a.op.results[0]] = mk
        if okind is not None:
            self.emit_declared_check(
                mk,
                okind,
                a.layer,
                a.src,
                f"Masking(mask_value={_fmt_value(a.cfg.raw('mask_value'))}) masks steps whose features all equal it",
                "a step of data with every feature equal to the padding value?",
            )

    def layer_per_step(self, a: _Apply) -> None:
        """Dense, Activation, Dropout, LayerNormalization: the last axis, every step."""
        self.PER_STEP[a.layer.kind](self, a.cfg, a)
        self.mask[a.op.results[0]] = a.mask

    def layer_time_distributed(self, a: _Apply) -> None:
        inner = a.cfg.layer("layer")
        self.body(f"# the inner {inner.kind} acts on the last axis, at every step at once")
        self.PER_STEP[inner.kind](self, Cfg(inner.config), a)
        self.mask[a.op.results[0]] = a.mask

    def layer_batch_norm(self, a: _Apply) -> None:
        tr = self.training_expr(a.op)
        if a.cfg.raw("trainable") is False:
            tr = "False"  # Keras: a frozen BatchNormalization runs in inference mode
        name = _lit(a.layer.name)
        self.body(
            f"{a.out}, new_state[{name}] = _batch_norm({a.p}, state[{name}], {a.x}, "
            f"{a.mask or 'None'}, {tr}, momentum={_lit(a.cfg.number('momentum'))}, "
            f"epsilon={_lit(a.cfg.number('epsilon'))})"
        )
        self.bn_layers.append(a.layer.name)
        self.mask[a.op.results[0]] = a.mask

    def layer_conv1d(self, a: _Apply) -> None:
        c = a.cfg
        mk = self.out_mask(a)
        self.body(
            f"{a.out}, {mk} = _conv1d({a.p}, {a.x}, {a.mask or 'None'}, "
            f"kernel_size={c.integer('kernel_size')}, strides={c.integer('strides')}, "
            f"dilation={c.integer('dilation_rate')}, padding={_lit(c.text('padding'))}, "
            f"activation={self.act(c.text('activation'))})"
        )
        self.mask[a.op.results[0]] = mk if mk != "_" else None

    def layer_pool(self, a: _Apply) -> None:
        c = a.cfg
        pool_size = c.integer("pool_size")
        strides = c.opt_integer("strides")
        mk = self.out_mask(a)
        kind = "max" if a.layer.kind.startswith("Max") else "average"
        self.body(
            f"{a.out}, {mk} = _pool({a.x}, {a.mask or 'None'}, {_lit(kind)}, "
            f"pool_size={pool_size}, strides={pool_size if strides is None else strides}, "
            f"padding={_lit(c.text('padding'))})"
        )
        self.mask[a.op.results[0]] = mk if mk != "_" else None

    def layer_global_pool(self, a: _Apply) -> None:
        kind = "max" if "Max" in a.layer.kind else "average"
        self.body(
            f"{a.out} = _global_pool({a.x}, {a.mask or 'None'}, {_lit(kind)}, "
            f"keepdims={_lit(a.cfg.flag('keepdims'))})"
        )
        self.mask[a.op.results[0]] = None

    def layer_flatten(self, a: _Apply) -> None:
        self.body(f"{a.out} = {a.x}.reshape({a.x}.shape[0], -1)")
        self.mask[a.op.results[0]] = None

    def layer_reshape(self, a: _Apply) -> None:
        target = ", ".join(str(t) for t in a.cfg.integers("target_shape"))
        self.body(f"{a.out} = {a.x}.reshape({a.x}.shape[0], {target})")
        self.mask[a.op.results[0]] = None

    def layer_temporal_softmax(self, a: _Apply) -> None:
        self.body(f"{a.out} = _temporal_softmax({a.x}, {a.mask})  # no output mask")
        self.mask[a.op.results[0]] = None

    def layer_temporal_split(self, a: _Apply) -> None:
        b = self.body
        n = a.cfg.integer("parts")
        res = a.res
        b(
            f"{', '.join(res)} = jnp.split({a.x}, {n}, axis=1)"
            if len(res) > 1
            else f"({res[0]},) = jnp.split({a.x}, 1, axis=1)"
        )
        if a.mask is not None:
            mks = [self.names.fresh(f"{r}_mask") for r in res]
            lhs = ", ".join(mks) if len(mks) > 1 else f"({mks[0]},)"
            b(f"{lhs} = jnp.split({a.mask}, {n}, axis=1)  # masks split likewise")
            for r, mk in zip(a.op.results, mks, strict=True):
                self.mask[r] = mk
        else:
            for r in a.op.results:
                self.mask[r] = None

    def layer_recurrent(self, a: _Apply) -> None:
        self.emit_recurrent(a.op, a.layer, a.x, a.mask, a.in_kind, a.res)

    def layer_attention(self, a: _Apply) -> None:
        """Attention, MultiHeadAttention: (query, value[, key]): each brings its own
        mask; a key step is valid where the value's and the key's masks both are."""
        op, layer, res = a.op, a.layer, a.res
        b = self.body
        cfg = a.cfg
        kind = layer.kind
        xs = [self.names.value(u.name) for u in op.inputs]
        q_mask = self.mask.get(op.inputs[0].name)
        key_masks = list(
            dict.fromkeys(m for m in (self.mask.get(u.name) for u in op.inputs[1:]) if m)
        )
        key_mask = " & ".join(key_masks) if key_masks else "None"
        causal = cfg.flag("use_causal_mask")
        rate = cfg.number("dropout")
        tr = self.training_expr(op)
        keep = "None"
        if rate > 0 and tr != "False":
            q, v = xs[0], xs[1]
            heads = "" if kind == "Attention" else f"{cfg.integer('num_heads')}, "
            shape = f"({q}.shape[0], {heads}{q}.shape[1], {v}.shape[1])"
            keep = self.names.fresh(f"{layer.name}_keep")
            expr = self.keep(layer.name, shape, rate)
            b("# dropout on the attention weights: keep-mask / (1 - rate)")
            b(f"{keep} = {expr}" if tr == "True" else f"{keep} = {expr} if training else None")
        p = f"params[{_lit(layer.name)}]" if layer.weights else "{}"
        args = [p, *xs]
        if q_mask:
            args.append(f"query_mask={q_mask}")
        if key_mask != "None":
            args.append(f"key_mask={key_mask}")
        fn = "_attention" if kind == "Attention" else "_multi_head_attention"
        if kind == "Attention" and cfg.text("score_mode") != "dot":
            args.append(f"score_mode={_lit(cfg.text('score_mode'))}")
        if causal:
            args.append("causal=True")
        if keep != "None":
            args.append(f"keep={keep}")
        lhs = f"{res[0]}, {res[1]}" if len(res) > 1 else f"{res[0]}, _"
        b(f"{lhs} = {fn}({', '.join(args)})")
        self.mask[op.results[0]] = q_mask if self.kind_of(op.results[0]) is not None else None
        for r in op.results[1:]:
            self.mask[r] = None

    # the per-step layers (alone or inside TimeDistributed): the table PER_STEP

    def step_dense(self, c: Cfg, a: _Apply) -> None:
        self.body(f"{a.out} = _dense({a.p}, {a.x}, {self.act(c.text('activation'))})")

    def step_activation(self, c: Cfg, a: _Apply) -> None:
        self.body(f"{a.out} = {self.act(c.text('activation'))}({a.x})")

    def step_layer_norm(self, c: Cfg, a: _Apply) -> None:
        self.body(f"{a.out} = _layer_norm({a.p}, {a.x}, epsilon={_lit(c.number('epsilon'))})")

    def step_dropout(self, c: Cfg, a: _Apply) -> None:
        self.dropout(a, c.number("rate"), spatial=False)

    def layer_spatial_dropout(self, a: _Apply) -> None:
        self.dropout(a, a.cfg.number("rate"), spatial=True)
        self.mask[a.op.results[0]] = a.mask

    def dropout(self, a: _Apply, rate: float, spatial: bool) -> None:
        """Dropout (one keep-mask entry per element) and SpatialDropout1D (one per row
        and channel, for every step), under the call's training flag."""
        b = self.body
        tr = self.training_expr(a.op)
        x, out = a.x, a.out
        if tr == "False" or rate == 0.0:
            b(f"{out} = {x}  # dropout is the identity in inference")
            return
        if spatial:
            index = self.n_keep
            self.n_keep += 1
            args = f"{x}, dropout_masks, rng, {_lit(a.layer.name)}, {index}, {_lit(rate)}, dtype"
            value, note = f"_spatial_dropout_1d({args})", "whole channels: keep-mask [B, 1, F]"
        else:
            keep = self.keep(a.layer.name, f"{x}.shape", rate)
            value, note = f"{x} * {keep}", "inverted dropout: keep-mask / (1 - rate)"
        if tr == "True":
            b(f"{out} = {value}  # {note}")
        else:
            b(f"if training:  # {note}")
            b(f"    {out} = {value}")
            b("else:")
            b(f"    {out} = {x}")

    PER_STEP: ClassVar[dict[str, Callable[[_Emitter, Cfg, _Apply], None]]] = {
        "Dense": step_dense,
        "Activation": step_activation,
        "LayerNormalization": step_layer_norm,
        "Dropout": step_dropout,
    }

    def emit_debug_ids(self, x: str, layer: LayerInfo) -> None:
        self.pending.append(f"_check_ids({x}, {layer.config['input_dim']}, {_lit(layer.name)})")

    def emit_declared_check(
        self, mk: str, kind: MaskKind, layer: LayerInfo, src: str, what: str, hint: str
    ) -> None:
        if kind.side == "any" and not kind.nonempty:
            return
        t = self.m.types.get(src)
        decl = None
        if isinstance(t, TensorType) and t.padded_from is not None:
            for inp in self.m.model.inputs:
                if inp.name == t.padded_from:
                    decl = f"`input {_decl_text(inp)}`"
        where = f"{layer.name}: {what}; its mask is declared by {decl or 'the padding declaration'}"
        self.pending.append(
            f"_check_mask({mk}, {_lit(kind.side)}, {_lit(kind.nonempty)}, {_lit(where)}, {_lit(hint)})"
        )

    def cell_function(self, bc: BoundCell) -> str:
        """The name of the step function of a bound cell (one per distinct text)."""
        template = "\n".join(cell_step_function(bc, "__STEP__"))
        if template not in self.cell_fns:
            self.cell_fns[template] = self.names.fresh(f"_{snake_case(bc.cdef.name)}")
        return self.cell_fns[template]

    # ------------------------------------------------------------ recurrent
    def emit_recurrent(self, op: ApplyOp, layer: LayerInfo, x: str, mask: str | None,
                       in_kind: MaskKind | None, res: list[str]) -> None:  # fmt: skip
        b = self.body
        cfg = Cfg(layer.config)
        bi = layer.kind == "Bidirectional"
        if bi:
            inner = cfg.layer("layer")
            rkind, rcfg = inner.kind, Cfg(inner.config)
            merge_mode = cfg.text("merge_mode")
        else:
            rkind, rcfg = layer.kind, cfg
            merge_mode = "concat"
        if rkind == "RNN":
            cell_bl = rcfg.layer("cell")
            cell, ccfg = _CELL_LAYER[cell_bl.kind], Cfg(cell_bl.config)
        else:
            cell, ccfg = _CELL_OF[rkind], rcfg
        units = ccfg.integer("units")
        n_states = _N_STATES[cell]
        dirs = 2 if bi else 1
        rs = rcfg.flag("return_sequences")
        rst = rcfg.flag("return_state")
        go_back = "go_backwards" in rcfg and rcfg.flag("go_backwards")
        stateful = "stateful" in rcfg and rcfg.flag("stateful")
        masked_output = rcfg.text("masked_output") if "masked_output" in rcfg else "zero"
        tr = self.training_expr(op)
        fn = _CELL_FN[cell]

        # keyword arguments of the cell
        kw = self.cell_options(cell, ccfg)
        if bi and isinstance(cfg.raw("backward_layer"), BoundLayer):
            # Keras' backward_layer: the backward direction's own cell options
            back = backward_of(layer.config)
            bcfg = Cfg(back.config)
            if back.kind == "RNN":
                bcfg = Cfg(bcfg.layer("cell").config)
            bkw = self.cell_options(cell, bcfg)
            if bkw != kw:
                kw.append("backward={" + ", ".join(
                    f"{_lit(k)}: {v}" for k, _, v in (a.partition("=") for a in bkw)) + "}")  # fmt: skip
        if not bi:
            if go_back:
                kw.append("go_backwards=True")
            if rs:
                kw.append("return_sequences=True")
        if masked_output != "zero":
            kw.append(f"masked_output={_lit(masked_output)}")
        kc = layer.kernels["jax"] if layer.kernels else None
        fused = cell == "lstm" and kc is not None and kc.kernel.startswith("cudnn")
        if fused:
            side = in_kind.side if (mask is not None and in_kind is not None) else "post"
            kw.append(f"fused={_lit(side)}")

        # dropout keep-masks (training only)
        rates = [(ccfg.number("dropout"), ccfg.number("recurrent_dropout"))]
        if bi:  # the backward direction: its backward_layer's own rates
            back_cell = backward_of(layer.config)
            bc = Cfg(back_cell.config)
            bc = Cfg(bc.layer("cell").config) if back_cell.kind == "RNN" else bc
            rates.append((bc.number("dropout"), bc.number("recurrent_dropout")))
        prefixes = [f"{layer.name}/forward", f"{layer.name}/backward"] if bi else [layer.name]
        keeps_in: list[str] = []  # per direction; "None" where it has no dropout
        keeps_rec: list[str] = []
        assigns: list[str] = []
        if tr != "False" and any(r > 0 or rr > 0 for r, rr in rates):
            for pre, (rate, rrate) in zip(prefixes, rates, strict=True):
                tag = pre.rsplit("/", 1)[-1] + "_" if bi else ""
                if rate > 0:
                    v = self.names.fresh(f"{layer.name}_{tag}input_keep")
                    assigns.append(
                        f"{v} = {self.keep(pre + '/input', f'({x}.shape[0], {x}.shape[2])', rate)}"
                    )
                    keeps_in.append(v)
                elif any(r > 0 for r, _ in rates):
                    keeps_in.append("None")
                if rrate > 0:
                    v = self.names.fresh(f"{layer.name}_{tag}recurrent_keep")
                    assigns.append(
                        f"{v} = {self.keep(pre + '/recurrent', f'({x}.shape[0], {units})', rrate)}"
                    )
                    keeps_rec.append(v)
                elif any(rr > 0 for _, rr in rates):
                    keeps_rec.append("None")
            b("# dropout keep-masks: one per sequence, constant over time")
            if tr == "training":
                allk = [k for k in keeps_in + keeps_rec if k != "None"]
                b(f"{' = '.join(allk)} = None")
                b("if training:")
                for a in assigns:
                    b("    " + a)
            else:
                for a in assigns:
                    b(a)
        if keeps_in:
            kw.append(f"input_keeps=({', '.join(keeps_in)})" if bi else f"input_keep={keeps_in[0]}")
        if keeps_rec:
            kw.append(
                f"recurrent_keeps=({', '.join(keeps_rec)})"
                if bi
                else f"recurrent_keep={keeps_rec[0]}"
            )

        # initial states
        # a stateful Bidirectional: each direction carries its own states
        state_names = (
            tuple(f"{d}/{k}" for d in ("forward", "backward") for k in _STATE_NAMES[cell])
            if bi
            else _STATE_NAMES[cell]
        )
        if stateful:
            batch = self.tensor(op.inputs[0].name).batch
            assert batch is not None and batch.value is not None
            self.stateful[layer.name] = (batch.value, units, state_names)
        if op.initial_state is not None:
            given = [self.names.value(s.name) for s in op.initial_state]
            per_dir = [given[d * n_states : (d + 1) * n_states] for d in range(dirs)]
            init = ["(" + ", ".join(s) + ("," if len(s) == 1 else "") + ")" for s in per_dir]
        elif stateful:
            init = [
                "("
                + ", ".join(f"state[{_lit(layer.name)}][{_lit(k)}]" for k in names)
                + ("," if n_states == 1 else "")
                + ")"
                for names in (state_names[:n_states], state_names[n_states:])[:dirs]
            ]
        else:
            init = [f"_zero_states({x}, {units}, {n_states})"] * dirs

        rv = self.names.fresh(f"{layer.name}_rnn")
        m_arg = mask or "None"
        p = f"params[{_lit(layer.name)}]"
        if bi:
            head = "_bidirectional_lstm(" if fused else f"_bidirectional({fn}, "
            call = (
                f"{rv} = {head}{p}, {x}, {m_arg}, {init[0]}, {init[1]}, "
                f"merge_mode={_lit(merge_mode)}, return_sequences={_lit(rs)}"
            )
        else:
            call = f"{rv} = {fn}({p}, {x}, {m_arg}, {init[0]}"
        b(call + "".join(", " + a for a in kw) + ")")
        if stateful:
            b(
                f"new_state[{_lit(layer.name)}] = dict(zip({_lit(state_names)}, {rv}.states, strict=True))  # carried to the next call"
            )

        # results
        n_main = 2 if bi and merge_mode == "none" else 1
        main = res[:n_main]
        attr = "sequence" if rs else "last"
        if n_main == 2:
            b(f"{main[0]}, {main[1]} = {rv}.{attr}")
        else:
            b(f"{main[0]} = {rv}.{attr}")
        if rst:
            st = res[n_main:]
            b(
                f"({', '.join(st)},) = {rv}.states"
                if len(st) == 1
                else f"{', '.join(st)} = {rv}.states"
            )
            for r in op.results[n_main:]:
                self.mask[r] = None
        for r in op.results[:n_main]:
            okind = self.kind_of(r)
            if okind is None or mask is None:
                self.mask[r] = None
            elif go_back and not bi:
                mk = self.names.fresh(f"{self.names.value(r)}_mask")
                b(
                    f"{mk} = jnp.flip({mask}, axis=1)  # go_backwards: outputs in reversed time order"
                )
                self.mask[r] = mk
            else:
                self.mask[r] = mask

    #: layer kind -> its method (built-in layers; extern layers and cell blocks
    #: go to jax_cells)
    LAYERS: ClassVar[dict[str, Callable[[_Emitter, _Apply], None]]] = {
        "Embedding": layer_embedding,
        "Masking": layer_masking,
        "Dense": layer_per_step,
        "Activation": layer_per_step,
        "Dropout": layer_per_step,
        "SpatialDropout1D": layer_spatial_dropout,
        "LayerNormalization": layer_per_step,
        "TimeDistributed": layer_time_distributed,
        "BatchNormalization": layer_batch_norm,
        "Conv1D": layer_conv1d,
        "MaxPooling1D": layer_pool,
        "AveragePooling1D": layer_pool,
        "GlobalMaxPooling1D": layer_global_pool,
        "GlobalAveragePooling1D": layer_global_pool,
        "Flatten": layer_flatten,
        "Reshape": layer_reshape,
        "TemporalSoftmax": layer_temporal_softmax,
        "TemporalSplit": layer_temporal_split,
        "LSTM": layer_recurrent,
        "GRU": layer_recurrent,
        "SimpleRNN": layer_recurrent,
        "RNN": layer_recurrent,
        "Bidirectional": layer_recurrent,
        "Attention": layer_attention,
        "MultiHeadAttention": layer_attention,
    }


WIDTH = 100


def _dict(w: CodeWriter, name: str, entries: Sequence[str]) -> None:
    if not entries:
        w(f"{name} = {{}}")
        return
    w(f"{name} = {{")
    for e in entries:
        w(e)
    w("}")


def _least(c: Constraint, constraints: Sequence[Constraint]) -> int | None:
    """The least size of the one symbol of a ``dim >= k`` constraint that meets it and
    every other such constraint on that symbol alone (the lower bound a jax.export
    symbol needs, one for them all), None with several symbols."""
    names = c.dim.symbols()
    if len(names) != 1:
        return None
    (name,) = names
    bounds = [b for b in constraints if b.minimum is not None and b.dim.symbols() == names]
    return next((n for n in range(1, 100_000) if all(b.holds({name: n}) for b in bounds)), None)


def fit(lines: Sequence[str], width: int = WIDTH) -> list[str]:
    """Lay out generated lines the way ruff format would: a statement too long
    for one line has its trailing comment moved above it and its last bracket
    pair split (the arguments on one indented line if they fit, else one per
    line with a trailing comma)."""
    out: list[str] = []
    for line in lines:
        out.extend(_fit_line(line, width))
    return out


def _fit_line(line: str, width: int) -> list[str]:
    if len(line) <= width:
        return [line]
    indent = line[: len(line) - len(line.lstrip())]
    code, comment = _split_comment(line.strip())
    if not code:
        return [line]
    pre = [indent + comment] if comment else []
    if len(indent) + len(code) <= width:
        return pre + [indent + code]
    tail = ":" if code.endswith("):") else ""
    body = code[: len(code) - len(tail)]
    open_at = _matching_open(body)
    if open_at is None:
        return pre + [indent + code]
    head, args = body[: open_at + 1], body[open_at + 1 : -1]
    inner = indent + "    "
    parts = [a.strip() for a in _split_args(args)]
    hug = inner + ", ".join(parts)
    if len(hug) <= width and not head.lstrip().startswith("def "):
        return pre + [indent + head, hug, indent + ")" + tail]
    lines = [indent + head]
    for a in parts:
        lines.extend(_fit_line(inner + a + ",", width))
    return pre + lines + [indent + ")" + tail]


#: the characters that the line-fitting scans act on; the ones between are skipped
_QUOTE_OR_HASH = re.compile(r"[\"'#]")
_BRACKET_OR_QUOTE = re.compile(r"[()\[\]{}\"']")
_ARG_CHARS = re.compile(r'[()\[\]{}",\\]')


def _split_comment(code: str) -> tuple[str, str]:
    """(code, comment) of a line: the first ``#`` outside a string."""
    if "#" not in code:
        return code, ""
    quote = ""
    for m in _QUOTE_OR_HASH.finditer(code):
        i, ch = m.start(), m.group()
        if quote:
            if ch == quote and code[i - 1] != "\\":
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return code[:i].rstrip(), code[i:]
    return code, ""


def _matching_open(code: str) -> int | None:
    """Index of the bracket opening the one that ends ``code``."""
    if not code.endswith(")"):
        return None
    depth, quote = 0, ""
    for m in reversed(list(_BRACKET_OR_QUOTE.finditer(code))):
        i, ch = m.start(), m.group()
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in ")]}":
            depth += 1
        elif ch in "([{":
            depth -= 1
            if depth == 0:
                return i
    return None


def _split_args(text: str) -> list[str]:
    """Split a comma-separated argument list at depth 0."""
    out, depth, start, quote, escaped, after = [], 0, 0, False, False, -1
    for m in _ARG_CHARS.finditer(text):
        i, ch = m.start(), m.group()
        if quote:
            if i != after:  # an ordinary character came in between: it ends an escape
                escaped = False
            quote = escaped or ch != '"'
            escaped = not escaped and ch == "\\"
        elif ch == '"':
            quote = True
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0 and not quote:
            out.append(text[start:i])
            start = i + 1
        after = i + 1
    if text[start:].strip():
        out.append(text[start:])
    return out


def _glue_lines() -> list[str]:
    """init, from_canonical, to_canonical and pad: the runtime's, on this module's tables."""
    w = CodeWriter()
    w("")
    w("")
    w("def init(rng_key, dtype=jnp.float32):")
    w('    """Fresh variables: each layer\'s weights drawn from its own stream')
    w("    (rng_key folded with a hash of the layer name), Keras' formulas. (The")
    w("    seeded weights of seqdsl's build() come from NumPy instead; they are")
    w('    loaded with from_canonical.)"""')
    w("    return from_canonical(_init_weights(WEIGHTS, rng_key, dtype))")
    w("")
    w("")
    w("def from_canonical(weights):")
    w('    """Variables from canonical weights {"layer/weight": array} (Keras layout).')
    w("")
    w('    Returns {"params": {layer: {weight: array}}, "state": {...}}: the state holds')
    w("    BatchNormalization's moving statistics and the (zero) states of stateful")
    w('    recurrent layers. Arrays keep their dtype (float64 needs jax_enable_x64)."""')
    w("    return _from_canonical(WEIGHTS, STATEFUL, weights)")
    w("")
    w("")
    w("def to_canonical(variables):")
    w(
        '    """Canonical weights {"layer/weight": numpy array} (bit-exact inverse of from_canonical)."""'
    )
    w("    return _to_canonical(WEIGHTS, variables)")
    w("")
    w("")
    w("def pad(*raw):")
    w('    """Pad ragged data by the pad(...) declarations (keras.utils.pad_sequences')
    w("    semantics, in the declared dtype): one list of sequences per padded input,")
    w("    in declaration order. Returns (batch, lengths) for one input, a tuple of")
    w('    them for several. Inputs sharing a time symbol are padded to one length."""')
    w("    return _pad(PADS, raw)")
    return w.lines


def _class_lines(name: str, externs: bool) -> list[str]:
    """debug() and the model class (the runtime's _Model, or _ExternModel, on this module)."""
    w = CodeWriter()
    w("def debug(variables, *inputs, **options):")
    w('    """apply(..., debug=True), outside jax.jit: also verifies at run time what')
    w("    the checker took from declarations: mask kinds (a `post` mask really is")
    w("    right-padded, e.g. no id 0 inside the data under pad(post, value=0) with")
    w('    Embedding(mask_zero=true)), nonempty rows, lengths in range, ids in range."""')
    w("    return apply(variables, *inputs, debug=True, **options)")
    w("")
    w("")
    w(f"class {name}({'_ExternModel' if externs else '_Model'}):")
    w('    """The model with its variables. Calling it runs apply (jitted) and keeps')
    w("    the new state (BatchNormalization statistics after training calls, the")
    if externs:
        w("    states of stateful recurrent layers) for the next call. The implementations")
        w("    of its extern layers are found when it is built (`externs=`, then seqdsl's")
        w('    registry)."""')
    else:
        w('    states of stateful recurrent layers) for the next call."""')
    w("")
    w("    init = staticmethod(init)")
    w("    apply = staticmethod(apply)")
    w("    pad = staticmethod(pad)")
    w("    from_canonical = staticmethod(from_canonical)")
    w("    to_canonical = staticmethod(to_canonical)")
    if externs:
        w("    resolve_externs = staticmethod(_externs)")
    w("    stateful = STATEFUL")
    return w.lines


#: library names generated code may read -> the import that binds them
_LIBRARIES = {
    "functools": ImportItem("functools"),
    "zlib": ImportItem("zlib"),
    "jax": ImportItem("jax"),
    "jnp": ImportItem("jax.numpy", alias="jnp"),
    "lax": ImportItem("jax", "lax"),
    "np": ImportItem("numpy", alias="np"),
    "get_extern": ImportItem("seqdsl.externs", "get_extern"),
}

#: the names code reads: group 1 of each match, the first part of a dotted name
#: (`jnp.split` reads jnp); strings (docstrings, messages) and comments match
#: without a group, so their words are not names
_NAMES = re.compile(
    r'"""[\s\S]*?"""|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|#[^\n]*|([A-Za-z_]\w*)[\w.]*'
)
