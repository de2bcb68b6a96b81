"""The PyTorch emitter: a checked model -> a standalone, readable torch module.

The emitted module imports only numpy and torch. It defines one small
``nn.Module`` class per layer kind the model uses, the helper functions those
need (copied from :mod:`seqdsl.emit.torch_runtime`), and ``class {Model}``, whose
``forward`` reads like code a person would write: one line per layer, and a
comment wherever masks are handled. Recurrent layers run on torch's fused RNN
ops (``torch.lstm``, ``torch.gru``, ``torch.rnn_tanh``/``rnn_relu``: what
``nn.LSTM`` calls, cuDNN on CUDA); only the cells the checker marks ``loop``
(non-standard activations, recurrent dropout, GRU ``reset_after=false``) step in
Python. See docs/backend-torch.md.

This module only writes text; it imports no framework.
"""

from __future__ import annotations

import builtins
import functools
import keyword
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from ..catalogue import BoundLayer, _axis_of, _cell_of, mha_sizes
from ..cells import is_cell_layer
from ..checker import CheckedModel, LayerInfo
from ..dims import Dim
from ..ir import ApplyOp, DropMaskOp, InputDecl, MergeOp
from ..types import MaskKind, MaskType, TensorType
from . import CodeWriter, Unsupported, torch_cells
from .torch_runtime import ACTIVATION_EXPR, IMPORT_LINES, SNIPPETS, render, select

__all__ = ["emit_model", "instantiate", "class_name"]

_TORCH_DTYPE = {"f32": "float32", "f64": "float64", "i32": "int32", "i64": "int64", "bool": "bool"}
_CELL_CLASS = {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "SimpleRNN"}
_FUSED_OP = {"lstm": "torch.lstm", "gru": "torch.gru", "simple_rnn": "torch.rnn_tanh"}
_RECURRENT = ("LSTM", "GRU", "SimpleRNN", "RNN")

#: attributes of nn.Module and of the generated model: no layer may take these names
_MODULE_ATTRS = frozenset(
    [
        "T_destination",
        "add_module",
        "apply",
        "bfloat16",
        "buffers",
        "call_super_init",
        "children",
        "compile",
        "cpu",
        "cuda",
        "double",
        "dump_patches",
        "eval",
        "extra_repr",
        "float",
        "forward",
        "get_buffer",
        "get_extra_state",
        "get_parameter",
        "get_submodule",
        "half",
        "ipu",
        "load_state_dict",
        "modules",
        "mtia",
        "named_buffers",
        "named_children",
        "named_modules",
        "named_parameters",
        "parameters",
        "register_backward_hook",
        "register_buffer",
        "register_forward_hook",
        "register_forward_pre_hook",
        "register_full_backward_hook",
        "register_full_backward_pre_hook",
        "register_load_state_dict_post_hook",
        "register_load_state_dict_pre_hook",
        "register_module",
        "register_parameter",
        "register_state_dict_post_hook",
        "register_state_dict_pre_hook",
        "requires_grad_",
        "set_extra_state",
        "set_submodule",
        "share_memory",
        "state_dict",
        "to",
        "to_empty",
        "train",
        "training",
        "type",
        "xpu",
        "zero_grad",
        "WEIGHTS",
        "SHAPES",
        "PADS",
        "debug",
        "anchor",
        "pad",
        "load_canonical",
        "canonical_weights",
        "reset_states",
    ]
)
#: names the generated forward uses besides the values
_FORWARD_NAMES = frozenset(
    [
        "self",
        "lengths",
        "masks",
        "dropout_masks",
        "device",
        "dtype",
        "sizes",
        "torch",
        "nn",
        "F",
        "np",
    ]
)


def class_name(model: CheckedModel) -> str:
    """The name of the model's class in the emitted module."""
    name = model.name
    taken = {"Recurrent", "LSTM", "GRU", "SimpleRNN", "Bidirectional", "Embedding", "Dense",
             "LayerNormalization", "BatchNormalization", "Conv1D"}  # fmt: skip
    if name in taken or name in SNIPPETS or keyword.iskeyword(name):
        name += "Model"
    return name


def emit_model(model: CheckedModel, source: str) -> str:
    """The source of a standalone PyTorch module for ``model``."""
    return _Emitter(model, source).run()


def instantiate(
    module: ModuleType,
    model: CheckedModel,
    weights: dict[str, np.ndarray],
    dtype: str | None = None,
    externs: Mapping[str, Any] | None = None,
) -> object:
    """The model's module instance, in eval mode, holding ``weights`` (canonical layout).

    The module computes in ``dtype`` when given, else in float64 when the weights are
    float64, else in float32. ``externs`` (name -> function) override the registered
    extern implementations.
    """
    torch = module.torch
    double = (
        dtype == "float64"
        if dtype is not None
        else any(np.asarray(w).dtype == np.float64 for w in weights.values())
    )
    kw = {"externs": externs} if model.externs else {}
    net = getattr(module, class_name(model))(dtype=torch.float64 if double else torch.float32, **kw)
    net.load_canonical(weights)
    return net.eval()


# --------------------------------------------------------------------------
# formatting helpers


def _q(s: str) -> str:
    """A double-quoted Python string literal."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _num(v: object) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return repr(v)
    return repr(v)


def _fmt_value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _pad_text(p: Any) -> str:
    parts = [p.side, f"value={_fmt_value(p.value)}"]
    if p.maxlen is not None:
        parts.append(f"maxlen={p.maxlen}")
        parts.append(f"truncate={p.truncate}")
    if p.nonempty:
        parts.append("nonempty=true")
    return f"pad({', '.join(parts)})"


def _dim_text(d: Dim | None) -> str:
    return "_" if d is None else str(d)


@functools.lru_cache(maxsize=4096)  # nested dims repeat their inner dims
def _py_dim(d: Dim) -> str:
    """A Python expression for ``d`` over ``sizes['T']`` etc. (exact divisions hold by then)."""
    parts: list[str] = []
    for atom, coef in d.terms:
        if atom.op == "sym":
            a = f"sizes[{atom.name!r}]"
        else:
            assert atom.arg is not None
            inner = _py_dim(atom.arg)
            a = (
                f"(({inner}) // {atom.div})"
                if atom.op == "floor"
                else f"(-(-({inner}) // {atom.div}))"
            )
        if coef.denominator != 1:
            parts.append(f"{coef.numerator} * {a} // {coef.denominator}")
        elif coef == 1:
            parts.append(a)
        else:
            parts.append(f"{coef.numerator} * {a}")
    if d.const or not parts:
        parts.append(
            str(int(d.const))
            if d.const.denominator == 1
            else f"{d.const.numerator} // {d.const.denominator}"
        )
    return " + ".join(parts).replace("+ -", "- ")


@dataclass
class _Instance:
    """One recurrent direction, for choosing the snippets and their features."""

    cell: str
    fused: bool
    side: str | None  # the mask side the kernel sees (after go_backwards)
    packed: bool
    carry: bool
    go_backwards: bool
    input_dropout: bool
    recurrent_dropout: bool
    stateful: bool


@dataclass
class _Emitter:
    model: CheckedModel
    source: str
    init: CodeWriter = field(default_factory=CodeWriter)
    fwd: CodeWriter = field(default_factory=CodeWriter)
    snippets: set[str] = field(default_factory=set)
    instances: list[_Instance] = field(default_factory=list)
    var: dict[str, str] = field(default_factory=dict)
    mask: dict[str, str | None] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)
    stateful_layers: list[str] = field(default_factory=list)
    #: the runtime features the attention layers use (tags in torch_runtime)
    attn_features: set[str] = field(default_factory=set)
    #: cell blocks and extern layers (seqdsl/emit/torch_cells.py)
    custom: torch_cells.Custom = field(default_factory=torch_cells.Custom)

    # ------------------------------------------------------------------ names
    def fresh(self, base: str) -> str:
        name = base
        while (
            name in self.taken
            or keyword.iskeyword(name)
            or name in _FORWARD_NAMES
            or name in SNIPPETS
            or hasattr(builtins, name)
        ):
            name += "_"
        self.taken.add(name)
        return name

    def bind(self, value: str) -> str:
        v = self.fresh(value)
        self.var[value] = v
        return v

    def bind_mask(self, value: str) -> str:
        m = self.fresh(f"{self.var[value]}_mask")
        self.mask[value] = m
        return m

    def attr(self, layer: str) -> str:
        if "." in layer or "/" in layer:
            raise Unsupported(layer, "a layer name with '.' or '/' cannot key a state_dict")
        if layer == "training":  # module.train() assigns the attribute `training`
            raise Unsupported(layer, "nn.Module owns the name `training`: rename the layer")
        if layer.isidentifier() and not keyword.iskeyword(layer) and layer not in _MODULE_ATTRS:
            return f"self.{layer}"
        return f"self._modules[{_q(layer)}]"

    def register(self, layer: str, fn: str, args: list[str], comment: str | None = None) -> None:
        if comment:
            self.comment(self.init, comment)
        self.call(self.init, f"{self.attr(layer)} = ", fn, args)
        self.freeze(layer)

    def freeze(self, layer: str) -> None:
        info = self.by_name.get(layer)
        if info is not None and info.config.get("trainable") is False and info.weights:
            self.init(f"{self.attr(layer)}.requires_grad_(False)  # trainable=false")

    @staticmethod
    def stmt(w: CodeWriter, code: str, comment: str = "") -> None:
        """A statement with its comment at the end of the line, or above it when too long."""
        if not comment:
            w(code)
        elif 8 + 4 * w._level + len(code) + 2 + len(comment) + 2 <= 100:
            w(f"{code}  # {comment}")
        else:
            _Emitter.comment(w, comment)
            w(code)

    @staticmethod
    def comment(w: CodeWriter, text: str) -> None:
        """A comment wrapped to 100 columns (8 columns in, inside a method)."""
        width = 100 - 8 - 4 * w._level - 2
        if 0 < len(text) <= width and text.isprintable() and text.strip() == text:
            w(f"# {text}")  # one line, as textwrap would leave it (and 10x faster)
            return
        for line in textwrap.wrap(text, width):
            w(f"# {line}")

    @staticmethod
    def call(w: CodeWriter, lhs: str, fn: str, args: list[str], comment: str = "") -> None:
        """``lhs fn(args)``, one argument per line when it does not fit in 100 columns
        (the writer's lines end up 8 columns in, inside a method)."""
        one = f"{lhs}{fn}({', '.join(args)}){comment}"
        if 8 + 4 * w._level + len(one) <= 100 or not args:
            w(one)
            return
        w(f"{lhs}{fn}(")
        room = 100 - 8 - 4 * w._level - 5
        for a in args:
            cut = a.find(": ") + 2
            if len(a) > room and a.startswith('"') and cut > 1 and '"' not in a[1:-1]:
                w(f'    {a[:cut]}"')  # implicit concatenation of two literals
                w(f'    "{a[cut:]},')
            else:
                w(f"    {a},")
        w(f"){comment}")

    def act(self, name: str) -> str | None:
        expr = ACTIVATION_EXPR[name]
        if expr is not None and expr in SNIPPETS:
            self.snippets.add(expr)
        return expr

    def tensor(self, value: str) -> TensorType:
        t = self.model.types[value]
        assert isinstance(t, TensorType)
        return t

    # ------------------------------------------------------------------ run
    def run(self) -> str:
        m = self.model
        self.layers = {info.op_index: info for info in m.layers}
        # freeze() looks layers up by name (the first of a name, as a scan would)
        self.by_name = {info.name: info for info in reversed(m.layers)}
        self.plan_stacks()
        inputs = self.emit_inputs()
        for i, op in enumerate(m.model.ops):
            if isinstance(op, DropMaskOp):
                (r,) = op.results
                self.var[r] = self.var[op.input.name]
                self.mask[r] = None
            elif isinstance(op, MergeOp):
                self.emit_merge(op, self.layers[i])
            else:
                self.emit_apply(op, self.layers[i])
        outs = []
        for o in m.model.outputs:
            v = self.var[o.name]
            outs.append(f"({v}, {self.mask[o.name]})" if o.with_mask else v)
        self.fwd(f"return {outs[0]}" if len(outs) == 1 else f"return {', '.join(outs)}")
        return self.assemble(inputs)

    # ------------------------------------------------------------------ stacks
    def plan_stacks(self) -> None:
        """Recurrent layers that run in one call of torch's fused op, as
        nn.LSTM(num_layers=...) does: a layer whose whole output sequence is read by
        one recurrent layer of the same cell and units alone, under the same mask.
        self.below[top] lists the op indices of the layers under the top one."""
        ops = self.model.model.ops
        readers: dict[str, list[int]] = {}
        for j, op in enumerate(ops):
            if isinstance(op, DropMaskOp):
                uses = [op.input]
            elif isinstance(op, MergeOp):
                uses = list(op.inputs)
            else:
                uses = [*op.inputs, *([op.mask] if op.mask else []), *(op.initial_state or ())]
            for u in uses:
                readers.setdefault(u.name, []).append(j)
        outputs = {o.name for o in self.model.model.outputs}
        self.below: dict[int, list[int]] = {}
        self.stack_input: dict[int, tuple[str, str | None]] = {}
        for i, op in enumerate(ops):
            low = self.stackable(i, op)
            if low is None or not low[4]:  # the lower layer must return its sequence
                continue
            assert isinstance(op, ApplyOp)
            (r,) = op.results
            rs = readers.get(r, [])
            if r in outputs or len(rs) != 1:
                continue
            j = rs[0]
            upper = ops[j]
            top = self.stackable(j, upper)
            if top is None or top[:4] != low[:4]:
                continue
            assert isinstance(upper, ApplyOp)
            if upper.inputs[0].name != r:
                continue
            if (self.tensor(r).mask is None) != (self.tensor(op.inputs[0].name).mask is None):
                continue
            self.below[j] = self.below.pop(i, []) + [i]
        self.lowers = {i for stack in self.below.values() for i in stack}

    def stackable(self, i: int, op: object) -> tuple[object, ...] | None:
        """(cell, units, use_bias, activation, return_sequences) of a layer that may be
        part of a stack: fused, one direction, no state in or out, no dropout, no
        explicit mask= (its mask comes with its input)."""
        if not isinstance(op, ApplyOp) or op.layer.kind not in _RECURRENT:
            return None
        info = self.layers[i]
        kernels = info.kernels
        if kernels is None or kernels["torch"].kernel == "loop":
            return None
        cfg = info.config
        cell, cell_cfg = _cell_of(cfg, op.layer.kind)
        if op.mask is not None or op.initial_state is not None or len(op.inputs) != 1:
            return None
        if cfg["return_state"] or cfg["stateful"] or cfg["go_backwards"]:
            return None
        if float(cell_cfg["dropout"]) or float(cell_cfg["recurrent_dropout"]):  # type: ignore[arg-type]
            return None
        act = cell_cfg["activation"]
        return (cell, int(cell_cfg["units"]), bool(cell_cfg["use_bias"]), act,  # type: ignore[call-overload]
                bool(cfg["return_sequences"]))  # fmt: skip

    # ------------------------------------------------------------------ inputs
    def emit_inputs(self) -> list[tuple[InputDecl, str]]:
        m = self.model
        params: list[tuple[InputDecl, str]] = []
        for inp in m.model.inputs:
            params.append((inp, self.bind(inp.name)))
        w = self.fwd
        floats = any(isinstance(m.types[i.name], TensorType) and m.types[i.name].dtype in ("f32", "f64")  # type: ignore[union-attr]
                     for i, _ in params)  # fmt: skip
        w(
            "device, dtype = self.anchor.device, self.anchor.dtype"
            if floats
            else "device = self.anchor.device"
        )
        for inp, v in params:
            t = m.types[inp.name]
            if isinstance(t, MaskType):
                w(f"{v} = torch.as_tensor({v}, dtype=torch.bool, device=device)")
            elif t.dtype in ("f32", "f64"):
                w(f"{v} = torch.as_tensor({v}, dtype=dtype, device=device)")
            else:
                w(f"{v} = torch.as_tensor({v}, device=device)")
        self.snippets.add("bind_sizes")
        args = ", ".join(f"{_q(inp.name)}: {v}" for inp, v in params)
        call = f"bind_sizes({{{args}}}, self.SHAPES)"
        if m.constraints:
            w(f"sizes = {call}")
            for c in m.constraints:
                expr = _py_dim(c.dim)
                test = expr if " " not in expr else f"({expr})"
                shown = expr.replace("sizes['", "").replace("']", "")
                w(f"if {test.replace(chr(39), chr(34))} % {c.divisor}:  # a run-time constraint")
                msg = f'f"{shown} = {{{expr}}}, but {c.what} (line {c.span.line}) needs {c.dim.paren()} % {c.divisor} == 0"'
                w._level += 1
                self.call(w, "raise ", "ValueError", [msg])
                w._level -= 1
        else:
            w(call)
        masked = [(inp, v) for inp, v in params if inp.masked]
        if len(masked) == 1:
            name = _q(masked[0][0].name)
            w("if lengths is not None and not isinstance(lengths, dict):")
            w(f"    lengths = {{{name}: lengths}}")
            w("if masks is not None and not isinstance(masks, dict):")
            w(f"    masks = {{{name}: masks}}")
        debug: list[tuple[str, list[str]]] = []
        for inp, v in params:
            t = m.types[inp.name]
            if isinstance(t, MaskType):
                self.mask[inp.name] = None
                k = t.kind
                if k.side != "any" or k.nonempty:
                    self.snippets.add("check_mask")
                    words = ", ".join([k.side] + (["nonempty"] if k.nonempty else []))
                    debug.append(("check_mask", [v, _q(k.side), str(k.nonempty), _q(f"input `{inp.name}`"),
                                                 _q(f"it is declared mask({words})")]))  # fmt: skip
                continue
            assert isinstance(t, TensorType)
            if t.mask is None:
                self.mask[inp.name] = None
                continue
            self.snippets.add("input_mask")
            pad = m.pads.get(inp.name)
            side = pad.side if pad is not None else "post"
            mv = self.bind_mask(inp.name)
            how = f"{side} padding" if pad is not None else "kind any; lengths give post masks"
            self.stmt(w, f"{mv} = input_mask({_q(inp.name)}, {v}, {_q(side)}, lengths, masks)", how)
            self.snippets.add("check_lengths")
            debug.append(
                ("check_lengths", [_q(inp.name), "lengths", f"{v}.shape[1]", str(t.mask.nonempty)])
            )
            if t.mask.side != "any" or t.mask.nonempty:
                self.snippets.add("check_mask")
                decl = (_pad_text(pad) if pad is not None else "") + " masked"
                debug.append(("check_mask", [mv, _q(t.mask.side), str(t.mask.nonempty), _q(f"input `{inp.name}`"),
                                             _q(f"it is declared {decl.strip()}")]))  # fmt: skip
        if debug:
            w("if self.debug:  # the declared mask kinds hold")
            w._level += 1
            for check, check_args in debug:
                self.call(w, "", check, check_args)
            w._level -= 1
        return params

    # ------------------------------------------------------------------ merges
    def emit_merge(self, op: MergeOp, info: LayerInfo) -> None:
        ins = [self.var[u.name] for u in op.inputs]
        masks = [self.mask[u.name] for u in op.inputs]
        (r,) = op.results
        out_t = self.tensor(r)
        fn = op.fn
        first = self.tensor(op.inputs[0].name)
        if fn == "concat":
            axis = _axis_of(info.config, first.rank)
            dim = -1 if axis == first.rank - 1 else axis
            expr = f"torch.cat([{', '.join(ins)}], dim={dim})"
        elif fn == "add":
            expr = " + ".join(ins)
        elif fn == "subtract":
            expr = f"{ins[0]} - {ins[1]}"
        elif fn == "multiply":
            expr = " * ".join(ins)
        elif fn == "average":
            expr = f"({' + '.join(ins)}) / {len(ins)}"
        else:  # maximum, minimum
            expr = ins[0]
            for x in ins[1:]:
                expr = f"torch.{fn}({expr}, {x})"
        v = self.bind(r)
        self.fwd(f"{v} = {expr}")
        if out_t.mask is None:
            self.mask[r] = None
            return
        present = list(dict.fromkeys(mk for mk in masks if mk is not None))
        if fn == "concat" and axis == 1:
            self.snippets.add("all_valid")
            parts = [
                mk if mk is not None else f"all_valid({x})"
                for x, mk in zip(ins, masks, strict=True)
            ]
            mv = self.bind_mask(r)
            self.stmt(
                self.fwd, f"{mv} = torch.cat([{', '.join(parts)}], dim=1)", "masks joined in time"
            )
        elif len(present) == 1:
            self.mask[r] = present[0]
        else:
            mv = self.bind_mask(r)
            self.stmt(
                self.fwd, f"{mv} = {' & '.join(present)}", "valid where every masked input is"
            )

    # ------------------------------------------------------------------ layers
    def emit_apply(self, op: ApplyOp, info: LayerInfo) -> None:
        kind = op.layer.kind
        if kind in self.model.externs:
            torch_cells.emit_extern(self, op, info)
            return
        if kind in ("RNN", "Bidirectional") and is_cell_layer(info.config):
            torch_cells.emit_cell_rnn(self, op, info)
            return
        if kind in ("Attention", "MultiHeadAttention"):
            self.emit_attention(op, info)
            return
        x_name = op.inputs[0].name
        x = self.var[x_name]
        in_t = self.tensor(x_name)
        in_mask = self.mask[x_name]
        if op.mask is not None:
            mt = self.model.types[op.mask.name]
            assert isinstance(mt, MaskType)
            in_t = in_t.with_mask(mt.kind)
            in_mask = self.var[op.mask.name]
        training = None if op.training is None else bool(op.training.value)
        cfg = info.config
        if kind in _RECURRENT or kind == "Bidirectional":
            self.emit_recurrent(op, info, x, in_t, in_mask, training)
            return
        (r,) = op.results if len(op.results) == 1 else (None,)
        if kind == "TimeDistributed":
            inner = cfg["layer"]
            assert isinstance(inner, BoundLayer)
            self.emit_simple(inner.kind, inner.config, info, op, x, in_t, in_mask, training,
                             note=f"TimeDistributed({inner.kind}): {inner.kind} acts on the last axis: on every step")  # fmt: skip
            return
        if kind == "TemporalSplit":
            n = int(cfg["parts"])  # type: ignore[call-overload]
            outs = [self.bind(res) for res in op.results]
            self.fwd(f"{', '.join(outs) if n > 1 else outs[0] + ','} = {x}.chunk({n}, dim=1)")
            if in_mask is not None:
                ms = [self.bind_mask(res) for res in op.results]
                self.stmt(self.fwd, f"{', '.join(ms) if n > 1 else ms[0] + ','} = {in_mask}.chunk({n}, dim=1)",
                          "masks split likewise")  # fmt: skip
            else:
                for res in op.results:
                    self.mask[res] = None
            return
        assert r is not None
        self.emit_simple(kind, cfg, info, op, x, in_t, in_mask, training)

    def bidirectional(
        self, name: str, cls: str, ctor: Callable[[str, bool], list[str]], merge: str
    ) -> None:
        """``Bidirectional(name, cls(forward...), cls(backward...))`` for a built-in
        recurrent layer or a cell block; ``ctor(weights prefix, backwards)`` gives the
        arguments of each direction."""
        self.snippets.add("Bidirectional")
        self.init(f"{self.attr(name)} = Bidirectional(")
        self.init._level += 1
        self.init(f"{_q(name)},")
        self.call(self.init, "", cls, ctor(f"{name}/forward", False), ",")
        self.call(self.init, "", cls, ctor(f"{name}/backward", True), ",")
        if merge != "concat":
            self.init(f"merge_mode={_q(merge)},")
        self.init._level -= 1
        self.init(")")
        self.freeze(name)

    def emit_simple(
        self,
        kind: str,
        cfg: Mapping[str, object],
        info: LayerInfo,
        op: ApplyOp,
        x: str,
        in_t: TensorType,
        in_mask: str | None,
        training: bool | None,
        note: str | None = None,
    ) -> None:
        (r,) = op.results
        name = info.name
        feat = in_t.features.value if in_t.features is not None else None
        out_t = self.tensor(r)
        w = self.fwd
        train = "self.training" if training is None else str(training)
        layer = self.attr(name)
        propagate = True  # the output mask is the input mask
        if kind == "Embedding":
            self.snippets.add("Embedding")
            self.register(name, "Embedding", [str(cfg["input_dim"]), str(cfg["output_dim"])], note)
            v = self.bind(r)
            w(f"{v} = {layer}({x})")
            if out_t.mask is not None and cfg["mask_zero"] and in_t.rank >= 2:
                mv = self.bind_mask(r)
                w(f"{mv} = {x} != 0  # Embedding(mask_zero=true): id 0 is padding")
                self.debug_generated(
                    name, "Embedding(mask_zero=true)", mv, out_t.mask, in_t, "id 0"
                )
            else:  # without mask_zero a caller's mask passes through
                self.mask[r] = in_mask if out_t.mask is not None else None
            return
        if kind == "Masking":
            value = float(cfg["mask_value"])  # type: ignore[arg-type]
            v = self.bind(r)
            mv = self.bind_mask(r)
            w(
                f"# Masking({_fmt_value(value)}): a step whose features all equal {_fmt_value(value)} is masked, and zeroed"
            )
            w(f"{mv} = ({x} != {_num(value)}).any(-1)")
            w(f"{v} = torch.where({mv}[..., None], {x}, 0.0)")
            self.debug_generated(name, f"Masking(mask_value={_fmt_value(value)})", mv, out_t.mask, in_t,
                                 f"a step of all {_fmt_value(value)}")  # fmt: skip
            return
        if kind == "Dense":
            self.snippets.add("Dense")
            args = [str(feat), str(cfg["units"])]
            if not cfg["use_bias"]:
                args.append("use_bias=False")
            a = self.act(str(cfg["activation"]))
            if a is not None:
                args.append(f"activation={a}")
            self.register(name, "Dense", args, note)
            w(f"{self.bind(r)} = {layer}({x})")
        elif kind == "Activation":
            a = self.act(str(cfg["activation"]))
            v = self.bind(r)
            w(f"{v} = {x}" if a is None else f"{v} = {a}({x})")
        elif kind == "Dropout":
            self.snippets.add("dropout")
            v = self.bind(r)
            w(f"{v} = dropout({x}, {_num(float(cfg['rate']))}, {train}, dropout_masks, {_q(name)})")  # type: ignore[arg-type]
        elif kind == "LayerNormalization":
            self.snippets.add("LayerNormalization")
            args = [str(feat)]
            if float(cfg["epsilon"]) != 1e-3:  # type: ignore[arg-type]
                args.append(f"epsilon={_num(float(cfg['epsilon']))}")  # type: ignore[arg-type]
            for flag in ("center", "scale"):
                if not cfg[flag]:
                    args.append(f"{flag}=False")
            self.register(name, "LayerNormalization", args, note)
            w(f"{self.bind(r)} = {layer}({x})")
        elif kind == "BatchNormalization":
            self.snippets.add("BatchNormalization")
            args = [str(feat)]
            if float(cfg["momentum"]) != 0.99:  # type: ignore[arg-type]
                args.append(f"momentum={_num(float(cfg['momentum']))}")  # type: ignore[arg-type]
            if float(cfg["epsilon"]) != 1e-3:  # type: ignore[arg-type]
                args.append(f"epsilon={_num(float(cfg['epsilon']))}")  # type: ignore[arg-type]
            for flag in ("center", "scale"):
                if not cfg[flag]:
                    args.append(f"{flag}=False")
            self.register(name, "BatchNormalization", args, note)
            call = [x]
            if in_mask is not None:
                call.append(in_mask)
            comment = "moments over the valid steps in training" if in_mask is not None else ""
            if (
                cfg["trainable"] is False
            ):  # a frozen BatchNormalization runs in inference mode (Keras)
                call.append("training=False")
                comment = "trainable=false: always the moving statistics (as Keras)"
            elif training is not None:
                call.append(f"training={training}")
            self.stmt(w, f"{self.bind(r)} = {layer}({', '.join(call)})", comment)
        elif kind == "Conv1D":
            self.snippets.add("Conv1D")
            k, s, d = int(cfg["kernel_size"]), int(cfg["strides"]), int(cfg["dilation_rate"])  # type: ignore[call-overload]
            args = [str(feat), str(cfg["filters"]), str(k)]
            if s != 1:
                args.append(f"strides={s}")
            if cfg["padding"] != "valid":
                args.append(f"padding={_q(str(cfg['padding']))}")
            if d != 1:
                args.append(f"dilation_rate={d}")
            if not cfg["use_bias"]:
                args.append("use_bias=False")
            a = self.act(str(cfg["activation"]))
            if a is not None:
                args.append(f"activation={a}")
            self.register(name, "Conv1D", args, note)
            v = self.bind(r)
            w(f"{v} = {layer}({x}, {in_mask})" if in_mask is not None else f"{v} = {layer}({x})")
            propagate = False
            self.window_mask(r, in_mask, k, s, d, str(cfg["padding"]))
        elif kind in ("MaxPooling1D", "AveragePooling1D"):
            self.snippets.add("pool1d")
            p = int(cfg["pool_size"])  # type: ignore[call-overload]
            s = p if cfg["strides"] is None else int(cfg["strides"])  # type: ignore[call-overload]
            how = "max" if kind == "MaxPooling1D" else "mean"
            v = self.bind(r)
            self.call(w, f"{v} = ", "pool1d", [x, str(in_mask), _q(how), str(p), str(s), _q(str(cfg["padding"]))],
                      f"  # {kind}")  # fmt: skip
            propagate = False
            self.window_mask(r, in_mask, p, s, 1, str(cfg["padding"]))
        elif kind in ("GlobalAveragePooling1D", "GlobalMaxPooling1D"):
            self.snippets.add("global_pool")
            how = "max" if kind == "GlobalMaxPooling1D" else "mean"
            keep = ["keepdims=True"] if cfg["keepdims"] else []
            self.call(
                w,
                f"{self.bind(r)} = ",
                "global_pool",
                [x, str(in_mask), _q(how)] + keep,
                f"  # {kind}",
            )
            propagate = False
        elif kind == "Flatten":
            w(f"{self.bind(r)} = {x}.flatten(1)")
        elif kind == "Reshape":
            target = cfg["target_shape"]
            assert isinstance(target, tuple)
            w(f"{self.bind(r)} = {x}.reshape({x}.shape[0], {', '.join(str(t) for t in target)})")
        elif kind == "TemporalSoftmax":
            self.snippets.add("temporal_softmax")
            w(f"{self.bind(r)} = temporal_softmax({x}, {in_mask})")
            propagate = False
        else:  # pragma: no cover - the catalogue and this emitter list the same layers
            raise Unsupported(name, f"{kind} has no torch translation")
        if propagate:
            self.mask[r] = in_mask if out_t.mask is not None else None
        elif r not in self.mask:
            self.mask[r] = None

    def emit_attention(self, op: ApplyOp, info: LayerInfo) -> None:
        """Attention / MultiHeadAttention on (query, value[, key]): each input brings its
        own mask; the key steps' mask is the AND of the value's and the key's."""
        kind, cfg, name = info.kind, info.config, info.name
        names = [u.name for u in op.inputs]
        types = [self.tensor(n) for n in names]
        xs = [self.var[n] for n in names]
        q_mask = self.mask[names[0]]
        key_masks = list(dict.fromkeys(m for m in (self.mask[n] for n in names[1:]) if m))
        dropout = float(cfg["dropout"])  # type: ignore[arg-type]
        causal, scores = bool(cfg["use_causal_mask"]), bool(cfg["return_attention_scores"])
        self.snippets.add(kind)
        if dropout:
            self.snippets.add("keep_mask")
            self.attn_features.add("attn_dropout")
        if causal:
            self.attn_features.add("attn_causal")
        if scores:
            self.attn_features.add("attn_scores")
        opts: list[str] = []
        if kind == "Attention":
            args = [_q(name)]
            fused = cfg["score_mode"] == "dot" and not scores
            if cfg["use_scale"]:
                opts.append("use_scale=True")
            if cfg["score_mode"] == "concat":
                opts.append('score_mode="concat"')
                self.attn_features.add("attn_concat")
        else:
            heads, key_dim, value_dim, out_size = mha_sizes(cfg, types)
            sizes = [t.features.value if t.features is not None else None for t in types]
            key_t = types[2] if len(types) > 2 else types[1]
            kf = key_t.features.value if key_t.features is not None else None
            size_text = f"({sizes[0]}, {kf}, {sizes[1]}, {out_size})"
            args = [_q(name), size_text, str(heads), str(key_dim), str(value_dim)]
            fused = not scores
            if not cfg["use_bias"]:
                opts.append("use_bias=False")
            if q_mask is not None:
                self.attn_features.add("attn_query_mask")
        if dropout:
            opts.append(f"dropout={_num(dropout)}")
        if causal:
            opts.append("causal=True")
        if scores:
            opts.append("return_scores=True")
        if not fused:
            opts.append("sdpa=False")
        self.register(name, kind, args + opts)
        call = list(xs)
        if q_mask is not None:
            call.append(f"query_mask={q_mask}")
        if key_masks:
            call.append(f"key_mask={' & '.join(key_masks)}")
        if dropout:
            call.append("dropout_masks=dropout_masks")
            if op.training is not None:
                call.append(f"training={bool(op.training.value)}")
        how = "F.scaled_dot_product_attention" if fused else "explicit softmax weights"
        if fused and dropout:
            how += " (explicit weights when dropping in training)"
        keys = " and ".join(f"`{n}`" for n in dict.fromkeys(names[1:]))
        text = f"{kind} on {how}: a query step attends to the " + (
            f"valid steps of {keys}" if key_masks else "key steps"
        )
        text += " j <= i" if causal else ""
        if q_mask is not None:
            text += (
                "; 0 at masked query steps"
                if kind == "Attention"
                else "; a masked query step attends to nothing"
            )
        self.comment(self.fwd, text)
        outs = [self.bind(r) for r in op.results]
        self.call(self.fwd, f"{', '.join(outs)} = ", self.attr(name), call)
        self.mask[op.results[0]] = q_mask if self.tensor(op.results[0]).mask is not None else None
        for r in op.results[1:]:
            self.mask[r] = None

    def window_mask(
        self, r: str, in_mask: str | None, k: int, s: int, d: int, padding: str
    ) -> None:
        if in_mask is None or self.tensor(r).mask is None:
            self.mask[r] = None
            return
        self.snippets.add("window_mask")
        mv = self.bind_mask(r)
        self.call(
            self.fwd,
            f"{mv} = ",
            "window_mask",
            [in_mask, str(k), str(s), str(d), _q(padding), f"{self.var[r]}.shape[1]"],
        )

    def debug_generated(
        self, layer: str, what: str, mv: str, kind: MaskKind | None, in_t: TensorType, token: str
    ) -> None:
        """In debug mode, check a data-derived mask against the declaration it rests on."""
        if kind is None or not kind.declared or (kind.side == "any" and not kind.nonempty):
            return
        pad_input = in_t.padded_from
        pad = self.model.pads.get(pad_input) if pad_input is not None else None
        promise = (
            f"`{pad_input}` declares {_pad_text(pad)}: {token} must occur only as padding"
            if pad is not None
            else "the declared mask kind"
        )
        self.snippets.add("check_mask")
        self.fwd(f"if self.debug:  # `{kind.side}` rests on the declaration of `{pad_input}`")
        self.fwd._level += 1
        self.call(
            self.fwd,
            "",
            "check_mask",
            [mv, _q(kind.side), str(kind.nonempty), _q(f"{layer}: {what}"), _q(promise)],
        )
        self.fwd._level -= 1

    # ------------------------------------------------------------------ recurrent
    def emit_recurrent(
        self,
        op: ApplyOp,
        info: LayerInfo,
        x: str,
        in_t: TensorType,
        in_mask: str | None,
        training: bool | None,
    ) -> None:
        kind = op.layer.kind
        cfg = info.config
        name = info.name
        bi = kind == "Bidirectional"
        if bi:
            inner = cfg["layer"]
            assert isinstance(inner, BoundLayer)
            flags = inner.config
            cell, cell_cfg = _cell_of(inner.config, inner.kind)
        else:
            flags = cfg
            cell, cell_cfg = _cell_of(cfg, kind)
        assert info.kernels is not None
        choice = info.kernels["torch"]
        fused = choice.kernel != "loop"
        side = in_t.mask.side if (in_t.mask is not None and in_mask is not None) else None
        feat = in_t.features.value if in_t.features is not None else None
        units = int(cell_cfg["units"])  # type: ignore[call-overload]
        return_state = bool(flags["return_state"])
        stateful = bool(flags["stateful"])
        packed = fused and cell == "lstm" and side is not None and (return_state or stateful)
        go_back = bool(flags["go_backwards"])
        opts: list[str] = []
        if side is not None:
            opts.append(f"mask_side={_q(side)}")
        if not fused:
            opts.append("fused=False")
        if packed:
            opts.append("packed=True")
        for flag in ("return_sequences", "return_state"):
            if flags[flag]:
                opts.append(f"{flag}=True")
        if flags["masked_output"] == "carry":
            opts.append('masked_output="carry"')
        drop, rdrop = float(cell_cfg["dropout"]), float(cell_cfg["recurrent_dropout"])  # type: ignore[arg-type]
        if drop:
            opts.append(f"dropout={_num(drop)}")
        if rdrop:
            opts.append(f"recurrent_dropout={_num(rdrop)}")
        if stateful:
            batch = in_t.batch.value if in_t.batch is not None else None
            opts.append(f"stateful_batch={batch}")
            self.stateful_layers.append(name)
        cell_opts: list[str] = []
        if not cell_cfg["use_bias"]:
            cell_opts.append("use_bias=False")
        if cell == "gru" and not cell_cfg["reset_after"]:
            cell_opts.append("reset_after=False")
        act = str(cell_cfg["activation"])
        if act != "tanh":
            cell_opts.append(f"activation={self.act(act)}")
        if cell != "simple_rnn" and str(cell_cfg["recurrent_activation"]) != "sigmoid":
            cell_opts.append(
                f"recurrent_activation={self.act(str(cell_cfg['recurrent_activation']))}"
            )
        cls = _CELL_CLASS[cell]
        self.snippets.add(cls)

        def ctor(layer_name: str, backwards: bool) -> list[str]:
            o = list(opts)
            if backwards:
                o.insert(0, "go_backwards=True")
            return [_q(layer_name), str(feat), str(units), *cell_opts, *o]

        flip = {"post": "pre", "pre": "post"}
        directions = (
            [(name, go_back)]
            if not bi
            else [(f"{name}/forward", False), (f"{name}/backward", True)]
        )
        for _, backwards in directions:
            seen = flip.get(side, side) if (backwards and side is not None) else side
            self.instances.append(
                _Instance(
                    cell,
                    fused,
                    seen,
                    packed,
                    flags["masked_output"] == "carry",
                    backwards,
                    drop > 0,
                    rdrop > 0,
                    stateful,
                )  # fmt: skip
            )
        note = self.kernel_note(
            choice.kernel, choice.reason, cell, side, go_back, packed, bi, in_t.mask
        )
        if bi:
            self.bidirectional(name, cls, ctor, str(cfg["merge_mode"]))
        else:
            self.register(name, cls, ctor(name, go_back))
        if info.op_index in self.lowers:  # runs in the call of the layer above it
            self.stack_input[info.op_index] = (x, in_mask)
            self.var[op.results[0]], self.mask[op.results[0]] = x, in_mask  # (read by it alone)
            return
        below = [self.layers[i].name for i in self.below.get(info.op_index, [])]
        if below:  # the stack runs on the input of its lowest layer
            x, in_mask = self.stack_input[self.below[info.op_index][0]]
            n = len(below) + 1
            note.insert(0, f"{', '.join([*below, name])}: a stack, one {_FUSED_OP[cell]} call "
                           f"with num_layers={n} (as nn.{cls})")  # fmt: skip
        args = [x, in_mask if in_mask is not None else "None"]
        if op.initial_state is not None:
            args.append(f"initial_state=[{', '.join(self.var[s.name] for s in op.initial_state)}]")
        if drop or rdrop:
            args.append("dropout_masks=dropout_masks")
        if training is not None:
            args.append(f"training={training}")
        if below:
            args.append(f"below=[{', '.join(self.attr(b) for b in below)}]")
        if args[1] == "None" and len(args) == 2:
            args.pop()
        for line in note:
            self.comment(self.fwd, line)
        outs = [self.bind(r) for r in op.results]
        lhs = outs[0] if len(outs) == 1 else ", ".join(outs)
        self.call(self.fwd, f"{lhs} = ", self.attr(name), args)
        for r in op.results:
            self.mask[r] = None
        if flags["return_sequences"] and in_mask is not None:
            seqs = op.results[:2] if (bi and cfg["merge_mode"] == "none") else op.results[:1]
            for r in seqs:
                if self.tensor(r).mask is None:
                    continue
                if go_back and not bi:
                    mv = self.bind_mask(r)
                    self.fwd(f"{mv} = {in_mask}.flip(1)  # outputs in reversed time order")
                else:
                    self.mask[r] = in_mask

    def kernel_note(
        self,
        kernel: str,
        reason: str | None,
        cell: str,
        side: str | None,
        go_back: bool,
        packed: bool,
        bi: bool,
        mask: MaskKind | None,
    ) -> list[str]:
        op = _FUSED_OP[cell]
        if kernel == "loop":
            return [f"per-step loop of Keras' step function: {reason}"]
        seen = {"post": "pre", "pre": "post"}.get(side, side) if (go_back and side) else side
        if bi and side is not None:
            how = {
                "post": "the backward one, flipped, rolls its rows to right padding",
                "pre": "the forward one rolls its rows to right padding",
                "any": "valid steps compacted to the front and scattered back",
            }[side]
            lines = [f"{side} mask: each direction on {op}; {how}"]
        elif seen is None:
            lines = [f"no mask: {op} on the whole batch"]
        elif seen == "post" and packed:
            lines = [f"post mask: {op} on packed rows (the final c is needed)"]
        elif seen == "post":
            lines = [f"post mask: {op} on the padded batch, h taken at each row's last valid step"]
        elif seen == "pre":
            lines = [f"pre mask: rows rolled to right padding, {op}, rolled back"]
        else:
            lines = [f"mask with gaps: valid steps compacted to the front, {op}, scattered back"]
        if go_back and not bi:
            lines[0] = "go_backwards, steps flipped: " + lines[0]
        if side is not None and not packed:
            lines.append("in inference the rows are packed instead when pack_rows() says it pays")
        if side is not None and mask is not None and not mask.nonempty:
            lines.append(
                "empty rows run as length 1, then get zero outputs and their initial state"
            )
        return lines

    # ------------------------------------------------------------------ assembly
    def features(self) -> set[str]:
        f: set[str] = set()
        for i in self.instances:
            f.add("fused" if i.fused else "loop")
            if i.fused and i.side is not None:
                f.add("fused_mask")
                f.add(f"side_{i.side}")
            if i.packed:
                f.add("packed")
            if i.carry:
                f.add("carry")
            if i.go_backwards:
                f.add("go_backwards")
            if i.input_dropout:
                f.add("input_dropout")
            if i.recurrent_dropout:
                f.add("recurrent_dropout")
            if i.input_dropout or i.recurrent_dropout:
                f.add("dropout")
            if i.stateful:
                f.add("stateful")
        if self.below:
            f.add("stack")
        return f | self.custom.features

    def assemble(self, params: list[tuple[InputDecl, str]]) -> str:
        m = self.model
        feats = self.features() | self.attn_features
        if "fused" not in feats:  # every recurrent layer loops: no `fused` switch to pass
            self.init.lines = [line.replace(", fused=False", "") for line in self.init.lines
                               if line.strip() != "fused=False,"]  # fmt: skip
        names = set(self.snippets)
        if self.instances:
            names.add("Recurrent")
            if "fused" in feats:
                names.add("fused_rnn")
            if "fused_mask" in feats:
                names |= {"to_right_padding", "pack_rows"}
            if "side_pre" in feats or "side_any" in feats:
                names.add("gather_steps")  # rows rolled or compacted, and back
            if "carry" in feats:
                names.add("carry_forward")
            if "dropout" in feats:
                names.add("keep_mask")
        if m.pads:
            names.add("pad_sequences")
        order = select(names)
        imports = [
            "import numpy as np",
            "import torch",
            "import torch.nn.functional as F",
            "from torch import nn",
        ]
        if "fused_mask" in feats:
            imports.append(IMPORT_LINES["packed"])
        imports = torch_cells.extern_imports(self, imports)
        out = CodeWriter()
        out(f'"""{m.name}: a PyTorch module generated by seqdsl.')
        out()
        out(f"Source: {self.source}")
        out("Standalone: it imports numpy and torch only. Parameters are the Keras weights in")
        out('seqdsl\'s canonical layout: state_dict key "layer.weight" is canonical "layer/weight"')
        out("(load_canonical / canonical_weights). Recurrent layers run on torch's fused RNN ops")
        out("(cuDNN on CUDA); masks become lengths, rolls or compactions as the comments say.")
        out('"""')
        out()
        body = CodeWriter()
        self.body(body, order, feats, params)
        if "F." not in "\n".join(body.lines):
            imports.remove("import torch.nn.functional as F")
        for line in imports:
            out(line)
        out.lines = torch_cells.docstring_lines(self, out.lines)
        out.lines += body.lines
        return out.text()

    def body(
        self,
        out: CodeWriter,
        order: list[str],
        feats: set[str],
        params: list[tuple[InputDecl, str]],
    ) -> None:
        helpers = [n for n in order if "." not in n and not n[0].isupper()]
        classes = [n for n in order if "." not in n and n[0].isupper()]
        for n in helpers:
            out()
            out()
            for line in render(n, feats).rstrip("\n").split("\n"):
                out(line)
        for n in classes:
            out()
            out()
            text = render(n, feats).rstrip("\n")
            parts = self.class_parts(n, feats)
            for line in text.split("\n"):
                out(line)
            for p in parts:
                out()
                for line in render(p, feats).rstrip("\n").split("\n"):
                    out(line)
        for text in self.custom.classes.values():  # one class per cell block used
            out()
            out()
            out.lines += text.rstrip("\n").split("\n")
        out()
        out()
        self.model_class(out, params)

    def class_parts(self, cls: str, feats: set[str]) -> list[str]:
        if cls == "CellRNN":
            return ["CellRNN.reset_states"] if "cell_stateful" in feats else []
        if cls == "Recurrent":
            parts = []
            if "fused" in feats:
                parts.append("Recurrent.scan_fused")
            if "loop" in feats:
                parts.append("Recurrent.scan_loop")
            if "stateful" in feats:
                parts.append("Recurrent.reset_states")
            return parts
        if cls in ("LSTM", "GRU", "SimpleRNN"):
            cell = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "simple_rnn"}[cls]
            parts = []
            if any(i.cell == cell and i.fused for i in self.instances):
                parts.append(f"{cls}.fused")
            if any(i.cell == cell and not i.fused for i in self.instances):
                parts.append(f"{cls}.loop")
            return parts
        return []

    def model_class(self, out: CodeWriter, params: list[tuple[InputDecl, str]]) -> None:
        m = self.model
        cls = class_name(m)
        sig = ", ".join(v for _, v in params)
        with out.block(f"class {cls}(nn.Module):"):
            out(f'"""The model `{m.name}` of {self.source}.')
            out()
            out(f"forward({sig}, *, lengths=None, masks=None, dropout_masks=None)")
            for inp, v in params:
                t = m.types[inp.name]
                if isinstance(t, MaskType):
                    desc = f"bool [{_dim_text(t.batch)}, {_dim_text(t.time)}], mask({t.kind.side})"
                else:
                    shape = ", ".join(_dim_text(d) for d in t.shape)
                    desc = f"{_TORCH_DTYPE[t.dtype]} [{shape}]"
                    pad = m.pads.get(inp.name)
                    if pad is not None:
                        desc += f", {_pad_text(pad)}"
                    if inp.masked:
                        desc += (
                            ", masked: lengths["
                            + repr(inp.name)
                            + "] or masks["
                            + repr(inp.name)
                            + "]"
                        )
                out(f"    {v}: {desc}")
            outs = []
            for o in m.model.outputs:
                t = self.tensor(o.name)
                shape = ", ".join(_dim_text(d) for d in t.shape)
                outs.append(
                    f"{o.name} [{shape}]" + (f" with its mask ({t.mask})" if o.with_mask else "")
                )
            for line in textwrap.wrap(f"returns {', '.join(outs)}", 88, subsequent_indent="    "):
                out(line)
            out()
            out("Training mode is module.train(); debug=True checks the declared mask kinds.")
            out('"""')
            out()
            weights = [f"{layer.name}/{w.name}" for layer in m.layers for w in layer.weights]
            if weights:
                with out.block("WEIGHTS = ("):
                    for k in weights:
                        out(f"{_q(k)},")
                out(")  # canonical keys, in Keras' get_weights() order")
            else:
                out("WEIGHTS = ()  # this model has no weights")
            with out.block("SHAPES = {"):
                for inp, _ in params:
                    dims = []
                    for d in inp.dims:
                        dims.append(
                            "None"
                            if d.value is None
                            else (str(d.value) if isinstance(d.value, int) else _q(d.value))
                        )
                    tup = ", ".join(dims) + ("," if len(dims) == 1 else "")
                    out(f"{_q(inp.name)}: ({tup}),")
            out("}  # declared shapes: symbols, sizes, None for `_`")
            if m.pads:
                with out.block("PADS = {"):
                    for inp, _ in params:
                        pad = m.pads.get(inp.name)
                        if pad is None:
                            continue
                        t = self.tensor(inp.name)
                        time = t.shape[1]
                        tsym = (
                            _q(str(time)) if (time is not None and time.value is None) else "None"
                        )
                        maxlen = (
                            pad.maxlen
                            if pad.maxlen is not None
                            else (time.value if time is not None else None)
                        )
                        value = (
                            _fmt_value(pad.value)
                            if t.dtype in ("i32", "i64", "bool")
                            else repr(float(pad.value))
                        )
                        out(f"{_q(inp.name)}: ({_q(pad.side)}, {value}, {maxlen}, {_q(pad.truncate)}, "
                            f"{_q(_TORCH_DTYPE[t.dtype])}, {tsym}),")  # fmt: skip
                out("}  # side, value, maxlen, truncate, dtype, time symbol")
            out()
            init = "dtype=torch.float32, externs=None" if m.externs else "dtype=torch.float32"
            with out.block(f"def __init__(self, {init}):"):
                out("super().__init__()")
                out("self.debug = False")
                out("# follows .to(): the dtype and device that inputs are cast to")
                out('self.register_buffer("anchor", torch.zeros(()), persistent=False)')
                for line in self.init.lines:
                    out(line)
                out("self.to(dtype)")
            out()
            head = f"self, {sig}, *, lengths=None, masks=None, dropout_masks=None"
            if len(f"    def forward({head}):") > 100:
                out("def forward(")
                out(f"    {head}")
                out("):")
            else:
                out(f"def forward({head}):")
            with out.block(""):
                out.lines.pop()
                for line in self.fwd.lines:
                    out(line)
            if m.pads:
                out()
                self.pad_method(out)
            out()
            with out.block("def load_canonical(self, weights):"):
                out(
                    '"""Load {"layer/weight": array} in the canonical layout (bit-exact in the same dtype)."""'
                )
                out("missing = [key for key in self.WEIGHTS if key not in weights]")
                out("unexpected = [key for key in weights if key not in self.WEIGHTS]")
                with out.block("if missing or unexpected:"):
                    out('raise KeyError(f"weights: missing {missing}, unexpected {unexpected}")')
                out("state = self.state_dict(keep_vars=True)")
                nested = out.block("with torch.no_grad():"), out.block("for key in self.WEIGHTS:")
                with nested[0], nested[1]:
                    out('target = state[key.replace("/", ".")]')
                    out("value = torch.as_tensor(np.asarray(weights[key]))")
                    with out.block("if tuple(value.shape) != tuple(target.shape):"):
                        out(
                            'raise ValueError(f"{key}: shape {list(value.shape)}, not {list(target.shape)}")'
                        )
                    out("target.copy_(value)")
            out()
            with out.block("def canonical_weights(self):"):
                out('"""The weights as {"layer/weight": numpy array}, in the canonical layout."""')
                out("state = self.state_dict()")
                out(
                    'return {key: state[key.replace("/", ".")].cpu().numpy().copy() for key in self.WEIGHTS}'
                )
            out()
            with out.block("def reset_states(self):"):
                if self.stateful_layers:
                    out('"""Zero the states of the stateful layers (as after construction)."""')
                    for layer in self.stateful_layers:
                        out(f"{self.attr(layer)}.reset_states()")
                else:
                    out('"""No layer of this model is stateful: nothing to reset."""')

    def pad_method(self, out: CodeWriter) -> None:
        with out.block("def pad(self, *raw):"):
            out('"""Pad ragged data by the pad(...) declarations: keras.utils.pad_sequences in the')
            out("declared dtype, one list of sequences per padded input, in declaration order.")
            out(
                "Inputs that share a time symbol are padded to one length. Returns (batch, lengths)"
            )
            out('for one padded input, a tuple of such pairs for several."""')
            with out.block("if len(raw) != len(self.PADS):"):
                out(
                    'raise TypeError(f"pad takes one list of sequences per input of {list(self.PADS)}")'
                )
            out(
                "group = {name: pad[5] or name for name, pad in self.PADS.items()}  # by time symbol"
            )
            out("steps, longest = {}, {}")
            with out.block("for (name, pad), seqs in zip(self.PADS.items(), raw, strict=True):"):
                out("maxlen, g = pad[2], group[name]")
                with out.block("if maxlen is not None:"):
                    out("steps[g] = min(steps.get(g, maxlen), maxlen)")
                out("longest[g] = max(longest.get(g, 0), max((len(s) for s in seqs), default=0))")
            out("out = []")
            with out.block("for (name, pad), seqs in zip(self.PADS.items(), raw, strict=True):"):
                out("side, value, _, truncate, dtype, _ = pad")
                out("n = steps.get(group[name], longest[group[name]])")
                out("batch, lengths = pad_sequences(seqs, side, value, n, truncate, dtype)")
                out("out.append((torch.from_numpy(batch), torch.from_numpy(lengths)))")
            out("return out[0] if len(out) == 1 else tuple(out)")
