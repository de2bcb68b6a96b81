"""ONNX export: an ONNX graph built from the checked model with ``onnx.helper``.

Unlike the other emitters this one writes no Python source: it walks the
checked model's operations in order (as :mod:`seqdsl.emit.jax_backend` does)
and adds ONNX nodes per layer kind through the table :data:`LAYERS`.
Recurrent layers become ONNX's own ``LSTM``/``GRU``/``RNN`` nodes with
``sequence_lens``, so that onnxruntime runs its fused kernels; the canonical
(Keras) weights are converted to ONNX's layout (gate order, transposes,
separate input and recurrent biases) and stored as initializers.

Why an emitter and not ``torch.onnx.export`` of the torch module: the dynamo
exporter decomposes or rejects ``pack_padded_sequence`` and loses
``sequence_lens`` (and the legacy exporter bakes the batch and cut lengths into
the graph), so it cannot give a graph with native recurrent ops, dynamic
shapes and per-row lengths. The checked IR has everything needed.

Masks inside the graph are boolean ``[B, T]`` tensors, as in the reference
interpreter (docs/semantics.md). A recurrent layer whose mask is statically
``post`` (right padding) feeds ``sequence_lens`` directly; ``pre`` and ``any``
(gaps) masks first compact each row's valid steps to the front (a stable
cumsum-based position per step and ``ScatterElements``; for a pre mask this is
the roll of each row by its padding), run, and gather the outputs back to
their steps. Rows with no valid step run one step (ONNX ``sequence_lens`` of 0
is not accepted everywhere) and are then restored: their states to the
initial state, their outputs to 0.

``onnx`` is imported inside :func:`export_onnx` only: the compiler imports no
framework.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..catalogue import BoundLayer, _cell_of, backward_of
from ..cells import is_cell_layer
from ..checker import CheckedModel, LayerInfo
from ..initializers import initial_weights
from ..ir import ApplyOp, DropMaskOp, MergeOp
from ..layerspec import Cfg
from ..types import MaskType, TensorType
from . import Unsupported

__all__ = ["export_onnx", "input_names", "weight_problems", "LAYERS", "RNN_ACTIVATIONS"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

#: Keras activations that ONNX's recurrent ops take (attribute ``activations``):
#: the ONNX function and its ``activation_alpha``/``activation_beta`` (None: takes none)
RNN_ACTIVATIONS: dict[str, tuple[str, float | None, float | None]] = {
    "sigmoid": ("Sigmoid", None, None),
    "tanh": ("Tanh", None, None),
    "relu": ("Relu", None, None),
    "softsign": ("Softsign", None, None),
    "softplus": ("Softplus", None, None),
    "linear": ("Affine", 1.0, 0.0),
    "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5),  # keras 3: relu6(x + 3) / 6
    "leaky_relu": ("LeakyRelu", 0.2, None),
    "elu": ("Elu", 1.0, None),
}


@dataclass
class _V:
    """A value in the graph: its tensor, its mask tensor (bool [B, T]) and element type."""

    t: str
    mask: str | None = None
    #: "float", "int" or "bool"
    kind: str = "float"


@dataclass
class _Graph:
    """The graph under construction: nodes and initializers, with fresh names."""

    onnx: Any
    opset: int
    nodes: list[Any] = field(default_factory=list)
    inits: list[Any] = field(default_factory=list)
    counter: int = 0

    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}__{self.counter}"

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> list[str]:
        outs = [self.fresh(op_type) for _ in range(n_out)]
        self.nodes.append(
            self.onnx.helper.make_node(
                op_type, list(inputs), outs, name=self.fresh(f"n_{op_type}"), **attrs
            )
        )
        return outs

    def op1(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        return self.op(op_type, inputs, 1, **attrs)[0]

    def const(self, value: object, dtype: Any = np.float32, hint: str = "c") -> str:
        arr = np.asarray(value, dtype=dtype)
        name = self.fresh(hint)
        self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def ints(self, *values: int) -> str:
        return self.const(list(values), np.int64, "i")

    def scalar(self, value: float) -> str:
        return self.const(value, np.float32, "s")

    # ---------------------------------------------------------- helpers
    def dim(self, x: str, axis: int) -> str:
        """The size of ``x`` at ``axis`` as an int64 [1] tensor."""
        return self.op1("Shape", [x], start=axis, end=axis + 1)

    def unsqueeze(self, x: str, *axes: int) -> str:
        return self.op1("Unsqueeze", [x, self.ints(*axes)])

    def squeeze(self, x: str, *axes: int) -> str:
        return self.op1("Squeeze", [x, self.ints(*axes)])

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        """A reduction over ``axes`` (attribute or input, by opset)."""
        axes_as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if axes_as_input:
            return self.op1(op_type, [x, self.ints(*axes)], keepdims=keepdims)
        return self.op1(op_type, [x], axes=list(axes), keepdims=keepdims)

    def to_float(self, x: str) -> str:
        return self.op1("Cast", [x], to=self.onnx.TensorProto.FLOAT)

    def to_int64(self, x: str) -> str:
        return self.op1("Cast", [x], to=self.onnx.TensorProto.INT64)

    def apply_mask_steps(self, x: str, mask: str) -> str:
        """``x * mask`` on [B, T, ...] with a bool [B, T] mask (masked steps -> 0)."""
        m = self.to_float(mask)
        return self.op1("Mul", [x, self.unsqueeze(m, 2)])

    def reverse_time(self, x: str) -> str:
        return self.op1(
            "Slice", [x, self.ints(-1), self.ints(_INT64_MIN), self.ints(1), self.ints(-1)]
        )

    def time_slice(self, x: str, start: str, end: str) -> str:
        return self.op1("Slice", [x, start, end, self.ints(1)])


_ACT: dict[str, Callable[[_Graph, str], str]] = {}


def _act_fn(name: str) -> Callable[[_Graph, str], str]:
    fn = _ACT.get(name)
    if fn is None:
        raise KeyError(name)
    return fn


def _register_activations() -> None:
    def sig(g: _Graph, x: str) -> str:
        return g.op1("Sigmoid", [x])

    def swish(g: _Graph, x: str) -> str:
        return g.op1("Mul", [x, sig(g, x)])

    def gelu(g: _Graph, x: str) -> str:
        e = g.op1("Erf", [g.op1("Mul", [x, g.scalar(1.0 / np.sqrt(2.0))])])
        half = g.op1("Mul", [x, g.scalar(0.5)])
        return g.op1("Mul", [half, g.op1("Add", [e, g.scalar(1.0)])])

    def mish(g: _Graph, x: str) -> str:
        return g.op1("Mul", [x, g.op1("Tanh", [g.op1("Softplus", [x])])])

    def clip(lo: float, hi: float) -> Callable[[_Graph, str], str]:
        return lambda g, x: g.op1("Clip", [x, g.scalar(lo), g.scalar(hi)])

    _ACT.update(
        {
            "linear": lambda g, x: x,
            "relu": lambda g, x: g.op1("Relu", [x]),
            "sigmoid": sig,
            "tanh": lambda g, x: g.op1("Tanh", [x]),
            "softmax": lambda g, x: g.op1("Softmax", [x], axis=-1),
            "log_softmax": lambda g, x: g.op1("LogSoftmax", [x], axis=-1),
            "softplus": lambda g, x: g.op1("Softplus", [x]),
            "softsign": lambda g, x: g.op1("Softsign", [x]),
            "elu": lambda g, x: g.op1("Elu", [x], alpha=1.0),
            "selu": lambda g, x: g.op1(
                "Selu",
                [x],
                alpha=1.6732632423543772848170429916717,
                gamma=1.0507009873554804934193349852946,
            ),
            "gelu": gelu,
            "silu": swish,
            "swish": swish,
            "exponential": lambda g, x: g.op1("Exp", [x]),
            "hard_sigmoid": lambda g, x: g.op1("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5),
            "relu6": clip(0.0, 6.0),
            "leaky_relu": lambda g, x: g.op1("LeakyRelu", [x], alpha=0.2),
            "mish": mish,
        }
    )


_register_activations()


# --------------------------------------------------------------------------
# the walk


@dataclass
class _Call:
    info: LayerInfo
    cfg: Cfg
    op: ApplyOp
    ins: list[_V]
    #: each input's mask (an explicit ``mask=`` replaces them)
    masks: list[str | None]
    #: the static side of the first input's mask: post, pre or any (None: no mask)
    side: str | None
    init: list[str] | None


@dataclass
class _Exporter:
    model: CheckedModel
    weights: Mapping[str, np.ndarray]
    g: _Graph
    values: dict[str, _V] = field(default_factory=dict)

    def weight(self, layer: str, name: str) -> np.ndarray:
        key = f"{layer}/{name}"
        if key not in self.weights:
            raise KeyError(f"missing weight {key!r}")
        return np.asarray(self.weights[key], dtype=np.float32)

    def run(self) -> None:
        infos = {info.op_index: info for info in self.model.layers}
        for index, op in enumerate(self.model.model.ops):
            if isinstance(op, DropMaskOp):
                v = self.values[op.input.name]
                outs = [_V(v.t, None, v.kind)]
            elif isinstance(op, MergeOp):
                outs = _merge(self, infos[index], op)
            else:
                outs = self.apply(infos[index], op)
            assert len(outs) == len(op.results), (op.results, len(outs))
            for name, v in zip(op.results, outs, strict=True):
                self.values[name] = v

    def side_of(self, name: str) -> str | None:
        t = self.model.types.get(name)
        if isinstance(t, MaskType):
            return t.kind.side
        if isinstance(t, TensorType) and t.mask is not None:
            return t.mask.side
        return None

    def apply(self, info: LayerInfo, op: ApplyOp) -> list[_V]:
        if info.kind in self.model.externs:
            raise Unsupported(info.name, f"extern layer {info.kind} has no ONNX implementation")
        fn = LAYERS.get(info.kind)
        if fn is None:
            raise Unsupported(info.name, f"{info.kind} has no ONNX export")
        ins = [self.values[u.name] for u in op.inputs]
        masks = [v.mask for v in ins]
        side = self.side_of(op.inputs[0].name) if ins[0].mask is not None else None
        if op.mask is not None:
            m = self.values[op.mask.name].t
            masks = [m] * len(ins)
            side = self.side_of(op.mask.name)
        init = [self.values[s.name].t for s in op.initial_state] if op.initial_state else None
        cfg = Cfg(info.config)
        if op.training is not None and bool(op.training.value):
            if _has_dropout(info):
                raise Unsupported(
                    info.name, "training=true with dropout: an exported graph is inference only"
                )
            if info.kind == "BatchNormalization":
                raise Unsupported(info.name, "training=true: an exported graph runs inference only")
        return fn(self, _Call(info, cfg, op, ins, masks, side, init))


def _has_dropout(info: LayerInfo) -> bool:
    cfg: Mapping[str, object] = info.config
    inner = cfg.get("layer")
    if isinstance(inner, BoundLayer):
        cfg = inner.config
    cell = cfg.get("cell")
    if isinstance(cell, BoundLayer):
        cfg = cell.config
    for key in ("rate", "dropout", "recurrent_dropout"):
        v = cfg.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return True
    return False


# --------------------------------------------------------------------------
# per-step layers


def _activation_of(ex: _Exporter, layer: str, name: str, x: str) -> str:
    try:
        return _act_fn(name)(ex.g, x)
    except KeyError:
        raise Unsupported(layer, f"activation {name!r} has no ONNX form here") from None


def _dense_fn(ex: _Exporter, cfg: Cfg, name: str, x: str) -> str:
    g = ex.g
    y = g.op1("MatMul", [x, g.const(ex.weight(name, "kernel"), hint=f"{name}/kernel")])
    if cfg.flag("use_bias"):
        y = g.op1("Add", [y, g.const(ex.weight(name, "bias"), hint=f"{name}/bias")])
    return _activation_of(ex, name, cfg.text("activation"), y)


def _layer_norm_fn(ex: _Exporter, cfg: Cfg, name: str, x: str) -> str:
    g = ex.g
    mean = g.reduce("ReduceMean", x, [-1])
    d = g.op1("Sub", [x, mean])
    var = g.reduce("ReduceMean", g.op1("Mul", [d, d]), [-1])
    den = g.op1("Sqrt", [g.op1("Add", [var, g.scalar(cfg.number("epsilon"))])])
    y = g.op1("Div", [d, den])
    if cfg.flag("scale"):
        y = g.op1("Mul", [y, g.const(ex.weight(name, "gamma"))])
    if cfg.flag("center"):
        y = g.op1("Add", [y, g.const(ex.weight(name, "beta"))])
    return y


_PER_STEP: dict[str, Callable[[_Exporter, Cfg, str, str], str]] = {
    "Dense": _dense_fn,
    "Activation": lambda ex, cfg, name, x: _activation_of(ex, name, cfg.text("activation"), x),
    "Dropout": lambda ex, cfg, name, x: x,
    "LayerNormalization": _layer_norm_fn,
}


def _per_step(ex: _Exporter, c: _Call) -> list[_V]:
    y = _PER_STEP[c.info.kind](ex, c.cfg, c.info.name, c.ins[0].t)
    return [_V(y, c.masks[0])]


def _time_distributed(ex: _Exporter, c: _Call) -> list[_V]:
    inner = c.cfg.layer("layer")
    fn = _PER_STEP.get(inner.kind)
    if fn is None:
        raise Unsupported(c.info.name, f"TimeDistributed({inner.kind}) has no ONNX export")
    return [_V(fn(ex, Cfg(inner.config), c.info.name, c.ins[0].t), c.masks[0])]


def _identity(ex: _Exporter, c: _Call) -> list[_V]:
    return [_V(c.ins[0].t, c.masks[0], c.ins[0].kind)]


def _batch_norm(ex: _Exporter, c: _Call) -> list[_V]:
    name = c.info.name
    w = {s.name: np.asarray(ex.weights[f"{name}/{s.name}"], np.float64) for s in c.info.weights}
    scale = 1.0 / np.sqrt(w["moving_variance"] + c.cfg.number("epsilon"))
    if "gamma" in w:
        scale = scale * w["gamma"]
    shift = -w["moving_mean"] * scale
    if "beta" in w:
        shift = shift + w["beta"]
    g = ex.g
    y = g.op1("Add", [g.op1("Mul", [c.ins[0].t, g.const(scale)]), g.const(shift)])
    return [_V(y, c.masks[0])]


# --------------------------------------------------------------------------
# embedding, masking


def _embedding(ex: _Exporter, c: _Call) -> list[_V]:
    g = ex.g
    ids = c.ins[0].t
    emb = g.const(ex.weight(c.info.name, "embeddings"), hint=f"{c.info.name}/embeddings")
    ids64 = g.to_int64(ids)
    out = g.op1("Gather", [emb, ids64], axis=0)
    mask = c.masks[0]
    if c.cfg.flag("mask_zero"):
        mask = g.op1("Not", [g.op1("Equal", [ids64, g.ints(0)])])
    return [_V(out, mask)]


def _masking(ex: _Exporter, c: _Call) -> list[_V]:
    g = ex.g
    x = c.ins[0].t
    differs = g.op1("Not", [g.op1("Equal", [x, g.scalar(c.cfg.number("mask_value"))])])
    m = g.op1(
        "Greater", [g.reduce("ReduceMax", g.to_float(differs), [-1], keepdims=0), g.scalar(0.0)]
    )
    return [_V(g.apply_mask_steps(x, m), m)]


# --------------------------------------------------------------------------
# pooling, reshaping, time


def _global_pool(ex: _Exporter, c: _Call) -> list[_V]:
    g = ex.g
    x, mask = c.ins[0].t, c.masks[0]
    keep = c.cfg.flag("keepdims")
    if mask is None:
        op_type = "ReduceMax" if c.info.kind == "GlobalMaxPooling1D" else "ReduceMean"
        return [_V(g.reduce(op_type, x, [1], keepdims=int(keep)))]
    ok = g.unsqueeze(mask, 2)  # [B, T, 1]
    count = g.reduce("ReduceSum", g.to_float(ok), [1], keepdims=1)  # [B, 1, 1]
    nonempty = g.op1("Greater", [count, g.scalar(0.0)])
    if c.info.kind == "GlobalMaxPooling1D":
        filled = g.op1("Where", [ok, x, g.scalar(-np.inf)])
        y = g.reduce("ReduceMax", filled, [1], keepdims=1)
        y = g.op1("Where", [nonempty, y, g.scalar(0.0)])
    else:
        s = g.reduce("ReduceSum", g.op1("Where", [ok, x, g.scalar(0.0)]), [1], keepdims=1)
        y = g.op1("Div", [s, g.op1("Max", [count, g.scalar(1.0)])])
    if not keep:
        y = g.squeeze(y, 1)
    return [_V(y)]


def _flatten(ex: _Exporter, c: _Call) -> list[_V]:
    return [_V(ex.g.op1("Flatten", [c.ins[0].t], axis=1))]


def _reshape(ex: _Exporter, c: _Call) -> list[_V]:
    shape = ex.g.ints(0, *c.cfg.integers("target_shape"))
    return [_V(ex.g.op1("Reshape", [c.ins[0].t, shape]))]


def _temporal_softmax(ex: _Exporter, c: _Call) -> list[_V]:
    g = ex.g
    x, mask = c.ins[0].t, c.masks[0]
    assert mask is not None
    ok = g.unsqueeze(mask, 2)
    mx = g.reduce("ReduceMax", g.op1("Where", [ok, x, g.scalar(-np.inf)]), [1])
    mx = g.op1("Where", [g.op1("IsInf", [mx]), g.scalar(0.0), mx])
    e = g.op1("Where", [ok, g.op1("Exp", [g.op1("Sub", [x, mx])]), g.scalar(0.0)])
    total = g.reduce("ReduceSum", e, [1])
    pos = g.op1("Greater", [total, g.scalar(0.0)])
    y = g.op1("Div", [e, g.op1("Where", [pos, total, g.scalar(1.0)])])
    return [_V(g.op1("Where", [pos, y, g.scalar(0.0)]))]


def _temporal_split(ex: _Exporter, c: _Call) -> list[_V]:
    g = ex.g
    x, mask = c.ins[0].t, c.masks[0]
    n = c.cfg.integer("parts")
    k = g.op1("Div", [g.dim(x, 1), g.ints(n)])
    outs = []
    for i in range(n):
        start = g.op1("Mul", [k, g.ints(i)])
        end = g.op1("Mul", [k, g.ints(i + 1)])
        y = g.time_slice(x, start, end)
        m = None if mask is None else g.time_slice(mask, start, end)
        outs.append(_V(y, m))
    return outs


# --------------------------------------------------------------------------
# convolution, pooling (TensorFlow's padding; masks by the window rule)


def _window_attrs(k: int, s: int, d: int, padding: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {"kernel_shape": [k], "strides": [s]}
    if d != 1:
        attrs["dilations"] = [d]
    if padding == "same":
        attrs["auto_pad"] = "SAME_UPPER"  # TensorFlow's: the odd zero after
    elif padding == "causal":
        attrs["pads"] = [d * (k - 1), 0]
    else:
        attrs["pads"] = [0, 0]
    return attrs


def _window_mask(g: _Graph, mask: str | None, k: int, s: int, d: int, padding: str) -> str | None:
    """The output mask of a window layer: every step of a ``valid`` window valid;
    for ``same`` and ``causal`` the anchor step ``j * s``."""
    if mask is None:
        return None
    if padding != "valid":
        return g.op1("Slice", [mask, g.ints(0), g.ints(_INT64_MAX), g.ints(1), g.ints(s)])
    invalid = g.unsqueeze(g.to_float(g.op1("Not", [mask])), 1)  # [B, 1, T]
    ones = g.const(np.ones((1, 1, k), np.float32))
    bad = g.op1("Conv", [invalid, ones], **_window_attrs(k, s, d, "valid"))
    return g.squeeze(g.op1("Less", [bad, g.scalar(0.5)]), 1)


def _conv1d(ex: _Exporter, c: _Call) -> list[_V]:
    g, cfg, name = ex.g, c.cfg, c.info.name
    k, s, d = (cfg.integer(n) for n in ("kernel_size", "strides", "dilation_rate"))
    padding = cfg.text("padding")
    x, mask = c.ins[0].t, c.masks[0]
    if mask is not None:
        x = g.apply_mask_steps(x, mask)
    kernel = ex.weight(name, "kernel")  # [k, F, filters] -> [filters, F, k]
    inputs = [g.op1("Transpose", [x], perm=[0, 2, 1]), g.const(kernel.transpose(2, 1, 0))]
    if cfg.flag("use_bias"):
        inputs.append(g.const(ex.weight(name, "bias")))
    y = g.op1(
        "Transpose", [g.op1("Conv", inputs, **_window_attrs(k, s, d, padding))], perm=[0, 2, 1]
    )
    y = _activation_of(ex, name, cfg.text("activation"), y)
    return [_V(y, _window_mask(g, mask, k, s, d, padding))]


def _pool1d(ex: _Exporter, c: _Call) -> list[_V]:
    g, cfg = ex.g, c.cfg
    p = cfg.integer("pool_size")
    strides = cfg.opt_integer("strides")
    s = p if strides is None else strides
    padding = cfg.text("padding")
    x, mask = c.ins[0].t, c.masks[0]
    attrs = _window_attrs(p, s, 1, padding)
    xt = g.op1("Transpose", [x], perm=[0, 2, 1])  # [B, F, T]
    if mask is None:
        if c.info.kind == "MaxPooling1D":
            y = g.op1("MaxPool", [xt], **attrs)
        else:  # padding excluded from the mean
            y = g.op1("AveragePool", [xt], count_include_pad=0, **attrs)
        return [_V(g.op1("Transpose", [y], perm=[0, 2, 1]))]
    ok = g.unsqueeze(mask, 1)  # [B, 1, T]
    okf = g.to_float(ok)
    ones = g.const(np.ones((1, 1, p), np.float32))
    count = g.op1("Conv", [okf, ones], **attrs)  # valid steps per window [B, 1, T_out]
    some = g.op1("Greater", [count, g.scalar(0.5)])
    if c.info.kind == "MaxPooling1D":
        filled = g.op1("Where", [ok, xt, g.scalar(-np.inf)])
        y = g.op1("MaxPool", [filled], **attrs)
        y = g.op1("Where", [some, y, g.scalar(0.0)])
    else:
        total = g.op1(
            "Mul",
            [
                g.op1("AveragePool", [g.op1("Mul", [xt, okf])], count_include_pad=1, **attrs),
                g.scalar(float(p)),
            ],
        )
        y = g.op1("Div", [total, g.op1("Max", [count, g.scalar(1.0)])])
    y = g.op1("Transpose", [y], perm=[0, 2, 1])
    return [_V(y, _window_mask(g, mask, p, s, 1, padding))]


# --------------------------------------------------------------------------
# attention


def _allowed(
    g: _Graph, q: str, k: str, key_valid: str | None, query_valid: str | None, causal: bool
) -> str | None:
    """bool [B, Tq, Tk] (broadcastable): query step i may attend to key step j."""
    allowed = None
    if key_valid is not None:
        allowed = g.unsqueeze(key_valid, 1)  # [B, 1, Tk]
    if query_valid is not None:
        qv = g.unsqueeze(query_valid, 2)
        allowed = qv if allowed is None else g.op1("And", [allowed, qv])
    if causal:
        zero, one = g.const(0, np.int64), g.const(1, np.int64)
        i = g.op1("Range", [zero, g.squeeze(g.dim(q, 1), 0), one])
        j = g.op1("Range", [zero, g.squeeze(g.dim(k, 1), 0), one])
        tri = g.op1("LessOrEqual", [g.unsqueeze(j, 0), g.unsqueeze(i, 1)])  # [Tq, Tk]
        tri = g.unsqueeze(tri, 0)
        allowed = tri if allowed is None else g.op1("And", [allowed, tri])
    return allowed


def _masked_softmax(g: _Graph, scores: str, allowed: str | None) -> str:
    """Softmax over the last axis among the allowed entries; 0 elsewhere and for
    a row with none."""
    if allowed is None:
        return g.op1("Softmax", [scores], axis=-1)
    s = g.op1("Where", [allowed, scores, g.scalar(-1e30)])
    return g.op1("Mul", [g.op1("Softmax", [s], axis=-1), g.to_float(allowed)])


def _attention(ex: _Exporter, c: _Call) -> list[_V]:
    g, cfg, name = ex.g, c.cfg, c.info.name
    q, v = c.ins[0].t, c.ins[1].t
    k = c.ins[2].t if len(c.ins) > 2 else v
    q_mask, v_mask = c.masks[0], c.masks[1]
    k_mask = c.masks[2] if len(c.ins) > 2 else v_mask
    key_valid = _and_masks(g, [v_mask, k_mask] if len(c.ins) > 2 else [v_mask])
    causal = cfg.flag("use_causal_mask")
    w = {s.name: ex.weight(name, s.name) for s in c.info.weights}
    if c.info.kind == "Attention":
        scale = float(w["scale"]) if "scale" in w else 1.0
        if cfg.text("score_mode") == "dot":
            scores = g.op1("MatMul", [q, g.op1("Transpose", [k], perm=[0, 2, 1])])
            if scale != 1.0:
                scores = g.op1("Mul", [scores, g.scalar(scale)])
        else:  # concat: sum over features of tanh(scale * (q_i + k_j))
            pair = g.op1("Add", [g.unsqueeze(q, 2), g.unsqueeze(k, 1)])
            if scale != 1.0:
                pair = g.op1("Mul", [pair, g.scalar(scale)])
            t = g.reduce("ReduceSum", g.op1("Tanh", [pair]), [-1], keepdims=0)
            scores = g.op1("Mul", [t, g.scalar(float(w["concat_score_weight"]))])
        weights = _masked_softmax(g, scores, _allowed(g, q, k, key_valid, None, causal))
        out = g.op1("MatMul", [weights, v])
        if q_mask is not None:
            out = g.apply_mask_steps(out, q_mask)
    else:
        key_dim = cfg.integer("key_dim")

        def project(x: str, part: str) -> str:  # [B, T, F] -> [B, n, T, h]
            kern = w[f"{part}/kernel"]
            f, n, h = kern.shape
            y = g.op1("MatMul", [x, g.const(kern.reshape(f, n * h))])
            if f"{part}/bias" in w:
                y = g.op1("Add", [y, g.const(w[f"{part}/bias"].reshape(n * h))])
            y = g.op1("Reshape", [y, g.ints(0, 0, n, h)])
            return g.op1("Transpose", [y], perm=[0, 2, 1, 3])

        qp, kp, vp = project(q, "query"), project(k, "key"), project(v, "value")
        scores = g.op1("MatMul", [qp, g.op1("Transpose", [kp], perm=[0, 1, 3, 2])])
        scores = g.op1("Mul", [scores, g.scalar(1.0 / float(np.sqrt(key_dim)))])
        allowed = _allowed(g, q, k, key_valid, q_mask, causal)
        if allowed is not None:
            allowed = g.unsqueeze(allowed, 1)  # over the heads
        weights = _masked_softmax(g, scores, allowed)  # [B, n, Tq, Tk]
        context = g.op1("MatMul", [weights, vp])  # [B, n, Tq, hv]
        context = g.op1("Transpose", [context], perm=[0, 2, 1, 3])  # [B, Tq, n, hv]
        kern = w["attention_output/kernel"]  # [n, hv, Fout]
        n, hv, fo = kern.shape
        flat = g.op1("Reshape", [context, g.ints(0, 0, n * hv)])
        out = g.op1("MatMul", [flat, g.const(kern.reshape(n * hv, fo))])
        if "attention_output/bias" in w:
            out = g.op1("Add", [out, g.const(w["attention_output/bias"])])
    outs = [_V(out, q_mask)]
    if cfg.flag("return_attention_scores"):
        outs.append(_V(weights))
    return outs


# --------------------------------------------------------------------------
# recurrent layers


_GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}
_ONNX_OP = {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "RNN"}


def _onnx_rnn_weights(
    cell: str, cfg: Cfg, kernel: np.ndarray, rec: np.ndarray, bias: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One direction's ONNX ``W [G*U, F]``, ``R [G*U, U]``, ``B [2*G*U]`` from Keras'."""
    u = cfg.integer("units")
    g = _GATES[cell]
    zeros = np.zeros(g * u, np.float32)
    if cell == "lstm":  # keras i, f, c, o -> onnx i, o, f, c
        order = [0, 3, 1, 2]

        def reorder(a: np.ndarray) -> np.ndarray:
            return np.concatenate([a[..., k * u : (k + 1) * u] for k in order], axis=-1)

        w, r = reorder(kernel).T, reorder(rec).T
        b = np.concatenate([reorder(bias) if bias is not None else zeros, zeros])
    elif cell == "gru":  # z, r, h in both
        w, r = kernel.T, rec.T
        if bias is None:
            b = np.concatenate([zeros, zeros])
        elif cfg.flag("reset_after"):
            b = np.concatenate([bias[0], bias[1]])
        else:
            b = np.concatenate([bias, zeros])
    else:
        w, r = kernel.T, rec.T
        b = np.concatenate([bias if bias is not None else zeros, zeros])
    return (
        np.ascontiguousarray(w, np.float32),
        np.ascontiguousarray(r, np.float32),
        b.astype(np.float32),
    )


def _rnn_activations(
    layer: str, cell: str, cfg: Cfg
) -> list[tuple[str, float | None, float | None]]:
    names = [cfg.text("activation")]
    if cell == "lstm":
        names = [cfg.text("recurrent_activation"), names[0], names[0]]
    elif cell == "gru":
        names = [cfg.text("recurrent_activation"), names[0]]
    out = []
    for n in names:
        if n not in RNN_ACTIVATIONS:
            raise Unsupported(
                layer,
                f"activation {n!r} inside a recurrent layer: ONNX's {_ONNX_OP[cell]} takes "
                f"only {', '.join(RNN_ACTIVATIONS)}",
            )
        out.append(RNN_ACTIVATIONS[n])
    return out


@dataclass
class _RnnResult:
    #: [B, T, D, U] in input time order of the (possibly reversed) input
    seq: str
    #: per direction: the output at the last valid step [B, U] (0 for an empty row)
    lasts: list[str]
    #: per direction: the final states ([h, c] for LSTM, [h] otherwise) [B, U]
    states: list[list[str]]


def _run_onnx_rnn(
    ex: _Exporter,
    layer: str,
    cell: str,
    cfg: Cfg,
    directions: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    x: str,
    mask: str | None,
    side: str | None,
    init: list[str] | None,
    masked_output: str,
    reverse: bool = False,
) -> _RnnResult:
    """Run ONNX's recurrent op on ``x`` [B, T, F] under ``mask`` (any kind).

    ``reverse``: one direction, ONNX's ``direction="reverse"`` (the valid steps
    last to first, outputs at their own steps)."""
    g = ex.g
    nd = len(directions)
    n_states = 2 if cell == "lstm" else 1
    w = g.const(np.stack([d[0] for d in directions]), hint=f"{layer}/W")
    r = g.const(np.stack([d[1] for d in directions]), hint=f"{layer}/R")
    b = g.const(np.stack([d[2] for d in directions]), hint=f"{layer}/B")
    init_t: list[str] = []
    if init is not None:
        for k in range(n_states):  # [h_fw, c_fw, h_bw, c_bw] -> [D, B, U] per state kind
            parts = [g.unsqueeze(init[d * n_states + k], 0) for d in range(nd)]
            init_t.append(parts[0] if nd == 1 else g.op1("Concat", parts, axis=0))
    lens = nonempty = k_cum = None
    xc = x
    seq_lens = ""
    if mask is not None:
        mi = g.to_int64(mask)
        k_cum = g.op1("CumSum", [mi, g.const(1, np.int64)])  # [B, T]
        lens = g.reduce("ReduceSum", mi, [1], keepdims=0)  # [B]
        if side != "post":  # compact the valid steps of each row to the front, in order
            inv = g.op1("Sub", [g.ints(1), mi])
            k_inv = g.op1("CumSum", [inv, g.const(1, np.int64)])
            pos_valid = g.op1("Sub", [k_cum, g.ints(1)])
            pos_masked = g.op1("Sub", [g.op1("Add", [g.unsqueeze(lens, 1), k_inv]), g.ints(1)])
            pos = g.op1("Where", [mask, pos_valid, pos_masked])
            idx = g.op1("Expand", [g.unsqueeze(pos, 2), g.op1("Shape", [x])])
            xc = g.op1("ScatterElements", [x, idx, x], axis=1)
        seq_lens = g.op1("Cast", [g.op1("Max", [lens, g.ints(1)])], to=ex.g.onnx.TensorProto.INT32)
        nonempty = g.op1("Greater", [lens, g.ints(0)])
    acts = _rnn_activations(layer, cell, cfg) * nd
    attrs: dict[str, Any] = {
        "hidden_size": cfg.integer("units"),
        "direction": "bidirectional" if nd == 2 else "reverse" if reverse else "forward",
        "activations": [a[0] for a in acts],
    }
    # the parameters of the functions that take them, in the order of the functions
    alphas = [a[1] for a in acts if a[1] is not None]
    betas = [a[2] for a in acts if a[2] is not None]
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    if cell == "gru":
        attrs["linear_before_reset"] = 1 if cfg.flag("reset_after") else 0
    inputs = [g.op1("Transpose", [xc], perm=[1, 0, 2]), w, r, b, seq_lens]
    inputs += init_t if init_t else [""] * n_states
    outs = g.op(_ONNX_OP[cell], inputs, 1 + n_states, **attrs)
    y = g.op1("Transpose", [outs[0]], perm=[2, 0, 1, 3])  # [B, T, D, U]
    finals = outs[1:]  # each [D, B, U]
    if mask is not None:
        assert k_cum is not None and nonempty is not None
        back = g.op1("Max", [g.op1("Sub", [k_cum, g.ints(1)]), g.ints(0)])
        if side != "post" or masked_output == "carry":
            idx = g.op1("Expand", [g.unsqueeze(back, 2, 3), g.op1("Shape", [y])])
            y = g.op1("GatherElements", [y, idx], axis=1)
        keep = mask if masked_output == "zero" else g.op1("Greater", [k_cum, g.ints(0)])
        y = g.op1("Mul", [y, g.unsqueeze(g.to_float(keep), 2, 3)])
        ne = g.unsqueeze(nonempty, 0, 2)  # [1, B, 1]
        lasts_all = g.op1("Where", [ne, finals[0], g.scalar(0.0)])
        restored = []
        for k, f in enumerate(finals):
            restored.append(g.op1("Where", [ne, f, init_t[k] if init_t else g.scalar(0.0)]))
        finals = restored
    else:
        lasts_all = finals[0]
    lasts = [g.squeeze(g.op1("Gather", [lasts_all, g.ints(d)], axis=0), 0) for d in range(nd)]
    states = [
        [g.squeeze(g.op1("Gather", [f, g.ints(d)], axis=0), 0) for f in finals] for d in range(nd)
    ]
    return _RnnResult(y, lasts, states)


def _cell_config(c: _Call, kind: str, cfg: Mapping[str, object]) -> tuple[str, Cfg]:
    if is_cell_layer(cfg):
        raise Unsupported(c.info.name, "a cell block has no ONNX recurrent op")
    cell, raw = _cell_of(cfg, kind)
    return cell, Cfg(raw)


def _direction_weights(
    ex: _Exporter, layer: str, prefix: str, cell: str, ccfg: Cfg
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    bias = ex.weight(layer, prefix + "bias") if ccfg.flag("use_bias") else None
    return _onnx_rnn_weights(
        cell,
        ccfg,
        ex.weight(layer, prefix + "kernel"),
        ex.weight(layer, prefix + "recurrent_kernel"),
        bias,
    )


def _recurrent(ex: _Exporter, c: _Call) -> list[_V]:
    cell, ccfg = _cell_config(c, c.info.kind, c.info.config)
    cfg = c.cfg
    if cfg.flag("stateful"):
        raise Unsupported(
            c.info.name,
            "stateful=true keeps states between calls; an ONNX graph is stateless "
            "(export a model that takes initial_state instead)",
        )
    g = ex.g
    x, mask, side = c.ins[0].t, c.masks[0], c.side
    masked_output = cfg.text("masked_output") if "masked_output" in cfg else "zero"
    seqs = cfg.flag("return_sequences")
    go_back = cfg.flag("go_backwards")
    # go_backwards: ONNX's reverse direction on the steps as they are, the output
    # sequence then put in reversed time order (as Keras); a carried output
    # follows the processing order, so that case reverses the input instead
    # (unless the mask is post: reversed, every masked step comes before the
    # first valid one, where carry gives 0 as zero does)
    native_reverse = go_back and (
        mask is None or masked_output == "zero" or not seqs or side == "post"
    )
    if native_reverse:
        masked_output = "zero"
    if go_back and not native_reverse:
        x = g.reverse_time(x)
        if mask is not None:
            mask = g.reverse_time(mask)
            side = {"post": "pre", "pre": "post"}.get(side or "any", "any")
    weights = [_direction_weights(ex, c.info.name, "", cell, ccfg)]
    res = _run_onnx_rnn(
        ex, c.info.name, cell, ccfg, weights, x, mask, side, c.init, masked_output, native_reverse
    )
    outs: list[_V] = []
    if seqs:
        y = g.squeeze(res.seq, 2)
        if native_reverse:
            y = g.reverse_time(y)
            mask = None if mask is None else g.reverse_time(mask)
        outs.append(_V(y, mask))
    else:
        outs.append(_V(res.lasts[0]))
    if cfg.flag("return_state"):
        outs += [_V(s) for s in res.states[0]]
    return outs


def _bidirectional(ex: _Exporter, c: _Call) -> list[_V]:
    inner = c.cfg.layer("layer")
    cell, ccfg = _cell_config(c, inner.kind, inner.config)
    flags = Cfg(inner.config)
    if flags.flag("stateful"):
        raise Unsupported(c.info.name, "stateful=true: an ONNX graph is stateless")
    g = ex.g
    back = backward_of(c.info.config)  # backward_layer: its own configuration
    _, bcfg = _cell_config(c, back.kind, back.config)
    for key in ("activation", "recurrent_activation", "reset_after"):
        if key in ccfg and ccfg.raw(key) != bcfg.raw(key):
            raise Unsupported(
                c.info.name,
                f"backward_layer with another {key}: ONNX's bidirectional op computes "
                "one cell for both directions",
            )
    weights = [
        _direction_weights(ex, c.info.name, "forward/", cell, ccfg),
        _direction_weights(ex, c.info.name, "backward/", cell, bcfg),
    ]
    x, mask = c.ins[0].t, c.masks[0]
    res = _run_onnx_rnn(ex, c.info.name, cell, ccfg, weights, x, mask, c.side, c.init, "zero")
    mode = c.cfg.text("merge_mode")
    if flags.flag("return_sequences"):
        y_fw = g.squeeze(g.op1("Gather", [res.seq, g.ints(0)], axis=2), 2)
        y_bw = g.squeeze(g.op1("Gather", [res.seq, g.ints(1)], axis=2), 2)
        out_mask = mask
    else:
        y_fw, y_bw = res.lasts
        out_mask = None
    outs: list[_V]
    if mode == "none":
        outs = [_V(y_fw, out_mask), _V(y_bw, out_mask)]
    elif mode == "concat":
        outs = [_V(g.op1("Concat", [y_fw, y_bw], axis=-1), out_mask)]
    elif mode == "sum":
        outs = [_V(g.op1("Add", [y_fw, y_bw]), out_mask)]
    elif mode == "mul":
        outs = [_V(g.op1("Mul", [y_fw, y_bw]), out_mask)]
    elif mode == "ave":
        outs = [_V(g.op1("Mul", [g.op1("Add", [y_fw, y_bw]), g.scalar(0.5)]), out_mask)]
    else:
        raise Unsupported(c.info.name, f"merge_mode={mode}")
    if flags.flag("return_state"):
        outs += [_V(s) for s in res.states[0] + res.states[1]]
    return outs


# --------------------------------------------------------------------------
# merges


def _and_masks(g: _Graph, masks: Sequence[str | None]) -> str | None:
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = g.op1("And", [out, m])
    return out


def _merge(ex: _Exporter, info: LayerInfo, op: MergeOp) -> list[_V]:
    g = ex.g
    ins = [ex.values[u.name] for u in op.inputs]
    xs = [v.t for v in ins]
    ms = [v.mask for v in ins]
    cfg = Cfg(info.config)
    fn = op.fn
    if fn == "concat":
        t = ex.model.types[op.inputs[0].name]
        rank = t.rank if isinstance(t, TensorType) else 2
        axis_cfg = cfg.raw("axis") if "axis" in cfg else "features"
        if axis_cfg == "features":
            axis = rank - 1
        elif axis_cfg == "time":
            axis = 1
        else:
            axis = cfg.integer("axis") % rank
        out = g.op1("Concat", xs, axis=axis)
        if axis == 1:  # in time, also for rank 2
            if all(m is None for m in ms):
                return [_V(out)]
            parts = []
            for x, m in zip(xs, ms, strict=True):
                if m is None:
                    bt = g.op1("Shape", [x], start=0, end=2)
                    m = g.op1(
                        "ConstantOfShape",
                        [bt],
                        value=g.onnx.helper.make_tensor("one", g.onnx.TensorProto.BOOL, [1], [1]),
                    )
                parts.append(m)
            return [_V(out, g.op1("Concat", parts, axis=1))]
        return [_V(out, _and_masks(g, ms))]
    if fn in ("add", "average"):
        out = xs[0]
        for x in xs[1:]:
            out = g.op1("Add", [out, x])
        if fn == "average":
            out = g.op1("Div", [out, g.scalar(float(len(xs)))])
    elif fn == "subtract":
        out = g.op1("Sub", xs[:2])
    elif fn == "multiply":
        out = xs[0]
        for x in xs[1:]:
            out = g.op1("Mul", [out, x])
    elif fn in ("maximum", "minimum"):
        out = g.op1("Max" if fn == "maximum" else "Min", xs)
    else:
        raise Unsupported(info.name, f"merge {fn} has no ONNX export")
    return [_V(out, _and_masks(g, ms))]


#: layer kind -> its ONNX builder; anything else raises Unsupported naming the layer
LAYERS: dict[str, Callable[[_Exporter, _Call], list[_V]]] = {
    "LSTM": _recurrent,
    "GRU": _recurrent,
    "SimpleRNN": _recurrent,
    "RNN": _recurrent,
    "Bidirectional": _bidirectional,
    "Embedding": _embedding,
    "Masking": _masking,
    "Dense": _per_step,
    "Activation": _per_step,
    "Dropout": _per_step,
    "SpatialDropout1D": _identity,
    "LayerNormalization": _per_step,
    "TimeDistributed": _time_distributed,
    "BatchNormalization": _batch_norm,
    "Conv1D": _conv1d,
    "MaxPooling1D": _pool1d,
    "AveragePooling1D": _pool1d,
    "Attention": _attention,
    "MultiHeadAttention": _attention,
    "GlobalAveragePooling1D": _global_pool,
    "GlobalMaxPooling1D": _global_pool,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "TemporalSoftmax": _temporal_softmax,
    "TemporalSplit": _temporal_split,
}


# --------------------------------------------------------------------------
# inputs, outputs, the model


def _dims(shape: Sequence[object]) -> list[int | str | None]:
    out: list[int | str | None] = []
    for d in shape:
        if d is None:
            out.append(None)
            continue
        v = getattr(d, "value", None)
        out.append(v if isinstance(v, int) else str(d))
    return out


_ELEM = {"f32": "FLOAT", "f64": "DOUBLE", "i32": "INT32", "i64": "INT64", "bool": "BOOL"}


def input_names(model: CheckedModel) -> list[str]:
    """The graph's input names, in order: each ``.seq`` input, and after each
    ``masked`` input its ``{name}_lengths`` (padded inputs) or ``{name}_mask``
    (``masked`` inputs without ``pad(...)``: lengths have no side)."""
    names = []
    for decl in model.model.inputs:
        names.append(decl.name)
        if decl.masked:
            names.append(f"{decl.name}_lengths" if decl.name in model.pads else f"{decl.name}_mask")
    return names


def weight_problems(model: CheckedModel, weights: Mapping[str, np.ndarray]) -> list[str]:
    """What is wrong with ``weights`` for ``model``: missing keys and wrong shapes."""
    out = []
    for layer in model.layers:
        for spec in layer.weights:
            key = f"{layer.name}/{spec.name}"
            if key not in weights:
                out.append(f"missing weight {key!r} {spec.shape}")
            elif tuple(np.shape(weights[key])) != tuple(spec.shape):
                out.append(
                    f"weight {key!r} has shape {tuple(np.shape(weights[key]))}, "
                    f"expected {tuple(spec.shape)}"
                )
    return out


def export_onnx(
    model: CheckedModel,
    weights: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
    opset: int = 17,
) -> bytes:
    """The serialized ONNX ``ModelProto`` of ``model`` with ``weights`` (canonical
    keys; the initial weights of ``seed`` when None) stored as initializers.

    Raises :class:`seqdsl.emit.Unsupported` naming the first layer that ONNX
    cannot express here."""
    if weights is None:
        weights = initial_weights(((la.name, la.weights) for la in model.layers), seed, "float32")
    problems = weight_problems(model, weights)
    if problems:
        raise ValueError(f"weights do not fit model {model.name}: " + "; ".join(problems))
    import onnx
    from onnx import TensorProto, helper

    g = _Graph(onnx, opset)
    ex = _Exporter(model, weights, g)
    graph_inputs = []
    for decl in model.model.inputs:
        t = model.types[decl.name]
        if isinstance(t, MaskType):
            dims = _dims((t.batch, t.time))
            graph_inputs.append(helper.make_tensor_value_info(decl.name, TensorProto.BOOL, dims))
            ex.values[decl.name] = _V(decl.name, None, "bool")
            continue
        assert isinstance(t, TensorType)
        elem = getattr(TensorProto, _ELEM[t.dtype])
        graph_inputs.append(helper.make_tensor_value_info(decl.name, elem, _dims(t.shape)))
        x = decl.name
        kind = "float" if t.dtype in ("f32", "f64") else "bool" if t.dtype == "bool" else "int"
        if t.dtype == "f64":
            x = g.to_float(x)
        mask = None
        if decl.masked:
            bt = _dims(t.shape[:2])
            pad = model.pads.get(decl.name)
            if pad is None:
                mname = f"{decl.name}_mask"
                graph_inputs.append(helper.make_tensor_value_info(mname, TensorProto.BOOL, bt))
                mask = mname
            else:
                lname = f"{decl.name}_lengths"
                graph_inputs.append(helper.make_tensor_value_info(lname, TensorProto.INT64, bt[:1]))
                tlen = g.squeeze(g.dim(decl.name, 1), 0)
                steps = g.unsqueeze(
                    g.op1("Range", [g.const(0, np.int64), tlen, g.const(1, np.int64)]), 0
                )
                lens = g.unsqueeze(lname, 1)
                if pad.side == "pre":
                    start = g.op1("Sub", [g.unsqueeze(tlen, 0, 1), lens])
                    mask = g.op1("GreaterOrEqual", [steps, start])
                else:
                    mask = g.op1("Less", [steps, lens])
        ex.values[decl.name] = _V(x, mask, kind)
    ex.run()
    graph_outputs = []
    for out in model.model.outputs:
        v = ex.values[out.name]
        t = model.types[out.name]
        shape: list[int | str | None] | None = _dims(t.shape) if isinstance(t, TensorType) else None
        elem = {"float": TensorProto.FLOAT, "bool": TensorProto.BOOL}.get(v.kind)
        if elem is None:
            assert isinstance(t, TensorType)
            elem = getattr(TensorProto, _ELEM[t.dtype])
        g.nodes.append(helper.make_node("Identity", [v.t], [out.name], name=f"out_{out.name}"))
        graph_outputs.append(helper.make_tensor_value_info(out.name, elem, shape))
        if out.with_mask:
            mname = f"{out.name}_mask"
            if v.mask is None:
                raise Unsupported(out.name, "`with mask` on a value without a mask")
            g.nodes.append(helper.make_node("Identity", [v.mask], [mname], name=f"out_{mname}"))
            mdims = shape[:2] if shape is not None else None
            graph_outputs.append(helper.make_tensor_value_info(mname, TensorProto.BOOL, mdims))
    graph = helper.make_graph(g.nodes, model.name, graph_inputs, graph_outputs, g.inits)
    proto = helper.make_model(
        graph,
        producer_name="seqdsl",
        opset_imports=[helper.make_opsetid("", opset)],
    )
    proto.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    return bytes(proto.SerializeToString())
