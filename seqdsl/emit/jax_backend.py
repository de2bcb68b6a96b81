"""The JAX emitter: a checked model -> a standalone, readable JAX module.

The emitted module imports only numpy and jax (no neural-network library) and
provides ``init``, ``apply``, ``from_canonical``, ``to_canonical``, ``pad``,
``debug`` and a small class named after the model (docs/backend-jax.md).
Recurrent layers run on ``jax.lax.scan`` (never a per-step Python loop), or on
the fused cuDNN LSTM of ``jax.experimental.rnn`` on CUDA GPUs.

This module only writes text; it imports no framework (``seqdsl compile``
runs without JAX installed).
"""

from __future__ import annotations

import builtins
import functools
import keyword
import math
import re
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from ..catalogue import BoundLayer
from ..cells import is_cell_layer
from ..checker import CheckedModel, LayerInfo
from ..dims import Dim
from ..ir import ApplyOp, DropMaskOp, InputDecl, MergeOp
from ..types import MaskKind, MaskType, TensorType
from . import CodeWriter, Unsupported
from .common import decl_text as _decl_text
from .common import describe_layer as _describe
from .common import pad_sequences_text
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
from .jax_snippets import ACTIVATION_EXPR, SECTIONS, SNIPPETS, closure, defined_names

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
    "Any", "NamedTuple",
}  # fmt: skip
_APPLY_LOCALS = {
    "l", "O", "I",  # ambiguous names (E741)
    "variables", "params", "state", "new_state", "training", "rng", "lengths", "masks",
    "dropout_masks", "return_state", "debug", "dtype", "outputs", "self",
}  # fmt: skip


def class_name(model: CheckedModel) -> str:
    """The name of the wrapper class in the emitted module."""
    name = model.name
    if name in _MODULE_NAMES or name in defined_names() or keyword.iskeyword(name):
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
    computes in the dtype of its weights and inputs; ``dtype`` is not needed).

    ``externs``: implementations of extern layers (name -> function), before the
    registry; a missing implementation raises ``ExternError`` here."""
    cls = getattr(module, class_name(model))
    if model.externs:
        return cls(module.from_canonical(dict(weights)), externs=externs)
    return cls(module.from_canonical(dict(weights)))


def emit_model(model: CheckedModel, source: str) -> str:
    return _Emitter(model, source).module()


# --------------------------------------------------------------------------
# small helpers


def _num(cfg: Mapping[str, object], key: str) -> float:
    v = cfg[key]
    assert isinstance(v, (int, float))
    return float(v)


@functools.lru_cache(maxsize=4096)  # nested dims repeat their inner dims
def _dim_code(d: Dim) -> tuple[str, int]:
    """(integer expression over ``env``, denominator L): ``d == expr / L`` exactly."""
    den = d.const.denominator
    for _, k in d.terms:
        den = den * k.denominator // math.gcd(den, k.denominator)
    parts: list[str] = []
    for atom, k in d.terms:
        coef = int(k * den)
        if atom.op == "sym":
            code = f'env["{atom.name}"]'
        else:
            assert atom.arg is not None
            inner, l2 = _dim_code(atom.arg)
            div = atom.div * l2
            code = f"(({inner}) // {div})" if atom.op == "floor" else f"(-(-({inner}) // {div}))"
        parts.append(code if coef == 1 else f"{coef} * {code}")
    c = int(d.const * den)
    if c or not parts:
        parts.append(str(c))
    return " + ".join(parts).replace("+ -", "- "), den


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


class _Emitter:
    def __init__(self, model: CheckedModel, source: str):
        self.m = model
        self.source = source
        self.used: set[str] = set()
        self.acts: set[str] = set()
        reserved = (
            set(dir(builtins))
            | _MODULE_NAMES
            | _APPLY_LOCALS
            | defined_names()
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
        self.force_lax = False
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

    def act(self, name: object) -> str:
        assert isinstance(name, str)
        expr = ACTIVATION_EXPR[name]
        if expr.startswith("_"):
            self.used.add(expr)
        return expr

    def use(self, *names: str) -> None:
        self.used.update(names)

    # ------------------------------------------------------------ module
    def module(self) -> str:
        m = self.m
        apply_text = self.apply_text()
        w = CodeWriter()
        self.header(w)
        t = CodeWriter()
        self.tables(t)
        w.lines.extend(fit(t.lines))
        snippets = closure(self.used)
        for section in SECTIONS:
            chunk = [SNIPPETS[n] for n in snippets if SNIPPETS[n].section == section]
            if not chunk:
                continue
            w("")
            w("")
            w(f"# {'-' * 74}")
            w(f"# {_SECTION_TITLES[section]}")
            for s in chunk:
                w("")
                w("")
                for line in s.text.rstrip("\n").split("\n"):
                    w(line)
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
        w("# variables: init, canonical weights")
        variables_text = _stateful_shapes(_VARIABLES_TEXT, bool(self.cell_states))
        for line in variables_text.strip("\n").split("\n"):
            w(line)
        w("")
        w("")
        w(f"# {'-' * 74}")
        w("# padding and input checks")
        for line in _PAD_TEXT.strip("\n").split("\n"):
            w(line)
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
        for line in _DEBUG_TEXT.strip("\n").split("\n"):
            w(line)
        w("")
        w("")
        cls = _stateful_shapes(_CLASS_TEXT, bool(self.cell_states))
        if m.externs:
            cls = _extern_class(cls)
        for line in cls.strip("\n").replace("{Model}", class_name(m)).split("\n"):
            w(line)
        return w.text()

    @property
    def uses_lax(self) -> bool:
        return self.force_lax or any("lax." in SNIPPETS[n].text for n in closure(self.used))

    def header(self, w: CodeWriter) -> None:
        m = self.m
        w(f'"""{m.name}: a JAX module generated by seqdsl from {self.source}.')
        w("")
        w("Pure JAX (jax.numpy, jax.lax), no neural-network library; weights in the")
        w("canonical (Keras) layout. Usage:")
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
        w("")
        w("from __future__ import annotations")
        w("")
        if m.externs:
            w("import functools")
        w("import zlib")
        if "_RNN" in closure(self.used):
            w("from typing import Any, NamedTuple")
        w("")
        w("import jax")
        if "_lstm_fused" in closure(self.used):
            w("import jax.experimental.rnn")
        third = ["import jax.numpy as jnp", "import numpy as np"]
        if m.externs:  # the modules of `use "..."` register the implementations
            third += [f"import {mod}  # noqa: F401" for mod in m.python_modules]
        for line in sorted(third, key=lambda s: s.split()[1].lower()):
            w(line)
        if self.uses_lax:
            w("from jax import lax")
        if m.externs:
            w("")
            w("from seqdsl.externs import ExternError, check_output_shapes, get_extern")

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
                where = (
                    "state"
                    if layer.kind == "BatchNormalization" and ws.name.startswith("moving_")
                    else "params"
                )
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
        w("def _check_inputs(*arrays):")
        w('    """Static checks (shapes are known at trace time, also under jax.jit): ranks,')
        w("    declared sizes, symbols agreeing across inputs (B, T, ...) and the")
        w('    checker\'s run-time constraints. Returns the symbol values."""')
        w("    env, seen = {}, {}")
        w("    for (name, (_, dims)), x in zip(INPUTS.items(), arrays, strict=True):")
        w("        shape = jnp.shape(x)")
        w("        if len(shape) != len(dims):")
        w(
            '            raise ValueError(f"input `{name}` must have rank {len(dims)} {list(dims)}, got shape {shape}")'
        )
        w("        for d, n in zip(dims, shape, strict=True):")
        w("            if isinstance(d, int) and n != d:")
        w(
            '                raise ValueError(f"input `{name}`: size {n} where {d} is declared (shape {shape})")'
        )
        w("            if isinstance(d, str):")
        w("                if d in env and env[d] != n:")
        w("                    raise ValueError(")
        w(
            '                        f"input `{name}`: {d} = {n}, but input `{seen[d]}` has {d} = {env[d]}; "'
        )
        w(
            '                        f"inputs sharing a symbol must agree (pad them together: pad())"'
        )
        w("                    )")
        w("                env[d], seen[d] = n, name")
        for c in self.m.constraints:
            code, den = _dim_code(c.dim)
            names = sorted(c.dim.symbols())
            cond = " and ".join(f'"{s}" in env' for s in names) or "True"
            w(f"    if {cond} and ({code}) % {c.divisor * den} != 0:")
            vals = ", ".join(f"{s} = {{env[{s!r}]}}" for s in names)
            w(
                f'        raise ValueError(f"{c.what}: {c.dim.paren()} must be divisible by {c.divisor} ({vals})")'
            )
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
            self.use("_named")
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
            self.force_lax = True
        b(f"_check_inputs({', '.join(v for _, v in inputs)})")
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
        if any(re.search(r"\bdtype\b", line) for line in b.lines[dtype_line + 1 :]):
            self.use("_compute_dtype")
        else:
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
        w('    dropout_masks: keep-masks by key: "{layer}" for Dropout, "{layer}/input" [B, F]')
        w('        and "{layer}/recurrent" [B, U] for recurrent layers ("{layer}/forward/input"')
        w('        ... in Bidirectional), "{layer}" for the weights of an attention layer')
        w("        ([B, Tq, Tk], [B, heads, Tq, Tk]); kept values are divided by 1 - rate.")
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
                self.use("_check_mask")
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
            self.use("_input_mask")
            mk = self.names.fresh(f"{v}_mask")
            b(
                f"{mk} = _input_mask({_lit(inp.name)}, {v}, {_lit(t.mask.side)}, lengths, masks)  # mask {t.mask}"
            )
            self.mask[inp.name] = mk
            self.use("_check_mask", "_check_lengths")
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
            time_concat = ax == 1 and first.rank >= 3
            b(
                f"{out} = jnp.concatenate([{', '.join(ins)}], axis={-1 if ax == first.rank - 1 else ax})"
            )
        elif fn == "add":
            b(f"{out} = {' + '.join(ins)}")
        elif fn == "subtract":
            b(f"{out} = {ins[0]} - {ins[1]}")
        elif fn == "multiply":
            b(f"{out} = {' * '.join(ins)}")
        elif fn == "average":
            b(f"{out} = ({' + '.join(ins)}) / {len(ins)}.0")
        elif fn in ("maximum", "minimum"):
            expr = ins[0]
            for x in ins[1:]:
                expr = f"jnp.{fn}({expr}, {x})"
            b(f"{out} = {expr}")
        else:  # pragma: no cover - catalogue and emitter out of step
            raise Unsupported(layer.name, f"merge {fn}")
        kind = self.kind_of(op.results[0])
        if kind is None:
            self.mask[op.results[0]] = None
            return
        mk = self.names.fresh(f"{out}_mask")
        if time_concat:
            parts = [
                m if m is not None else f"jnp.ones({x}.shape[:2], bool)"
                for m, x in zip(masks, ins, strict=True)
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
        self.use("_keep")
        idx = self.n_keep
        self.n_keep += 1
        return f"_keep(dropout_masks, rng, {_lit(key)}, {idx}, {shape}, {_lit(rate)}, dtype)"

    def emit_apply(self, op: ApplyOp, layer: LayerInfo) -> None:
        b = self.body
        kind = layer.kind
        cfg = layer.config
        if kind in self.m.externs:
            return emit_extern(self, op, layer)
        if kind in ("RNN", "Bidirectional") and is_cell_layer(cfg):
            return emit_cell_rnn(self, op, layer)
        src_name = op.inputs[0].name
        x = self.names.value(src_name)
        mask: str | None
        if op.mask is not None:
            mask = self.mask.get(op.mask.name) or self.names.value(op.mask.name)
            in_kind = self.kind_of(op.mask.name)
        else:
            mask = self.mask.get(src_name)
            in_kind = self.kind_of(src_name)
        b(f"# {layer.name}: {_describe(kind, cfg)}" + (f" -- input mask {in_kind}" if mask else ""))
        p = f"params[{_lit(layer.name)}]"
        res = [self.names.value(r) for r in op.results]
        out = res[0]

        def propagate() -> None:
            self.mask[op.results[0]] = mask

        if kind == "Embedding":
            self.use("_embedding")
            b(f"{out} = _embedding({p}, {x})")
            self.emit_debug_ids(x, layer)
            okind = self.kind_of(op.results[0])
            if not cfg["mask_zero"]:
                propagate()  # the ids' own mask (a `masked` input), if any, passes through
            elif okind is not None:
                mk = self.names.fresh(f"{out}_mask")
                b(f"{mk} = {x} != 0  # mask_zero: id 0 is padding -> mask {okind}")
                self.mask[op.results[0]] = mk
                self.emit_declared_check(mk, okind, layer, src_name, "Embedding(mask_zero=true) masks id 0",
                                         "an id 0 inside the data? Keep id 0 for padding only")  # fmt: skip
            else:
                self.mask[op.results[0]] = None
        elif kind == "Masking":
            self.use("_masking")
            mk = self.names.fresh(f"{out}_mask")
            b(
                f"{out}, {mk} = _masking({x}, {_lit(_num(cfg, 'mask_value'))})  # mask {self.kind_of(op.results[0])}"
            )
            self.mask[op.results[0]] = mk
            okind = self.kind_of(op.results[0])
            if okind is not None:
                self.emit_declared_check(
                    mk,
                    okind,
                    layer,
                    src_name,
                    f"Masking(mask_value={_fmt_value(cfg['mask_value'])}) masks steps whose features all equal it",
                    "a step of data with every feature equal to the padding value?",
                )
        elif kind in ("Dense", "Activation", "Dropout", "LayerNormalization"):
            self.emit_per_step(kind, cfg, x, out, p, layer.name, op)
            propagate()
        elif kind == "TimeDistributed":
            inner = cfg["layer"]
            assert isinstance(inner, BoundLayer)
            b(f"# the inner {inner.kind} acts on the last axis, at every step at once")
            self.emit_per_step(inner.kind, inner.config, x, out, p, layer.name, op)
            propagate()
        elif kind == "BatchNormalization":
            self.use("_batch_norm")
            tr = self.training_expr(op)
            if cfg.get("trainable") is False:
                tr = "False"  # Keras: a frozen BatchNormalization runs in inference mode
            b(
                f"{out}, new_state[{_lit(layer.name)}] = _batch_norm({p}, state[{_lit(layer.name)}], {x}, "
                f"{mask or 'None'}, {tr}, momentum={_lit(_num(cfg, 'momentum'))}, "
                f"epsilon={_lit(_num(cfg, 'epsilon'))})"
            )
            self.bn_layers.append(layer.name)
            propagate()
        elif kind == "Conv1D":
            self.use("_conv1d")
            mk = self.names.fresh(f"{out}_mask") if self.kind_of(op.results[0]) is not None else "_"
            b(
                f"{out}, {mk} = _conv1d({p}, {x}, {mask or 'None'}, kernel_size={cfg['kernel_size']}, "
                f"strides={cfg['strides']}, dilation={cfg['dilation_rate']}, padding={_lit(cfg['padding'])}, "
                f"activation={self.act(cfg['activation'])})"
            )
            self.mask[op.results[0]] = mk if mk != "_" else None
        elif kind in ("MaxPooling1D", "AveragePooling1D"):
            self.use("_pool")
            s = cfg["strides"] if cfg["strides"] is not None else cfg["pool_size"]
            mk = self.names.fresh(f"{out}_mask") if self.kind_of(op.results[0]) is not None else "_"
            b(
                f"{out}, {mk} = _pool({x}, {mask or 'None'}, {_lit('max' if kind.startswith('Max') else 'average')}, "
                f"pool_size={cfg['pool_size']}, strides={s}, padding={_lit(cfg['padding'])})"
            )
            self.mask[op.results[0]] = mk if mk != "_" else None
        elif kind in ("GlobalAveragePooling1D", "GlobalMaxPooling1D"):
            self.use("_global_pool")
            k = "max" if "Max" in kind else "average"
            b(
                f"{out} = _global_pool({x}, {mask or 'None'}, {_lit(k)}, keepdims={_lit(cfg['keepdims'])})"
            )
            self.mask[op.results[0]] = None
        elif kind == "Flatten":
            b(f"{out} = {x}.reshape({x}.shape[0], -1)")
            self.mask[op.results[0]] = None
        elif kind == "Reshape":
            target = cfg["target_shape"]
            assert isinstance(target, tuple)
            b(f"{out} = {x}.reshape({x}.shape[0], {', '.join(str(t) for t in target)})")
            self.mask[op.results[0]] = None
        elif kind == "TemporalSoftmax":
            self.use("_temporal_softmax")
            b(f"{out} = _temporal_softmax({x}, {mask})  # no output mask")
            self.mask[op.results[0]] = None
        elif kind == "TemporalSplit":
            n = cfg["parts"]
            b(
                f"{', '.join(res)} = jnp.split({x}, {n}, axis=1)"
                if len(res) > 1
                else f"({res[0]},) = jnp.split({x}, 1, axis=1)"
            )
            if mask is not None:
                mks = [self.names.fresh(f"{r}_mask") for r in res]
                lhs = ", ".join(mks) if len(mks) > 1 else f"({mks[0]},)"
                b(f"{lhs} = jnp.split({mask}, {n}, axis=1)  # masks split likewise")
                for r, mk in zip(op.results, mks, strict=True):
                    self.mask[r] = mk
            else:
                for r in op.results:
                    self.mask[r] = None
        elif kind in ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional"):
            self.emit_recurrent(op, layer, x, mask, in_kind, res)
        elif kind in ("Attention", "MultiHeadAttention"):
            self.emit_attention(op, layer, res)
        else:
            raise Unsupported(layer.name, f"the JAX backend has no implementation of {kind}")

    def emit_attention(self, op: ApplyOp, layer: LayerInfo, res: list[str]) -> None:
        """(query, value[, key]): each brings its own mask; a key step is valid where
        the value's and the key's masks both are."""
        b = self.body
        cfg = layer.config
        kind = layer.kind
        xs = [self.names.value(u.name) for u in op.inputs]
        q_mask = self.mask.get(op.inputs[0].name)
        key_masks = list(
            dict.fromkeys(m for m in (self.mask.get(u.name) for u in op.inputs[1:]) if m)
        )
        key_mask = " & ".join(key_masks) if key_masks else "None"
        causal = bool(cfg["use_causal_mask"])
        rate = _num(cfg, "dropout")
        tr = self.training_expr(op)
        keep = "None"
        if rate > 0 and tr != "False":
            q, v = xs[0], xs[1]
            heads = "" if kind == "Attention" else f"{cfg['num_heads']}, "
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
        self.use(fn)
        if kind == "Attention" and cfg["score_mode"] != "dot":
            args.append(f"score_mode={_lit(cfg['score_mode'])}")
        if causal:
            args.append("causal=True")
        if keep != "None":
            args.append(f"keep={keep}")
        lhs = f"{res[0]}, {res[1]}" if len(res) > 1 else f"{res[0]}, _"
        b(f"{lhs} = {fn}({', '.join(args)})")
        self.mask[op.results[0]] = q_mask if self.kind_of(op.results[0]) is not None else None
        for r in op.results[1:]:
            self.mask[r] = None

    def emit_per_step(self, kind: str, cfg: Mapping[str, object], x: str, out: str, p: str, name: str,
                      op: ApplyOp) -> None:  # fmt: skip
        b = self.body
        if kind == "Dense":
            self.use("_dense")
            b(f"{out} = _dense({p}, {x}, {self.act(cfg['activation'])})")
        elif kind == "Activation":
            b(f"{out} = {self.act(cfg['activation'])}({x})")
        elif kind == "LayerNormalization":
            self.use("_layer_norm")
            b(f"{out} = _layer_norm({p}, {x}, epsilon={_lit(_num(cfg, 'epsilon'))})")
        elif kind == "Dropout":
            rate = _num(cfg, "rate")
            tr = self.training_expr(op)
            if tr == "False" or rate == 0.0:
                b(f"{out} = {x}  # dropout is the identity in inference")
                return
            keep = self.keep(name, f"{x}.shape", rate)
            if tr == "True":
                b(f"{out} = {x} * {keep}  # inverted dropout: keep-mask / (1 - rate)")
            else:
                b("if training:  # inverted dropout: keep-mask / (1 - rate)")
                b(f"    {out} = {x} * {keep}")
                b("else:")
                b(f"    {out} = {x}")
        else:  # pragma: no cover
            raise Unsupported(name, f"no per-step implementation of {kind}")

    def emit_debug_ids(self, x: str, layer: LayerInfo) -> None:
        self.use("_check_ids")
        self.pending.append(f"_check_ids({x}, {layer.config['input_dim']}, {_lit(layer.name)})")

    def emit_declared_check(
        self, mk: str, kind: MaskKind, layer: LayerInfo, src: str, what: str, hint: str
    ) -> None:
        if kind.side == "any" and not kind.nonempty:
            return
        self.use("_check_mask")
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
        cfg = layer.config
        bi = layer.kind == "Bidirectional"
        if bi:
            inner = cfg["layer"]
            assert isinstance(inner, BoundLayer)
            rkind, rcfg = inner.kind, inner.config
            merge_mode = str(cfg["merge_mode"])
        else:
            rkind, rcfg = layer.kind, cfg
            merge_mode = "concat"
        if rkind == "RNN":
            cell_bl = rcfg["cell"]
            assert isinstance(cell_bl, BoundLayer)
            cell, ccfg = _CELL_LAYER[cell_bl.kind], cell_bl.config
        else:
            cell, ccfg = _CELL_OF[rkind], rcfg
        units = int(_num(ccfg, "units"))
        n_states = _N_STATES[cell]
        dirs = 2 if bi else 1
        rs = bool(rcfg["return_sequences"])
        rst = bool(rcfg["return_state"])
        go_back = bool(rcfg.get("go_backwards", False))
        stateful = bool(rcfg.get("stateful", False))
        masked_output = str(rcfg.get("masked_output", "zero"))
        tr = self.training_expr(op)
        fn = _CELL_FN[cell]
        self.use(fn)
        if bi:
            self.use("_bidirectional")

        # keyword arguments of the cell
        kw: list[str] = []
        if str(ccfg["activation"]) != "tanh":
            kw.append(f"activation={self.act(ccfg['activation'])}")
        if cell != "simple_rnn" and str(ccfg["recurrent_activation"]) != "sigmoid":
            kw.append(f"recurrent_activation={self.act(ccfg['recurrent_activation'])}")
        if cell == "gru" and not ccfg["reset_after"]:
            kw.append("reset_after=False")
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
        rate = _num(ccfg, "dropout")
        rrate = _num(ccfg, "recurrent_dropout")
        prefixes = [f"{layer.name}/forward", f"{layer.name}/backward"] if bi else [layer.name]
        keeps_in: list[str] = []
        keeps_rec: list[str] = []
        assigns: list[str] = []
        if tr != "False" and (rate > 0 or rrate > 0):
            for pre in prefixes:
                tag = pre.rsplit("/", 1)[-1] + "_" if bi else ""
                if rate > 0:
                    v = self.names.fresh(f"{layer.name}_{tag}input_keep")
                    assigns.append(
                        f"{v} = {self.keep(pre + '/input', f'({x}.shape[0], {x}.shape[2])', rate)}"
                    )
                    keeps_in.append(v)
                if rrate > 0:
                    v = self.names.fresh(f"{layer.name}_{tag}recurrent_keep")
                    assigns.append(
                        f"{v} = {self.keep(pre + '/recurrent', f'({x}.shape[0], {units})', rrate)}"
                    )
                    keeps_rec.append(v)
            b("# dropout keep-masks: one per sequence, constant over time")
            if tr == "training":
                allk = keeps_in + keeps_rec
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
        if stateful:
            batch = self.tensor(op.inputs[0].name).batch
            assert batch is not None and batch.value is not None
            self.stateful[layer.name] = (batch.value, units, _STATE_NAMES[cell])
        if op.initial_state is not None:
            given = [self.names.value(s.name) for s in op.initial_state]
            per_dir = [given[d * n_states : (d + 1) * n_states] for d in range(dirs)]
            init = ["(" + ", ".join(s) + ("," if len(s) == 1 else "") + ")" for s in per_dir]
        elif stateful:
            init = [
                "("
                + ", ".join(f"state[{_lit(layer.name)}][{_lit(k)}]" for k in _STATE_NAMES[cell])
                + ("," if n_states == 1 else "")
                + ")"
            ]
        else:
            self.use("_zero_states")
            init = [f"_zero_states({x}, {units}, {n_states})"] * dirs

        rv = self.names.fresh(f"{layer.name}_rnn")
        m_arg = mask or "None"
        p = f"params[{_lit(layer.name)}]"
        if bi:
            head = "_bidirectional_lstm(" if fused else f"_bidirectional({fn}, "
            if fused:
                self.use("_bidirectional_lstm")
            call = (
                f"{rv} = {head}{p}, {x}, {m_arg}, {init[0]}, {init[1]}, "
                f"merge_mode={_lit(merge_mode)}, return_sequences={_lit(rs)}"
            )
        else:
            call = f"{rv} = {fn}({p}, {x}, {m_arg}, {init[0]}"
        b(call + "".join(", " + a for a in kw) + ")")
        if stateful:
            names = _STATE_NAMES[cell]
            b(
                f"new_state[{_lit(layer.name)}] = dict(zip({_lit(names)}, {rv}.states, strict=True))  # carried to the next call"
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


WIDTH = 100


def _dict(w: CodeWriter, name: str, entries: Sequence[str]) -> None:
    if not entries:
        w(f"{name} = {{}}")
        return
    w(f"{name} = {{")
    for e in entries:
        w(e)
    w("}")


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


_SECTION_TITLES = {
    "activations": "activations (Keras' definitions)",
    "inputs": "inputs, masks and run-time checks",
    "layers": "per-step layers",
    "time": "time-changing layers (windows use the mask: docs/semantics.md section 3)",
    "recurrent": "recurrent layers: lax.scan, or the fused cuDNN LSTM on CUDA",
    "attention": "attention layers: masked softmax weights (docs/semantics.md section 3)",
}


def _stateful_shapes(text: str, on: bool) -> str:
    """With stateful cell blocks, STATEFUL gives each state's shape (not units)."""
    if not on:
        return text
    old_loop = "for layer, (batch, units, names) in STATEFUL.items():"
    old_zeros = "{n: jnp.zeros((batch, units), dtype) for n in names}"
    assert old_loop in text and old_zeros in text
    return text.replace(old_loop, "for layer, (batch, shapes, names) in STATEFUL.items():").replace(
        old_zeros, "{n: jnp.zeros((batch, *s), dtype) for n, s in zip(names, shapes, strict=True)}"
    )


def _extern_class(text: str) -> str:
    """The class of a model with extern layers: implementations resolved at build."""
    edits = [
        (
            "def __init__(self, variables=None, rng_key=None):",
            "def __init__(self, variables=None, rng_key=None, externs=None):",
        ),
        (
            "        self.variables = variables\n"
            '        self._jitted = jax.jit(apply, static_argnames=("training", "return_state", "debug"))',
            "        self.variables = variables\n"
            "        self.externs = _externs(externs)  # now: a missing implementation raises here\n"
            "        self._jitted = jax.jit(\n"
            "            functools.partial(apply, externs=self.externs),\n"
            '            static_argnames=("training", "return_state", "debug"),\n'
            "        )",
        ),
        (
            "apply(self.variables, *inputs, return_state=True, debug=True, **options)",
            "apply(\n            self.variables, *inputs, return_state=True, debug=True, externs=self.externs, **options\n        )",
        ),
    ]
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


_VARIABLES_TEXT = '''
def _initialize(name, key, shape, dtype):
    """One weight by Keras' initializer formula, drawn with jax.random."""
    if name.startswith("unit_forget_bias("):  # LSTM bias: [init(U), ones(U), init(2U)]
        inner, u = name[len("unit_forget_bias(") : -1], shape[0] // 4
        k1, k2 = jax.random.split(key)
        return jnp.concatenate(
            [
                _initialize(inner, k1, (u,), dtype),
                jnp.ones((u,), dtype),
                _initialize(inner, k2, (2 * u,), dtype),
            ]
        )
    if len(shape) < 2:
        fan_in = fan_out = float(shape[0]) if shape else 1.0
    else:
        receptive = float(np.prod(shape[:-2])) if len(shape) > 2 else 1.0
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    uniform = lambda limit: jax.random.uniform(key, shape, dtype, -limit, limit)  # noqa: E731
    normal = lambda std: jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) * std  # noqa: E731
    trunc = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]
    if name == "zeros":
        return jnp.zeros(shape, dtype)
    if name == "ones":
        return jnp.ones(shape, dtype)
    if name in ("uniform", "random_uniform"):
        return uniform(0.05)
    if name == "random_normal":
        return jax.random.normal(key, shape, dtype) * 0.05
    if name == "truncated_normal":
        return normal(0.05)
    if name == "glorot_uniform":
        return uniform(np.sqrt(6.0 / (fan_in + fan_out)))
    if name == "glorot_normal":
        return normal(np.sqrt(2.0 / (fan_in + fan_out)) / trunc)
    if name == "he_uniform":
        return uniform(np.sqrt(6.0 / fan_in))
    if name == "he_normal":
        return normal(np.sqrt(2.0 / fan_in) / trunc)
    if name == "lecun_uniform":
        return uniform(np.sqrt(3.0 / fan_in))
    if name == "lecun_normal":
        return normal(np.sqrt(1.0 / fan_in) / trunc)
    if name == "orthogonal":  # Q of the QR of a normal matrix, sign-fixed
        rows, cols = int(np.prod(shape[:-1])), shape[-1]
        a = jax.random.normal(key, (max(rows, cols), min(rows, cols)), dtype)
        q, r = jnp.linalg.qr(a)
        q = q * jnp.sign(jnp.diag(r))
        return (q.T if rows < cols else q).reshape(shape)
    if name == "identity":
        return jnp.eye(shape[0], shape[1], dtype=dtype)
    raise ValueError(f"unknown initializer {name!r}")


def init(rng_key, dtype=jnp.float32):
    """Fresh variables: each layer's weights drawn from its own stream
    (rng_key folded with a hash of the layer name), Keras' formulas. (The
    seeded weights of seqdsl's build() come from NumPy instead; they are
    loaded with from_canonical.)"""
    weights = {}
    for layer, specs in WEIGHTS.items():
        key = jax.random.fold_in(rng_key, zlib.crc32(layer.encode()) & 0x7FFFFFFF)
        for i, (name, shape, initializer, _, _) in enumerate(specs):
            weights[f"{layer}/{name}"] = _initialize(
                initializer, jax.random.fold_in(key, i), shape, dtype
            )
    return from_canonical(weights)


def from_canonical(weights):
    """Variables from canonical weights {"layer/weight": array} (Keras layout).

    Returns {"params": {layer: {weight: array}}, "state": {...}}: the state holds
    BatchNormalization's moving statistics and the (zero) states of stateful
    recurrent layers. Arrays keep their dtype (float64 needs jax_enable_x64)."""
    params, state = {}, {}
    dtype = jnp.float32
    expected = set()
    for layer, specs in WEIGHTS.items():
        for name, shape, _, _, where in specs:
            key = f"{layer}/{name}"
            expected.add(key)
            if key not in weights:
                raise KeyError(f"missing weight {key!r}")
            w = jnp.asarray(weights[key])
            if w.shape != tuple(shape):
                raise ValueError(f"weight {key!r} has shape {w.shape}, expected {tuple(shape)}")
            dtype = w.dtype
            (params if where == "params" else state).setdefault(layer, {})[name] = w
    unknown = sorted(set(weights) - expected)
    if unknown:
        raise KeyError(f"unknown weights: {', '.join(unknown)}")
    for layer, (batch, units, names) in STATEFUL.items():
        state[layer] = {n: jnp.zeros((batch, units), dtype) for n in names}
    return {"params": params, "state": state}


def to_canonical(variables):
    """Canonical weights {"layer/weight": numpy array} (bit-exact inverse of from_canonical)."""
    out = {}
    for layer, specs in WEIGHTS.items():
        for name, _, _, _, where in specs:
            out[f"{layer}/{name}"] = np.asarray(variables[where][layer][name])
    return out
'''

_PAD_TEXT = (
    pad_sequences_text("_pad_sequences", "np.int32")
    + '''

def pad(*raw):
    """Pad ragged data by the pad(...) declarations (keras.utils.pad_sequences
    semantics, in the declared dtype): one list of sequences per padded input,
    in declaration order. Returns (batch, lengths) for one input, a tuple of
    them for several. Inputs sharing a time symbol are padded to one length."""
    if len(raw) != len(PADS):
        raise TypeError(
            f"pad takes {len(PADS)} list(s) of sequences ({', '.join(PADS)}), got {len(raw)}"
        )
    target = {}
    for name, (_, _, maxlen, _, _, time) in PADS.items():
        group = time if time is not None else name
        if maxlen is None and isinstance(time, int):
            maxlen = time
        if maxlen is not None:
            target[group] = min(target.get(group, maxlen), maxlen)
    longest = {}
    for (name, (*_, time)), seqs in zip(PADS.items(), raw, strict=True):
        group = time if time is not None else name
        n = max((len(s) for s in seqs), default=0)
        longest[group] = max(longest.get(group, 0), n)
    out = []
    for (name, (side, value, _, truncate, dtype, time)), seqs in zip(
        PADS.items(), raw, strict=True
    ):
        group = time if time is not None else name
        out.append(
            _pad_sequences(seqs, side, value, target.get(group, longest[group]), truncate, dtype)
        )
    return out[0] if len(out) == 1 else tuple(out)
'''
)

_DEBUG_TEXT = '''
def debug(variables, *inputs, **options):
    """apply(..., debug=True), outside jax.jit: also verifies at run time what
    the checker took from declarations: mask kinds (a `post` mask really is
    right-padded, e.g. no id 0 inside the data under pad(post, value=0) with
    Embedding(mask_zero=true)), nonempty rows, lengths in range, ids in range."""
    return apply(variables, *inputs, debug=True, **options)
'''

_CLASS_TEXT = '''
class {Model}:
    """The model with its variables. Calling it runs apply (jitted) and keeps
    the new state (BatchNormalization statistics after training calls, the
    states of stateful recurrent layers) for the next call."""

    init = staticmethod(init)
    apply = staticmethod(apply)
    pad = staticmethod(pad)

    def __init__(self, variables=None, rng_key=None):
        if variables is None:
            variables = init(jax.random.key(0) if rng_key is None else rng_key)
        self.variables = variables
        self._jitted = jax.jit(apply, static_argnames=("training", "return_state", "debug"))

    def __call__(self, *inputs, **options):
        outputs, state = self._jitted(self.variables, *inputs, return_state=True, **options)
        self.variables = {"params": self.variables["params"], "state": state}
        return outputs

    def debug(self, *inputs, **options):
        outputs, state = apply(self.variables, *inputs, return_state=True, debug=True, **options)
        self.variables = {"params": self.variables["params"], "state": state}
        return outputs

    def reset_states(self):
        """Zero the states of stateful recurrent layers (not the normalisation statistics)."""
        state = dict(self.variables["state"])
        for layer, (batch, units, names) in STATEFUL.items():
            dtype = state[layer][names[0]].dtype
            state[layer] = {n: jnp.zeros((batch, units), dtype) for n in names}
        self.variables = {"params": self.variables["params"], "state": state}

    def load_canonical(self, weights):
        self.variables = from_canonical(weights)

    def canonical_weights(self):
        return to_canonical(self.variables)
'''
