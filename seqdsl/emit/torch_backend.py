"""The PyTorch emitter: a checked model -> a short torch module that holds the model.

The emitted module imports numpy, torch and its run-time code from
:mod:`seqdsl.runtime.torch` (the layer classes, fused-kernel helpers and mask
rules, real Python), and defines ``class {Model}``, whose ``forward`` reads like
code a person would write: one line per layer, and a comment wherever masks are
handled. ``seqdsl compile --standalone`` copies the imported definitions in
instead (:mod:`seqdsl.emit.standalone`). Recurrent layers run on torch's fused
RNN ops (``torch.lstm``, ``torch.gru``, ``torch.rnn_tanh``/``rnn_relu``: what
``nn.LSTM`` calls, cuDNN on CUDA); only the cells the checker marks ``loop``
(non-standard activations, recurrent dropout, GRU ``reset_after=false``) step in
Python. See docs/backend-torch.md.

Layers are written through tables, one small method per layer or family:
:data:`APPLY` (layers with their own call shape: recurrent, attention, wrappers)
and :data:`TRANSFORMS` (one input, one output), as sqlglot's generators do.

This module only writes text; it imports no framework.
"""

from __future__ import annotations

import builtins
import functools
import keyword
import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from ..catalogue import Cfg, _axis_of, _cell_of, backward_of, mha_sizes
from ..cells import is_cell_layer
from ..checker import CheckedModel, LayerInfo
from ..dims import Dim
from ..ir import ApplyOp, DropMaskOp, InputDecl, MergeOp
from ..types import MaskKind, MaskType, TensorType
from . import CodeWriter, Unsupported, torch_cells
from .common import constraint_check
from .standalone import ImportItem, format_imports
from .torch_common import (
    ACTIVATION_EXPR,
    MODULE_ATTRS,
    RUNTIME,
    class_name,
    q,
    runtime_names,
)

__all__ = ["APPLY", "TRANSFORMS", "emit_model", "instantiate", "class_name"]

_TORCH_DTYPE = {"f32": "float32", "f64": "float64", "i32": "int32", "i64": "int64", "bool": "bool"}
_CELL_CLASS = {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "SimpleRNN"}
_FUSED_OP = {"lstm": "torch.lstm", "gru": "torch.gru", "simple_rnn": "torch.rnn_tanh"}
_RECURRENT = ("LSTM", "GRU", "SimpleRNN", "RNN")

#: attributes of nn.Module and of the generated model: no layer may take these names
_MODULE_ATTRS = MODULE_ATTRS
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


_q = q


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
@dataclass
class _Input:
    """What a layer reads: its input's variable, type (with an explicit mask= applied)
    and mask variable, and its training= argument."""

    x: str
    t: TensorType
    mask: str | None
    training: bool | None


@dataclass
class _Use:
    """One application of a one-input, one-output layer, as a :data:`TRANSFORMS`
    method sees it."""

    kind: str
    cfg: Cfg
    info: LayerInfo
    r: str  # the result value
    x: str
    in_t: TensorType
    in_mask: str | None
    training: bool | None
    note: str | None  # a comment above the constructor
    feat: int | str | None  # the input's features (a size; as the checker bound it)
    out_t: TensorType
    layer: str  # the layer module: self.name
    train: str  # the training flag, as code

    @property
    def name(self) -> str:
        return self.info.name


@dataclass
class _Emitter:
    model: CheckedModel
    source: str
    init: CodeWriter = field(default_factory=CodeWriter)
    fwd: CodeWriter = field(default_factory=CodeWriter)
    #: the run-time names the generated code uses (imported from seqdsl.runtime.torch)
    snippets: set[str] = field(default_factory=set)
    var: dict[str, str] = field(default_factory=dict)
    mask: dict[str, str | None] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)
    stateful_layers: list[str] = field(default_factory=list)
    #: cell blocks and extern layers (seqdsl/emit/torch_cells.py)
    custom: torch_cells.Custom = field(default_factory=torch_cells.Custom)

    # ------------------------------------------------------------------ names
    def fresh(self, base: str) -> str:
        name = base
        while (
            name in self.taken
            or keyword.iskeyword(name)
            or name in _FORWARD_NAMES
            or name in runtime_names()
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

    def module_name(self, layer: str) -> str:
        """The layer's submodule name: its own, or `{layer}_layer` (then more `_`)
        where it would collide with an attribute of nn.Module or of SeqdslModule
        (torch.func, torch.export and torch.jit look submodules up with getattr)."""
        if "." in layer or "/" in layer:
            raise Unsupported(layer, "a layer name with '.' or '/' cannot key a state_dict")
        if layer == "training":  # module.train() assigns the attribute `training`
            raise Unsupported(layer, "nn.Module owns the name `training`: rename the layer")
        if layer not in _MODULE_ATTRS:
            return layer
        name = f"{layer}_layer"
        while name in _MODULE_ATTRS or name in self.by_name:
            name += "_"
        return name

    def attr(self, layer: str) -> str:
        name = self.module_name(layer)
        if name.isidentifier() and not keyword.iskeyword(name):
            return f"self.{name}"
        return f"self._modules[{_q(name)}]"

    def state_key(self, layer: str, kind: str, weight: str) -> str:
        """The state_dict key of canonical weight `{layer}/{weight}`: the submodule
        path, with Bidirectional's directions under Keras' forward_layer / backward_layer."""
        parts = weight.split("/")
        if kind == "Bidirectional" and parts[0] in ("forward", "backward"):
            parts[0] += "_layer"
        return ".".join([self.module_name(layer), *parts])

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
        if expr is not None and expr.isidentifier():  # a run-time function
            self.snippets.add(expr)
        elif expr is not None and expr.startswith("F."):
            self.snippets.add("F")
        return expr

    def cell_act(self, name: str) -> str:
        """An activation a recurrent cell calls: a callable also for linear."""
        expr = self.act(name)
        if expr is None:
            self.snippets.add("linear")
            return "linear"
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
        keys = [self.stackable(i, op) for i, op in enumerate(ops)]
        for i, op in enumerate(ops):
            low = keys[i]
            if low is None or not low[4]:  # the lower layer must return its sequence
                continue
            assert isinstance(op, ApplyOp)
            (r,) = op.results
            rs = readers.get(r, [])
            if r in outputs or len(rs) != 1:
                continue
            j = rs[0]
            upper = ops[j]
            top = keys[j]
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
        if op.mask is not None or op.initial_state is not None or len(op.inputs) != 1:
            return None
        cfg = Cfg(info.config)
        cell, raw_cell_cfg = _cell_of(info.config, op.layer.kind)
        cell_cfg = Cfg(raw_cell_cfg)
        if cfg.flag("return_state") or cfg.flag("stateful") or cfg.flag("go_backwards"):
            return None
        if cell_cfg.number("dropout") or cell_cfg.number("recurrent_dropout"):
            return None
        act = cell_cfg.raw("activation")
        return (cell, cell_cfg.integer("units"), cell_cfg.flag("use_bias"), act,
                cfg.flag("return_sequences"))  # fmt: skip

    # ------------------------------------------------------------------ inputs
    def emit_inputs(self) -> list[tuple[InputDecl, str]]:
        m = self.model
        params: list[tuple[InputDecl, str]] = []
        for inp in m.model.inputs:
            params.append((inp, self.bind(inp.name)))
        w = self.fwd
        floats = any(isinstance(t, TensorType) and t.dtype in ("f32", "f64")
                     for t in (m.types[i.name] for i, _ in params))  # fmt: skip
        w(
            "device, dtype = self.anchor.device, self.anchor.dtype"
            if floats
            else "device = self.anchor.device"
        )
        masked = [(inp, v) for inp, v in params if inp.masked]
        if len(masked) == 1:
            name = _q(masked[0][0].name)
            w("if lengths is not None and not isinstance(lengths, dict):")
            w(f"    lengths = {{{name}: lengths}}")
            w("if masks is not None and not isinstance(masks, dict):")
            w(f"    masks = {{{name}: masks}}")
        self.snippets.add("check_inputs")
        args = ", ".join(f"{_q(inp.name)}: {v}" for inp, v in params)
        names = [_q(inp.name) for inp, _ in masked]
        tup = f"({names[0]},)" if len(names) == 1 else f"({', '.join(names)})"
        prefix = "sizes = " if m.constraints else ""
        self.call(
            w, prefix, "check_inputs", ["self.INPUTS", f"{{{args}}}", "lengths", "masks", tup]
        )
        for inp, v in params:
            t = m.types[inp.name]
            if isinstance(t, MaskType):
                w(f"{v} = torch.as_tensor({v}, dtype=torch.bool, device=device)")
            elif t.dtype in ("f32", "f64"):
                w(f"{v} = torch.as_tensor({v}, dtype=dtype, device=device)")
            else:
                w(f"{v} = torch.as_tensor({v}, device=device)")
        for c in m.constraints:
            test, msg = constraint_check(c)
            w(f"if {test}:  # a run-time constraint")
            w._level += 1
            self.call(w, "raise ", "InputError", [msg])
            self.snippets.add("InputError")
            w._level -= 1
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
        axis = _axis_of(info.config, first.rank) if fn == "concat" else -1
        if fn == "concat":
            dim = -1 if axis == first.rank - 1 else axis
            expr = f"torch.cat([{', '.join(ins)}], dim={dim})"
        else:
            expr = _MERGES[fn](ins)
        v = self.bind(r)
        self.fwd(f"{v} = {expr}")
        if out_t.mask is None:
            self.mask[r] = None
            return
        present = list(dict.fromkeys(mk for mk in masks if mk is not None))
        if fn == "concat" and axis == 1:
            if None in masks:
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
        """One layer: an extern or a cell block (torch_cells), else the table entry of
        its kind (APPLY, then TRANSFORMS for a one-input, one-output layer)."""
        kind = op.layer.kind
        if kind in self.model.externs:
            torch_cells.emit_extern(self, op, info)
            return
        if kind in ("RNN", "Bidirectional") and is_cell_layer(info.config):
            torch_cells.emit_cell_rnn(self, op, info)
            return
        x_name = op.inputs[0].name
        in_t = self.tensor(x_name)
        in_mask = self.mask[x_name]
        if op.mask is not None:
            mt = self.model.types[op.mask.name]
            assert isinstance(mt, MaskType)
            in_t = in_t.with_mask(mt.kind)
            in_mask = self.var[op.mask.name]
        training = None if op.training is None else bool(op.training.value)
        inp = _Input(self.var[x_name], in_t, in_mask, training)
        special = APPLY.get(kind)
        if special is not None:
            special(self, op, info, inp)
        else:
            self.emit_simple(kind, info.config, info, op, inp)

    def apply_time_distributed(self, op: ApplyOp, info: LayerInfo, inp: _Input) -> None:
        inner = Cfg(info.config).layer("layer")
        note = f"TimeDistributed({inner.kind}): {inner.kind} acts on the last axis: on every step"
        self.emit_simple(inner.kind, inner.config, info, op, inp, note=note)

    def apply_temporal_split(self, op: ApplyOp, info: LayerInfo, inp: _Input) -> None:
        n = Cfg(info.config).integer("parts")
        x, in_mask = inp.x, inp.mask
        outs = [self.bind(res) for res in op.results]
        self.fwd(f"{', '.join(outs) if n > 1 else outs[0] + ','} = {x}.chunk({n}, dim=1)")
        if in_mask is not None:
            ms = [self.bind_mask(res) for res in op.results]
            self.stmt(self.fwd, f"{', '.join(ms) if n > 1 else ms[0] + ','} = {in_mask}.chunk({n}, dim=1)",
                      "masks split likewise")  # fmt: skip
        else:
            for res in op.results:
                self.mask[res] = None

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
        inp: _Input,
        note: str | None = None,
    ) -> None:
        """A one-input, one-output layer through its TRANSFORMS entry, which returns
        whether the output's mask is the input's (else it set the mask itself)."""
        (r,) = op.results
        in_t = inp.t
        out_t = self.tensor(r)
        train = "self.training" if inp.training is None else str(inp.training)
        feat = in_t.features.value if in_t.features is not None else None
        use = _Use(kind, Cfg(cfg), info, r, inp.x, in_t, inp.mask, inp.training, note,
                   feat, out_t, self.attr(info.name), train)  # fmt: skip
        transform = TRANSFORMS.get(kind)
        if transform is None:  # pragma: no cover - the catalogue and this emitter agree
            raise Unsupported(info.name, f"{kind} has no torch translation")
        if transform(self, use):
            self.mask[r] = inp.mask if out_t.mask is not None else None
        elif r not in self.mask:
            self.mask[r] = None

    def embedding(self, u: _Use) -> bool:
        w = self.fwd
        self.snippets.add("Embedding")
        args = [str(u.cfg.integer("input_dim")), str(u.cfg.integer("output_dim"))]
        self.register(u.name, "Embedding", [*args, f"name={_q(u.name)}"], u.note)
        v = self.bind(u.r)
        w(f"{v} = {u.layer}({u.x})")
        if u.out_t.mask is not None and u.cfg.flag("mask_zero") and u.in_t.rank >= 2:
            mv = self.bind_mask(u.r)
            w(f"{mv} = {u.x} != 0  # Embedding(mask_zero=true): id 0 is padding")
            self.debug_generated(
                u.name, "Embedding(mask_zero=true)", mv, u.out_t.mask, u.in_t, "id 0"
            )
        else:  # without mask_zero a caller's mask passes through
            self.mask[u.r] = u.in_mask if u.out_t.mask is not None else None
        return False

    def masking(self, u: _Use) -> bool:
        w, x = self.fwd, u.x
        value = u.cfg.number("mask_value")
        v = self.bind(u.r)
        mv = self.bind_mask(u.r)
        w(
            f"# Masking({_fmt_value(value)}): a step whose features all equal {_fmt_value(value)} is masked, and zeroed"
        )
        w(f"{mv} = ({x} != {_num(value)}).any(-1)")
        w(f"{v} = torch.where({mv}[..., None], {x}, 0.0)")
        self.debug_generated(u.name, f"Masking(mask_value={_fmt_value(value)})", mv, u.out_t.mask,
                             u.in_t, f"a step of all {_fmt_value(value)}")  # fmt: skip
        return False

    def dense(self, u: _Use) -> bool:
        self.snippets.add("Dense")
        args = [str(u.feat), str(u.cfg.integer("units"))]
        if not u.cfg.flag("use_bias"):
            args.append("use_bias=False")
        a = self.act(u.cfg.text("activation"))
        if a is not None:
            args.append(f"activation={a}")
        self.register(u.name, "Dense", args, u.note)
        self.fwd(f"{self.bind(u.r)} = {u.layer}({u.x})")
        return True

    def activation(self, u: _Use) -> bool:
        a = self.act(u.cfg.text("activation"))
        v = self.bind(u.r)
        self.fwd(f"{v} = {u.x}" if a is None else f"{v} = {a}({u.x})")
        return True

    def dropout(self, u: _Use) -> bool:
        self.snippets.add("dropout")
        v = self.bind(u.r)
        rate = _num(u.cfg.number("rate"))
        self.call(self.fwd, f"{v} = ", "dropout", [u.x, rate, u.train, "dropout_masks", _q(u.name)])
        return True

    def spatial_dropout_1d(self, u: _Use) -> bool:
        self.snippets.add("spatial_dropout_1d")
        v = self.bind(u.r)
        rate = _num(u.cfg.number("rate"))
        args = [u.x, rate, u.train, "dropout_masks", _q(u.name)]
        self.call(self.fwd, f"{v} = ", "spatial_dropout_1d", args)
        return True

    def normalization_flags(self, u: _Use, args: list[str]) -> None:
        for flag in ("center", "scale"):
            if not u.cfg.flag(flag):
                args.append(f"{flag}=False")

    def layer_normalization(self, u: _Use) -> bool:
        self.snippets.add("LayerNormalization")
        args = [str(u.feat)]
        if u.cfg.number("epsilon") != 1e-3:
            args.append(f"epsilon={_num(u.cfg.number('epsilon'))}")
        self.normalization_flags(u, args)
        self.register(u.name, "LayerNormalization", args, u.note)
        self.fwd(f"{self.bind(u.r)} = {u.layer}({u.x})")
        return True

    def batch_normalization(self, u: _Use) -> bool:
        self.snippets.add("BatchNormalization")
        args = [str(u.feat)]
        if u.cfg.number("momentum") != 0.99:
            args.append(f"momentum={_num(u.cfg.number('momentum'))}")
        if u.cfg.number("epsilon") != 1e-3:
            args.append(f"epsilon={_num(u.cfg.number('epsilon'))}")
        self.normalization_flags(u, args)
        self.register(u.name, "BatchNormalization", args, u.note)
        call = [u.x]
        if u.in_mask is not None:
            call.append(u.in_mask)
        comment = "moments over the valid steps in training" if u.in_mask is not None else ""
        if u.cfg.raw("trainable") is False:  # a frozen BatchNormalization runs in inference mode
            call.append("training=False")
            comment = "trainable=false: always the moving statistics (as Keras)"
        elif u.training is not None:
            call.append(f"training={u.training}")
        self.stmt(self.fwd, f"{self.bind(u.r)} = {u.layer}({', '.join(call)})", comment)
        return True

    def conv1d(self, u: _Use) -> bool:
        self.snippets.add("Conv1D")
        cfg = u.cfg
        k, s, d = cfg.integer("kernel_size"), cfg.integer("strides"), cfg.integer("dilation_rate")
        padding = cfg.text("padding")
        args = [str(u.feat), str(cfg.integer("filters")), str(k)]
        if s != 1:
            args.append(f"strides={s}")
        if padding != "valid":
            args.append(f"padding={_q(padding)}")
        if d != 1:
            args.append(f"dilation_rate={d}")
        if not cfg.flag("use_bias"):
            args.append("use_bias=False")
        a = self.act(cfg.text("activation"))
        if a is not None:
            args.append(f"activation={a}")
        self.register(u.name, "Conv1D", args, u.note)
        v = self.bind(u.r)
        x, in_mask = u.x, u.in_mask
        self.fwd(
            f"{v} = {u.layer}({x}, {in_mask})" if in_mask is not None else f"{v} = {u.layer}({x})"
        )
        self.window_mask(u.r, in_mask, k, s, d, padding)
        return False

    def pooling(self, u: _Use) -> bool:
        self.snippets.add("pool1d")
        p = u.cfg.integer("pool_size")
        strides = u.cfg.opt_integer("strides")
        s = p if strides is None else strides
        padding = u.cfg.text("padding")
        how = "max" if u.kind == "MaxPooling1D" else "mean"
        v = self.bind(u.r)
        self.call(self.fwd, f"{v} = ", "pool1d", [u.x, str(u.in_mask), _q(how), str(p), str(s), _q(padding)],
                  f"  # {u.kind}")  # fmt: skip
        self.window_mask(u.r, u.in_mask, p, s, 1, padding)
        return False

    def global_pooling(self, u: _Use) -> bool:
        self.snippets.add("global_pool")
        how = "max" if u.kind == "GlobalMaxPooling1D" else "mean"
        keep = ["keepdims=True"] if u.cfg.flag("keepdims") else []
        args = [u.x, str(u.in_mask), _q(how), *keep]
        self.call(self.fwd, f"{self.bind(u.r)} = ", "global_pool", args, f"  # {u.kind}")
        return False

    def flatten(self, u: _Use) -> bool:
        self.fwd(f"{self.bind(u.r)} = {u.x}.flatten(1)")
        return True

    def reshape(self, u: _Use) -> bool:
        target = u.cfg.raw("target_shape")
        assert isinstance(target, tuple)
        x = u.x
        self.fwd(
            f"{self.bind(u.r)} = {x}.reshape({x}.shape[0], {', '.join(str(t) for t in target)})"
        )
        return True

    def temporal_softmax(self, u: _Use) -> bool:
        self.snippets.add("temporal_softmax")
        self.fwd(f"{self.bind(u.r)} = temporal_softmax({u.x}, {u.in_mask})")
        return False

    def emit_attention(self, op: ApplyOp, info: LayerInfo, inp: _Input | None = None) -> None:
        """Attention / MultiHeadAttention on (query, value[, key]): each input brings its
        own mask; the key steps' mask is the AND of the value's and the key's."""
        kind, name = info.kind, info.name
        cfg = Cfg(info.config)
        names = [u.name for u in op.inputs]
        types = [self.tensor(n) for n in names]
        xs = [self.var[n] for n in names]
        q_mask = self.mask[names[0]]
        key_masks = list(dict.fromkeys(m for m in (self.mask[n] for n in names[1:]) if m))
        dropout = cfg.number("dropout")
        causal, scores = cfg.flag("use_causal_mask"), cfg.flag("return_attention_scores")
        self.snippets.add(kind)
        opts: list[str] = []
        if kind == "Attention":
            args = [_q(name)]
            fused = cfg.text("score_mode") == "dot" and not scores
            if cfg.flag("use_scale"):
                opts.append("use_scale=True")
            if cfg.text("score_mode") == "concat":
                opts.append('score_mode="concat"')
        else:
            heads, key_dim, value_dim, out_size = mha_sizes(info.config, types)
            sizes = [t.features.value if t.features is not None else None for t in types]
            key_t = types[2] if len(types) > 2 else types[1]
            kf = key_t.features.value if key_t.features is not None else None
            size_text = f"({sizes[0]}, {kf}, {sizes[1]}, {out_size})"
            args = [_q(name), size_text, str(heads), str(key_dim), str(value_dim)]
            fused = not scores
            if not cfg.flag("use_bias"):
                opts.append("use_bias=False")
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
    def emit_recurrent(self, op: ApplyOp, info: LayerInfo, inp: _Input) -> None:
        x, in_t, in_mask, training = inp.x, inp.t, inp.mask, inp.training
        kind = op.layer.kind
        cfg = Cfg(info.config)
        name = info.name
        bi = kind == "Bidirectional"
        if bi:
            inner = cfg.layer("layer")
            flags = Cfg(inner.config)
            cell, raw_cell_cfg = _cell_of(inner.config, inner.kind)
        else:
            flags = cfg
            cell, raw_cell_cfg = _cell_of(info.config, kind)
        cell_cfg = Cfg(raw_cell_cfg)
        assert info.kernels is not None
        choice = info.kernels["torch"]
        fused = choice.kernel != "loop"
        side = in_t.mask.side if (in_t.mask is not None and in_mask is not None) else None
        feat = in_t.features.value if in_t.features is not None else None
        units = cell_cfg.integer("units")
        return_state = flags.flag("return_state")
        stateful = flags.flag("stateful")
        packed = fused and cell == "lstm" and side is not None and (return_state or stateful)
        go_back = flags.flag("go_backwards")
        opts: list[str] = []
        if side is not None:
            opts.append(f"mask_side={_q(side)}")
        if not fused:
            opts.append("fused=False")
        if packed:
            opts.append("packed=True")
        for flag in ("return_sequences", "return_state"):
            if flags.flag(flag):
                opts.append(f"{flag}=True")
        if flags.text("masked_output") == "carry":
            opts.append('masked_output="carry"')
        tail: list[str] = []
        if stateful:  # in Bidirectional: each direction carries its own states
            batch = in_t.batch.value if in_t.batch is not None else None
            tail.append(f"stateful_batch={batch}")
            self.stateful_layers.append(name)
        # the backward direction of a Bidirectional: its backward_layer's own configuration
        back = backward_of(info.config) if bi else None
        back_cfg = Cfg(_cell_of(back.config, back.kind)[1]) if back is not None else cell_cfg
        drop = max(cell_cfg.number("dropout"), back_cfg.number("dropout"))
        rdrop = max(cell_cfg.number("recurrent_dropout"), back_cfg.number("recurrent_dropout"))
        cls = _CELL_CLASS[cell]
        self.snippets.add(cls)

        def ctor(layer_name: str, backwards: bool) -> list[str]:
            c = back_cfg if backwards else cell_cfg
            o = list(opts)
            if backwards:
                o.insert(0, "go_backwards=True")
            rates = [
                f"{k}={_num(c.number(k))}" for k in ("dropout", "recurrent_dropout") if c.number(k)
            ]
            return [
                _q(layer_name),
                str(feat),
                str(units),
                *self.cell_options(cell, c),
                *o,
                *rates,
                *tail,
            ]

        note = self.kernel_note(
            choice.kernel, choice.reason, cell, side, go_back, packed, bi, in_t.mask
        )
        if bi:
            self.bidirectional(name, cls, ctor, cfg.text("merge_mode"))
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
        if flags.flag("return_sequences") and in_mask is not None:
            seqs = op.results[:2] if (bi and cfg.text("merge_mode") == "none") else op.results[:1]
            for r in seqs:
                if self.tensor(r).mask is None:
                    continue
                if go_back and not bi:
                    mv = self.bind_mask(r)
                    self.fwd(f"{mv} = {in_mask}.flip(1)  # outputs in reversed time order")
                else:
                    self.mask[r] = in_mask

    def cell_options(self, cell: str, c: Cfg) -> list[str]:
        """The keyword arguments of a recurrent layer's runtime class that come from its
        cell's configuration (one direction of a Bidirectional)."""
        out: list[str] = []
        if not c.flag("use_bias"):
            out.append("use_bias=False")
        if cell == "gru" and not c.flag("reset_after"):
            out.append("reset_after=False")
        act = c.text("activation")
        if act != "tanh":
            out.append(f"activation={self.cell_act(act)}")
        if cell != "simple_rnn" and c.text("recurrent_activation") != "sigmoid":
            out.append(f"recurrent_activation={self.cell_act(c.text('recurrent_activation'))}")
        return out

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
    def assemble(self, params: list[tuple[InputDecl, str]]) -> str:
        m = self.model
        body = CodeWriter()
        for text in self.custom.classes.values():  # one class per cell block used
            body()
            body()
            body.lines += text.rstrip("\n").split("\n")
        body()
        body()
        self.model_class(body, params)
        # self.snippets: the run-time names the code reads, and "F" where it reads
        # torch.nn.functional (an activation, a cell's equations)
        code = "\n".join(body.lines)
        items = [
            ImportItem("torch"),
            *(ImportItem(RUNTIME, n) for n in sorted(self.snippets - {"F"})),
        ]
        # (a substring test first: a regular expression over a large model's text is slow)
        if "np." in code and re.search(r"\bnp\.", code):
            items.append(ImportItem("numpy", alias="np"))
        if "nn." in code and re.search(r"\bnn\.", code):
            items.append(ImportItem("torch", "nn"))
        if "F" in self.snippets:
            items.append(ImportItem("torch.nn.functional", alias="F"))
        items += torch_cells.extern_imports(self)
        out = CodeWriter()
        out(f'"""{m.name}: a PyTorch module generated by seqdsl.')
        out()
        out(f"Source: {self.source}")
        out("Run-time code: seqdsl.runtime.torch (seqdsl compile --standalone copies it in).")
        out("Parameters are the Keras weights in seqdsl's canonical layout: WEIGHTS maps each")
        out('canonical key "layer/weight" to its state_dict key ("layer.weight"; Bidirectional\'s')
        out(
            '"layer/forward/w" is "layer.forward_layer.w"), for load_canonical / canonical_weights.'
        )
        out("Recurrent layers run on torch's fused RNN ops (cuDNN on CUDA); masks become lengths,")
        out("rolls or compactions as the comments say.")
        out('"""')
        out()
        for line in format_imports(items):
            out(line)
        out.lines = torch_cells.docstring_lines(self, out.lines)
        out.lines += body.lines
        return out.text()

    def model_class(self, out: CodeWriter, params: list[tuple[InputDecl, str]]) -> None:
        m = self.model
        cls = class_name(m)
        sig = ", ".join(v for _, v in params)
        self.snippets.add("SeqdslModule")
        with out.block(f"class {cls}(SeqdslModule):"):
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
            weights = [
                (f"{layer.name}/{w.name}", self.state_key(layer.name, layer.kind, w.name))
                for layer in m.layers
                for w in layer.weights
            ]
            if weights:
                with out.block("WEIGHTS = {"):
                    for k, state in weights:
                        out(f"{_q(k)}: {_q(state)},")
                out("}  # canonical key: state_dict key, in Keras' get_weights() order")
            with out.block("INPUTS = {"):
                for inp, _ in params:
                    dims = []
                    for d in inp.dims:
                        dims.append(
                            "None"
                            if d.value is None
                            else (str(d.value) if isinstance(d.value, int) else _q(d.value))
                        )
                    tup = ", ".join(dims) + ("," if len(dims) == 1 else "")
                    dtype = "mask" if inp.is_mask else inp.dtype
                    out(f"{_q(inp.name)}: ({_q(dtype)}, ({tup})),")
            out("}  # declared inputs: dtype, shape (symbols, sizes, None for `_`)")
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
            if self.stateful_layers:
                names = ", ".join(_q(self.module_name(layer)) for layer in self.stateful_layers)
                out(f"STATEFUL = ({names},)  # stateful layers: reset_states() zeroes them")
            out()
            init = "dtype=torch.float32, externs=None" if m.externs else "dtype=torch.float32"
            with out.block(f"def __init__(self, {init}):"):
                out("super().__init__()")
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


# --------------------------------------------------------------------------
# the tables: layer kind -> the method that writes it


def _fold(fn: str, ins: list[str]) -> str:
    expr = ins[0]
    for x in ins[1:]:
        expr = f"torch.{fn}({expr}, {x})"
    return expr


#: merge function -> its expression over the inputs (concat: in emit_merge, with its axis)
_MERGES: dict[str, Callable[[list[str]], str]] = {
    "add": lambda ins: " + ".join(ins),
    "subtract": lambda ins: f"{ins[0]} - {ins[1]}",
    "multiply": lambda ins: " * ".join(ins),
    "average": lambda ins: f"({' + '.join(ins)}) / {len(ins)}",
    "maximum": functools.partial(_fold, "maximum"),
    "minimum": functools.partial(_fold, "minimum"),
}

#: layers with their own call shape (several inputs or results, wrappers, recurrent)
APPLY: dict[str, Callable[[_Emitter, ApplyOp, LayerInfo, _Input], None]] = {
    "LSTM": _Emitter.emit_recurrent,
    "GRU": _Emitter.emit_recurrent,
    "SimpleRNN": _Emitter.emit_recurrent,
    "RNN": _Emitter.emit_recurrent,
    "Bidirectional": _Emitter.emit_recurrent,
    "Attention": _Emitter.emit_attention,
    "MultiHeadAttention": _Emitter.emit_attention,
    "TimeDistributed": _Emitter.apply_time_distributed,
    "TemporalSplit": _Emitter.apply_temporal_split,
}

#: one input, one output: the method writes the layer and returns whether the output's
#: mask is the input's (TimeDistributed reuses these for its inner layer)
TRANSFORMS: dict[str, Callable[[_Emitter, _Use], bool]] = {
    "Embedding": _Emitter.embedding,
    "Masking": _Emitter.masking,
    "Dense": _Emitter.dense,
    "Activation": _Emitter.activation,
    "Dropout": _Emitter.dropout,
    "SpatialDropout1D": _Emitter.spatial_dropout_1d,
    "LayerNormalization": _Emitter.layer_normalization,
    "BatchNormalization": _Emitter.batch_normalization,
    "Conv1D": _Emitter.conv1d,
    "MaxPooling1D": _Emitter.pooling,
    "AveragePooling1D": _Emitter.pooling,
    "GlobalAveragePooling1D": _Emitter.global_pooling,
    "GlobalMaxPooling1D": _Emitter.global_pooling,
    "Flatten": _Emitter.flatten,
    "Reshape": _Emitter.reshape,
    "TemporalSoftmax": _Emitter.temporal_softmax,
}
