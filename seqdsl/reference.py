"""The reference interpreter: what a checked model computes, in NumPy float64.

Written from ``docs/semantics.md`` (and the Keras closed forms of
``shared/spec/BACKENDS.md``) as plain loops, for clarity, not speed: recurrent
layers step through time one step at a time. Every numeric test of the project
compares against it, so it shares no code with the emitters (``seqdsl/emit``):
it reads only the IR, the checker's results, the catalogue's configuration and
weight specs, the initializers and the padding helpers.

    >>> import seqdsl, numpy as np
    >>> from seqdsl.reference import reference_weights, run_reference
    >>> m = seqdsl.loads('''
    ... model M {
    ...     input tokens: i32[B, T] pad(post, value=0)
    ...     x = tokens -> Embedding(10, 3, mask_zero=true) -> LSTM(2)
    ...     output x
    ... }''').model()
    >>> r = run_reference(m, reference_weights(m, 0), [np.array([[1, 2, 0], [0, 0, 0]])])
    >>> r.outputs[0].shape, float(np.abs(r.outputs[0][1]).max())
    ((2, 2), 0.0)

Conventions of :func:`run_reference`:

- ``weights``: canonical ``"layer/weight"`` keys, Keras shapes (section 1).
- ``inputs``: one array per ``input`` declaration, in declaration order; mask
  inputs are boolean ``[B, T]``.
- ``lengths`` / ``masks``: the mask of each ``masked`` input, as per-row
  lengths (aligned by the input's ``pad`` side) or an explicit boolean mask.
  Caller-given masks must honour the declared kind (side and ``nonempty``).
- ``training``: the default training flag; a call's own ``training=`` wins.
- ``dropout_masks``: keep-masks (1 = keep), divided by ``1 - rate`` when
  applied. Keys: ``"{layer}"`` for ``Dropout`` and ``TimeDistributed(Dropout)``
  (the shape of the layer's input) and for ``SpatialDropout1D`` (``[B, 1, F]``:
  one mask for every step of a row); ``"{layer}/input"`` ``[B, F]`` and
  ``"{layer}/recurrent"`` ``[B, U]`` for a recurrent layer's ``dropout`` and
  ``recurrent_dropout``; ``"{layer}/forward/input"``, ``"{layer}/backward/recurrent"``
  ... inside ``Bidirectional``; ``"{layer}"`` for the weights of ``Attention``
  ``[B, Tq, Tk]`` and ``MultiHeadAttention`` ``[B, heads, Tq, Tk]``. A mask needed in training and not given is an
  error: the reference never draws random numbers.
- ``states``: the initial states of ``stateful`` layers by layer name (zeros
  when absent); :attr:`ReferenceResult.states` gives their final states, to
  pass to the next call. A ``Bidirectional`` around a stateful layer has the
  forward layer's states, then the backward layer's (each direction carries its
  own: the backward one's are those after it read the batch in reverse).
- ``externs``: extern layer implementations by name (a function or a
  :class:`seqdsl.externs.Impl`), tried before the ``"numpy"`` ones of the
  registry (the program's ``use "python.module"`` modules are imported first).

Layers are found by kind in :data:`LAYERS` (one small function per layer or
family; :data:`PER_STEP` for what ``TimeDistributed`` wraps, :data:`MERGES` for
the merges); configurations are read through :class:`seqdsl.catalogue.Cfg`.
Adding a layer adds one entry there (``docs/architecture.md``).

Cell blocks and extern layers: ``docs/semantics.md`` section 5. An extern
implementation that breaks its declaration (outputs, shapes, a returned mask)
raises :class:`seqdsl.externs.ExternError`, as does a missing one.

Bad arguments raise :class:`ReferenceError`. Every value is checked against
its static type (shape, mask presence): a mismatch is an ``AssertionError``,
a disagreement between the checker and this interpreter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .catalogue import BoundLayer as BoundLayer  # importable from here before; kept
from .catalogue import Cfg, _cell_of, backward_of
from .cells import BoundCell, bound_cell_of, is_cell_layer
from .checker import CheckedModel, LayerInfo
from .dims import Dim
from .externs import ExternError, Impl, check_output_shapes, get_extern, import_modules
from .initializers import initial_weights
from .ir import ApplyOp, CExpr, DropMaskOp, InputDecl, MaskContract, MergeOp
from .padding import lengths_to_mask
from .types import MaskKind, MaskType, TensorType

__all__ = [
    "ACTIVATION_FUNCTIONS",
    "LAYERS",
    "MERGES",
    "PER_STEP",
    "ReferenceError",
    "ReferenceResult",
    "mask_fits_kind",
    "reference_weights",
    "run_reference",
]

Array = np.ndarray
Mask = np.ndarray | None
#: a value: an array and its mask
Value = tuple[Array, Mask]


class ReferenceError(ValueError):
    """Bad arguments to :func:`run_reference` (missing weights, masks, shapes...)."""


@dataclass
class ReferenceResult:
    #: in ``output`` order; an ``output x with mask`` entry is ``(value, mask)``
    outputs: tuple[object, ...]
    #: every SSA value: ``(array, mask or None)`` (a mask input: ``(mask, None)``)
    values: dict[str, tuple[Array, Mask]] = field(default_factory=dict)
    #: final states of every stateful recurrent layer, by layer name
    states: dict[str, list[Array]] = field(default_factory=dict)
    #: BatchNormalization moving statistics updated in training, canonical keys
    updated: dict[str, Array] = field(default_factory=dict)


def reference_weights(model: CheckedModel, seed: int) -> dict[str, Array]:
    """The model's initial weights (``seqdsl.initializers``), in float64."""
    return initial_weights(
        ((layer.name, layer.weights) for layer in model.layers), seed, dtype="float64"
    )


def _cint(cfg: Mapping[str, object], key: str) -> int:
    return Cfg(cfg).integer(key)


def _cfloat(cfg: Mapping[str, object], key: str) -> float:
    return Cfg(cfg).number(key)


def _float(x: object) -> Array:
    return np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------
# activations (Keras 3 definitions)


def _sigmoid(x: Array) -> Array:
    return _float(np.exp(-np.logaddexp(0.0, -x)))


def _softplus(x: Array) -> Array:
    return _float(np.logaddexp(x, 0.0))


def _softmax(x: Array) -> Array:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return _float(e / e.sum(axis=-1, keepdims=True))


def _log_softmax(x: Array) -> Array:
    s = x - x.max(axis=-1, keepdims=True)
    return _float(s - np.log(np.exp(s).sum(axis=-1, keepdims=True)))


def _elu(x: Array, alpha: float = 1.0) -> Array:
    return _float(np.where(x >= 0, x, alpha * np.expm1(np.minimum(x, 0.0))))


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_erf = np.vectorize(math.erf, otypes=[np.float64])


ACTIVATION_FUNCTIONS: dict[str, Callable[[Array], Array]] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "softmax": _softmax,  # over the last axis
    "log_softmax": _log_softmax,
    "softplus": _softplus,
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "elu": _elu,
    "selu": lambda x: _SELU_SCALE * _elu(x, _SELU_ALPHA),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),  # keras: approximate=False
    "silu": lambda x: x * _sigmoid(x),
    "swish": lambda x: x * _sigmoid(x),
    "exponential": np.exp,
    "hard_sigmoid": lambda x: np.clip(x + 3.0, 0.0, 6.0) / 6.0,  # keras 3: relu6(x + 3) / 6
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.2 * x),  # keras: negative_slope=0.2
    "mish": lambda x: x * np.tanh(_softplus(x)),
}


def _act(name: str) -> Callable[[Array], Array]:
    return ACTIVATION_FUNCTIONS[name]


# --------------------------------------------------------------------------
# masks


def mask_fits_kind(mask: Array, kind: MaskKind) -> bool:
    """Whether a boolean ``[B, T]`` mask has the declared side and emptiness."""
    m = np.asarray(mask, dtype=bool)
    lens = m.sum(axis=1)
    t = m.shape[1]
    if kind.nonempty and (lens == 0).any():
        return False
    if kind.side == "post":
        return bool((lengths_to_mask(lens, t, "post") == m).all())
    if kind.side == "pre":
        return bool((lengths_to_mask(lens, t, "pre") == m).all())
    return True


def _and_masks(masks: Sequence[Mask]) -> Mask:
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out: Array = np.asarray(present[0], dtype=bool).copy()
    for m in present[1:]:
        out &= m
    return out


# --------------------------------------------------------------------------
# attention


def _allowed_keys(
    b: int, tq: int, tv: int, key_valid: Mask, query_valid: Mask, causal: bool
) -> Array:
    """[B, Tq, Tv]: whether query step i may attend to key step j."""
    allowed = np.ones((b, tq, tv), bool)
    if key_valid is not None:
        allowed &= key_valid[:, None, :]
    if query_valid is not None:
        allowed &= query_valid[:, :, None]
    if causal:  # j <= i, in padded positions
        for i in range(tq):
            allowed[:, i, i + 1 :] = False
    return allowed


def _masked_softmax(scores: Array, allowed: Array) -> Array:
    """Softmax over the last axis among the allowed entries; 0 elsewhere, and 0 for a
    row with no allowed entry."""
    out = np.zeros(scores.shape)
    for idx in np.ndindex(*scores.shape[:-1]):
        ok = allowed[idx]
        if ok.any():
            s = scores[idx][ok]
            e = np.exp(s - s.max())
            out[idx + (ok,)] = e / e.sum()
    return out


# --------------------------------------------------------------------------
# recurrent cells


@dataclass
class _Cell:
    """One recurrent cell: its type, config and weights (``kernel``...)."""

    cell: str  # lstm | gru | simple_rnn
    cfg: Cfg
    kernel: Array
    recurrent_kernel: Array
    bias: Array | None

    @property
    def units(self) -> int:
        return self.cfg.integer("units")

    @property
    def n_states(self) -> int:
        return 2 if self.cell == "lstm" else 1

    def step(self, x: Array, states: list[Array], h_rec: Array) -> tuple[Array, list[Array]]:
        """One step on every row. ``x`` is the (dropped-out) input, ``h_rec`` the
        (dropped-out) previous ``h`` fed to the recurrent kernel; the state
        update itself uses the undropped ``states`` (as Keras)."""
        act = _act(self.cfg.text("activation"))
        u = self.units
        K, R, b = self.kernel, self.recurrent_kernel, self.bias
        if self.cell == "simple_rnn":
            z = x @ K + h_rec @ R
            if b is not None:
                z = z + b
            h = act(z)
            return h, [h]
        ract = _act(self.cfg.text("recurrent_activation"))
        if self.cell == "lstm":
            z = x @ K + h_rec @ R
            if b is not None:
                z = z + b
            i = ract(z[:, :u])
            f = ract(z[:, u : 2 * u])
            c = f * states[1] + i * act(z[:, 2 * u : 3 * u])
            o = ract(z[:, 3 * u :])
            h = o * act(c)
            return h, [h, c]
        # GRU: gates z, r, h
        h_tm1 = states[0]
        mx = x @ K
        if self.cfg.flag("reset_after"):
            mh = h_rec @ R
            if b is not None:
                mx = mx + b[0]
                mh = mh + b[1]
            zg = ract(mx[:, :u] + mh[:, :u])
            r = ract(mx[:, u : 2 * u] + mh[:, u : 2 * u])
            hh = act(mx[:, 2 * u :] + r * mh[:, 2 * u :])
        else:
            if b is not None:
                mx = mx + b
            mh = h_rec @ R[:, : 2 * u]
            zg = ract(mx[:, :u] + mh[:, :u])
            r = ract(mx[:, u : 2 * u] + mh[:, u : 2 * u])
            hh = act(mx[:, 2 * u :] + (r * h_rec) @ R[:, 2 * u :])
        h = zg * h_tm1 + (1.0 - zg) * hh
        return h, [h]


@dataclass
class _RnnRun:
    #: per cell output: [B, T, *shape], in processing order (reversed for go_backwards)
    sequences: list[Array]
    #: per cell output: the output at the last valid step, 0 for an empty row
    lasts: list[Array]
    states: list[Array]

    @property
    def sequence(self) -> Array:
        return self.sequences[0]

    @property
    def last(self) -> Array:
        return self.lasts[0]


#: one step of a cell: (step index, states) -> (outputs, new states)
_StepFn = Callable[[int, list[Array]], tuple[list[Array], list[Array]]]


def _rows(m: Array, like: Array) -> Array:
    """A per-row flag ``[B]`` shaped to broadcast against ``like`` ``[B, ...]``."""
    return m.reshape(m.shape + (1,) * (like.ndim - 1))


def _scan(
    step_fn: _StepFn,
    t: int,
    mask: Array,
    init: list[Array],
    out_shapes: Sequence[tuple[int, ...]],
    masked_output: str,
) -> _RnnRun:
    """Run a cell over ``t`` steps in order, skipping masked steps: at a masked
    step every state keeps its value and the output is 0 (``zero``) or the
    last valid output (``carry``; 0 before the first)."""
    b = mask.shape[0]
    states = [s.copy() for s in init]
    seqs = [np.zeros((b, t, *shape)) for shape in out_shapes]
    carried = [np.zeros((b, *shape)) for shape in out_shapes]  # the last valid outputs
    for step in range(t):
        outs, new = step_fn(step, states)
        m = mask[:, step]
        states = [np.where(_rows(m, s), n, s) for n, s in zip(new, states, strict=True)]
        carried = [np.where(_rows(m, c), o, c) for o, c in zip(outs, carried, strict=True)]
        for seq, o, c in zip(seqs, outs, carried, strict=True):
            seq[:, step] = np.where(_rows(m, o), o, 0.0 if masked_output == "zero" else c)
    return _RnnRun(seqs, carried, states)


def _run_cell(
    cell: _Cell,
    x: Array,
    mask: Array,
    init: list[Array],
    masked_output: str,
    in_keep: Array | None,
    rec_keep: Array | None,
) -> _RnnRun:
    """Run a built-in ``cell`` over ``x`` [B, T, F] in time order, skipping masked steps."""

    def step_fn(step: int, states: list[Array]) -> tuple[list[Array], list[Array]]:
        xt = x[:, step, :]
        if in_keep is not None:
            xt = xt * in_keep
        h_rec = states[0] if rec_keep is None else states[0] * rec_keep
        out, new = cell.step(xt, states, h_rec)
        return [out], new

    return _scan(step_fn, x.shape[1], mask, init, [(cell.units,)], masked_output)


# --------------------------------------------------------------------------
# cell blocks: the equations of `cell Name(...) { ... }`, evaluated per step

#: a per-step value of a cell block and whether it has the batch axis first
_Val = tuple[Array, bool]

_CELL_UNARY: dict[str, Callable[[Array], Array]] = {
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "relu": lambda x: np.maximum(x, 0.0),
    "exp": np.exp,
    "log": np.log,
    "abs": np.abs,
    "sqrt": np.sqrt,
    "square": np.square,
    "softplus": _softplus,
    "softsign": lambda x: x / (1.0 + np.abs(x)),
}


def _align(a: _Val, b: _Val) -> tuple[Array, Array]:
    """Two operands of an elementwise op or ``@``: per-step shapes broadcast from
    the last axis, so a batched value of lower rank gets its new axes after the
    batch axis (NumPy alone would pair the batch axis with a per-step one)."""
    x, xb = a
    y, yb = b
    if xb and yb and x.ndim != y.ndim:
        if x.ndim < y.ndim:
            x = x.reshape(x.shape[:1] + (1,) * (y.ndim - x.ndim) + x.shape[1:])
        else:
            y = y.reshape(y.shape[:1] + (1,) * (x.ndim - y.ndim) + y.shape[1:])
    return x, y


@dataclass
class _BlockCell:
    """A bound cell block and its weights: one step of its equations on every row."""

    bc: BoundCell
    weights: Mapping[str, Array]

    def axis(self, call: CExpr, v: _Val) -> int:
        """The array axis of a call's ``axis=`` (per-step axes count after the batch)."""
        ax = self.bc.axis(call)
        return ax + 1 if v[1] and ax >= 0 else ax

    def expr(self, e: CExpr, env: Mapping[str, _Val]) -> _Val:
        op = e.op
        if op == "num":
            assert isinstance(e.value, (int, float))
            return np.float64(e.value), False
        if op == "name":
            n = str(e.value)
            if n in env:
                return env[n]
            v = self.bc.params.get(n, self.bc.dims.get(n))
            assert isinstance(v, (int, float)) and not isinstance(v, bool), n
            return np.float64(v), False
        if op == "neg":
            x, xb = self.expr(e.args[0], env)
            return -x, xb
        if op in ("+", "-", "*", "/", "@"):
            a, b = (self.expr(x, env) for x in e.args)
            x, y = _align(a, b)
            fns: dict[str, Callable[[Array, Array], Array]] = {
                "+": np.add,
                "-": np.subtract,
                "*": np.multiply,
                "/": np.divide,
                "@": np.matmul,
            }
            return _float(fns[op](x, y)), a[1] or b[1]
        if op == "index":
            x, xb = self.expr(e.args[0], env)
            index: list[Any] = [slice(None)] if xb else []
            for it in e.args[1:]:
                if it.op == "ellipsis":
                    index.append(Ellipsis)
                elif it.op == "at":
                    index.append(int(self.bc.const(it.args[0])))
                else:
                    lo, hi = (None if b.op == "none" else int(self.bc.const(b)) for b in it.args)
                    index.append(slice(lo, hi))
            return x[tuple(index)], xb
        if op == "call":
            return self.call(e, env)
        raise AssertionError(f"cell expression {op!r}")  # pragma: no cover

    def call(self, e: CExpr, env: Mapping[str, _Val]) -> _Val:
        fn = str(e.value)
        if fn == "einsum":
            eq = str(e.args[0].value).replace(" ", "")
            vals = [self.expr(a, env) for a in e.args[1:]]
            return _float(np.einsum(eq, *(v for v, _ in vals))), any(b for _, b in vals)
        vals = [self.expr(a, env) for a in e.args]
        if fn in _CELL_UNARY:
            ((x, xb),) = vals
            return _float(_CELL_UNARY[fn](x)), xb
        if fn in ("maximum", "minimum"):
            x, y = _align(*vals)
            f = np.maximum if fn == "maximum" else np.minimum
            return _float(f(x, y)), vals[0][1] or vals[1][1]
        if fn == "softmax":
            ((x, xb),) = vals
            ax = self.axis(e, vals[0])
            z = np.exp(x - x.max(axis=ax, keepdims=True))
            return _float(z / z.sum(axis=ax, keepdims=True)), xb
        if fn in ("sum", "mean"):
            ((x, xb),) = vals
            ax = self.axis(e, vals[0])
            return _float(x.sum(axis=ax) if fn == "sum" else x.mean(axis=ax)), xb
        if fn == "concat":
            ax = self.axis(e, vals[0])
            return np.concatenate([v for v, _ in vals], axis=ax), True
        raise AssertionError(f"cell function {fn!r}")  # pragma: no cover

    def step(self, xs: Sequence[Array], states: Sequence[Array]) -> tuple[list[Array], list[Array]]:
        """(outputs, new states) of one step; ``xs`` and ``states`` in declaration order."""
        bc = self.bc
        env: dict[str, _Val] = {}
        for (name, _), x in zip(bc.inputs, xs, strict=True):
            env[name] = (x, True)
        for (name, _), s in zip(bc.states, states, strict=True):
            env[name] = (s, True)
        for w in bc.weights:
            env[w.name] = (self.weights[w.name], False)
        updated: dict[str, Array] = {}
        for st in bc.cdef.body:
            if st.expr.op == "call" and st.expr.value == "split":
                v = self.expr(st.expr.args[0], env)
                n = int(bc.const(st.expr.args[1]))
                parts = np.split(v[0], n, axis=self.axis(st.expr, v))
                vals = [(p, v[1]) for p in parts]
            else:
                vals = [self.expr(st.expr, env)]
            if st.update:  # a state's name keeps reading the old value in this step
                ((new, _),) = vals
                updated[st.targets[0]] = new
            else:
                env.update(zip(st.targets, vals, strict=True))
        b = xs[0].shape[0]
        new_states = []
        for name, shape in bc.states:
            s = updated[name]
            assert s.shape == (b, *shape), (bc.cdef.name, name, s.shape, shape)
            new_states.append(s)
        outs = []
        for name, shape in bc.outputs:
            o = updated[name] if name in updated else env[name][0]
            assert o.shape == (b, *shape), (bc.cdef.name, name, o.shape, shape)
            outs.append(o)
        return outs, new_states


# --------------------------------------------------------------------------
# the interpreter


@dataclass
class _Interp:
    model: CheckedModel
    weights: Mapping[str, Array]
    training: bool
    dropout_masks: Mapping[str, Array]
    init_states: Mapping[str, Sequence[Array]]
    #: the numpy implementation of every extern layer the model uses
    impls: Mapping[str, Impl] = field(default_factory=dict)
    values: dict[str, tuple[Array, Mask]] = field(default_factory=dict)
    final_states: dict[str, list[Array]] = field(default_factory=dict)
    updated: dict[str, Array] = field(default_factory=dict)
    env: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------ helpers
    def weight(self, layer: str, name: str, shape: tuple[int, ...] | None = None) -> Array:
        key = f"{layer}/{name}"
        if key not in self.weights:
            raise ReferenceError(f"missing weight {key!r}")
        w = _float(self.weights[key])
        if shape is not None and w.shape != shape:
            raise ReferenceError(f"weight {key!r} has shape {w.shape}, expected {shape}")
        return w

    def layer_weights(self, info: LayerInfo) -> dict[str, Array]:
        return {w.name: self.weight(info.name, w.name, w.shape) for w in info.weights}

    def keep(self, key: str, shape: tuple[int, ...], rate: float) -> Array:
        if key not in self.dropout_masks:
            raise ReferenceError(
                f"training with dropout: no keep-mask {key!r} of shape {shape} was given "
                "(the reference draws no random numbers; pass dropout_masks={...})"
            )
        k = _float(self.dropout_masks[key])
        if k.shape != shape:
            raise ReferenceError(f"dropout mask {key!r} has shape {k.shape}, expected {shape}")
        return k / (1.0 - rate)

    # ------------------------------------------------------------ inputs
    def bind_inputs(
        self,
        inputs: Sequence[Array],
        lengths: Mapping[str, Array],
        masks: Mapping[str, Array],
    ) -> None:
        decls = self.model.model.inputs
        if len(inputs) != len(decls):
            names = ", ".join(d.name for d in decls)
            raise ReferenceError(
                f"model {self.model.name} takes {len(decls)} input(s) ({names}), got {len(inputs)}"
            )
        for extra in set(lengths) | set(masks):
            if not any(d.name == extra and d.masked for d in decls):
                raise ReferenceError(
                    f"lengths/masks given for {extra!r}, which is not a `masked` input"
                )
        for decl, raw in zip(decls, inputs, strict=True):
            self.bind_input(decl, np.asarray(raw), lengths, masks)

    def bind_dims(self, name: str, shape: tuple[int, ...], dims: Sequence[object]) -> None:
        if len(shape) != len(dims):
            raise ReferenceError(f"input {name!r} has rank {len(shape)}, declared {len(dims)}")
        for n, d in zip(shape, dims, strict=True):
            if d is None:
                continue
            assert isinstance(d, Dim)
            if d.value is not None:
                if n != d.value:
                    raise ReferenceError(
                        f"input {name!r} has shape {shape}, declared {d.value} at one axis"
                    )
                continue
            (sym,) = d.symbols()
            if sym in self.env and self.env[sym] != n:
                raise ReferenceError(
                    f"input {name!r}: `{sym}` is {n} here but {self.env[sym]} elsewhere"
                )
            self.env[sym] = n

    def bind_input(
        self, decl: InputDecl, x: Array, lengths: Mapping[str, Array], masks: Mapping[str, Array]
    ) -> None:
        t = self.model.types[decl.name]
        if isinstance(t, MaskType):
            m = np.asarray(x)
            if m.dtype != np.bool_:
                raise ReferenceError(
                    f"mask input {decl.name!r} must be a bool array, got {m.dtype}"
                )
            self.bind_dims(decl.name, m.shape, (t.batch, t.time))
            if not mask_fits_kind(m, t.kind):
                raise ReferenceError(
                    f"mask input {decl.name!r} does not fit its declared kind {t.kind}"
                )
            self.values[decl.name] = (m, None)
            return
        assert isinstance(t, TensorType)
        self.bind_dims(decl.name, x.shape, t.shape)
        if t.dtype in ("f32", "f64"):
            arr = _float(x)
        elif t.dtype in ("i32", "i64"):
            if not np.issubdtype(x.dtype, np.integer):
                raise ReferenceError(f"input {decl.name!r} is declared {t.dtype}, got {x.dtype}")
            arr = x.astype(np.int64)
        else:
            arr = x.astype(bool)
        mask: Mask = None
        if decl.masked:
            assert t.mask is not None
            bt = arr.shape[:2]
            if decl.name in lengths and decl.name in masks:
                raise ReferenceError(f"give lengths or a mask for {decl.name!r}, not both")
            if decl.name in lengths:
                pad = self.model.pads.get(decl.name)
                if pad is None:
                    raise ReferenceError(
                        f"input {decl.name!r} is `masked` without `pad(...)` (kind any): "
                        "lengths have no side; pass masks={name: bool [B, T]}"
                    )
                lens = np.asarray(lengths[decl.name])
                if lens.shape != (bt[0],) or (lens < 0).any() or (lens > bt[1]).any():
                    raise ReferenceError(
                        f"lengths of {decl.name!r} must be {bt[0]} values in [0, {bt[1]}]"
                    )
                mask = lengths_to_mask(lens, bt[1], pad.side)
            elif decl.name in masks:
                mask = np.asarray(masks[decl.name])
                if mask.dtype != np.bool_ or mask.shape != bt:
                    raise ReferenceError(
                        f"the mask of {decl.name!r} must be bool {bt}, got {mask.dtype} {mask.shape}"
                    )
            else:
                raise ReferenceError(
                    f"input {decl.name!r} is `masked`: pass lengths={{...}} or masks={{...}}"
                )
            if not mask_fits_kind(mask, t.mask):
                raise ReferenceError(
                    f"the mask of {decl.name!r} does not fit its declared kind {t.mask}"
                )
        self.values[decl.name] = (arr, mask)

    # ------------------------------------------------------------ ops
    def run(self) -> None:
        infos = {info.op_index: info for info in self.model.layers}
        for index, op in enumerate(self.model.model.ops):
            if isinstance(op, DropMaskOp):
                x, _ = self.values[op.input.name]
                outs: list[tuple[Array, Mask]] = [(x, None)]
            elif isinstance(op, MergeOp):
                outs = self.merge(infos[index], op)
            else:
                outs = self.apply(infos[index], op)
            assert len(outs) == len(op.results), (op.results, len(outs))
            for name, (arr, m) in zip(op.results, outs, strict=True):
                self.check_static(name, arr, m)
                self.values[name] = (arr, m)

    def check_static(self, name: str, arr: Array, mask: Mask) -> None:
        """The value agrees with its static type: shape and mask presence."""
        t = self.model.types.get(name)
        if not isinstance(t, TensorType):
            return
        if arr.ndim != t.rank:
            raise AssertionError(f"{name}: rank {arr.ndim}, static type {t}")
        for n, d in zip(arr.shape, t.shape, strict=True):
            if d is None:
                continue
            v = d.evaluate(self.env)
            if v is not None and v != n:
                raise AssertionError(f"{name}: shape {arr.shape}, static type {t} ({d} = {v})")
        if (mask is None) != (t.mask is None):
            raise AssertionError(
                f"{name}: mask {'absent' if mask is None else 'present'}, static type {t.mask}"
            )
        if mask is not None and mask.shape != arr.shape[:2]:
            raise AssertionError(f"{name}: mask shape {mask.shape} for value {arr.shape}")

    def merge(self, info: LayerInfo, op: MergeOp) -> list[Value]:
        vals = [self.values[u.name] for u in op.inputs]
        fn = MERGES.get(op.fn)
        if fn is None:  # pragma: no cover - catalogue/IR mismatch
            raise AssertionError(op.fn)
        return fn(Cfg(info.config), [v[0] for v in vals], [v[1] for v in vals])

    def apply(self, info: LayerInfo, op: ApplyOp) -> list[Value]:
        values = [self.values[u.name] for u in op.inputs]
        ms = [m for _, m in values]
        if op.mask is not None:  # an explicit mask replaces the incoming ones
            mask = self.values[op.mask.name][0]
            x = values[0][0]
            if mask.shape != x.shape[:2]:  # a time the checker could not compare (`_`)
                raise ReferenceError(
                    f"{info.name}: mask `{op.mask.name}` has shape {list(mask.shape)}, but "
                    f"`{op.inputs[0].name}` has {list(x.shape[:2])} steps ([batch, time])"
                )
            ms = [mask] * len(values)
        training = self.training if op.training is None else bool(op.training.value)
        init = (
            [self.values[s.name][0] for s in op.initial_state]
            if op.initial_state is not None
            else None
        )
        if info.kind in self.model.externs:
            return self.extern(info, op.results, [x for x, _ in values], ms, training)
        fn = LAYERS.get(info.kind)
        if fn is None:
            raise NotImplementedError(f"the reference has no rule for layer {info.kind}")
        return fn(self, _Call(info, Cfg(info.config), values, ms, training, init))

    # ------------------------------------------------------------ recurrent
    def cell_of(
        self, layer: str, prefix: str, kind: str, cfg: Mapping[str, object], features: int
    ) -> _Cell:
        cell, raw = _cell_of(cfg, kind)
        c = Cfg(raw)
        u = c.integer("units")
        g = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell]
        bias = None
        if c.flag("use_bias"):
            shape = (2, 3 * u) if cell == "gru" and c.flag("reset_after") else (g * u,)
            bias = self.weight(layer, prefix + "bias", shape)
        return _Cell(
            cell,
            c,
            self.weight(layer, prefix + "kernel", (features, g * u)),
            self.weight(layer, prefix + "recurrent_kernel", (u, g * u)),
            bias,
        )

    def run_direction(
        self,
        key: str,
        cell: _Cell,
        x: Array,
        mask: Mask,
        init: list[Array] | None,
        training: bool,
        go_backwards: bool,
        masked_output: str,
    ) -> _RnnRun:
        b, t, f = x.shape
        m = np.ones((b, t), bool) if mask is None else mask
        states = (
            init if init is not None else [np.zeros((b, cell.units)) for _ in range(cell.n_states)]
        )
        for i, s in enumerate(states):
            if s.shape != (b, cell.units):
                raise ReferenceError(
                    f"{key}: state {i} has shape {s.shape}, expected {(b, cell.units)}"
                )
        in_keep = rec_keep = None
        rate = cell.cfg.number("dropout")
        rrate = cell.cfg.number("recurrent_dropout")
        if training and rate > 0.0:
            in_keep = self.keep(f"{key}/input", (b, f), rate)
        if training and rrate > 0.0:
            rec_keep = self.keep(f"{key}/recurrent", (b, cell.units), rrate)
        if go_backwards:
            x, m = x[:, ::-1], m[:, ::-1]
        return _run_cell(cell, x, m, [_float(s) for s in states], masked_output, in_keep, rec_keep)

    def block_cell(self, info: LayerInfo, prefix: str) -> _BlockCell:
        """The cell block of ``RNN(MyCell(...))`` (or of one direction of
        ``Bidirectional``) with its weights ``{layer}/{prefix}{weight}``."""
        bc = bound_cell_of(info, self.model.types)
        ws = {w.name: self.weight(info.name, prefix + w.name, w.shape) for w in bc.weights}
        return _BlockCell(bc, ws)

    def run_block(
        self,
        key: str,
        cell: _BlockCell,
        xs: Sequence[Array],
        mask: Mask,
        init: list[Array] | None,
        go_backwards: bool,
        masked_output: str,
    ) -> _RnnRun:
        b, t = xs[0].shape[:2]
        m = np.ones((b, t), bool) if mask is None else mask
        shapes = [(b, *shape) for _, shape in cell.bc.states]
        states = init if init is not None else [np.zeros(shape) for shape in shapes]
        if len(states) != len(shapes):
            raise ReferenceError(f"{key}: {len(shapes)} state(s) expected, got {len(states)}")
        for (name, _), s, want in zip(cell.bc.states, states, shapes, strict=True):
            if s.shape != want:
                raise ReferenceError(f"{key}: state {name!r} has shape {s.shape}, expected {want}")
        if go_backwards:
            xs, m = [x[:, ::-1] for x in xs], m[:, ::-1]

        def step_fn(step: int, st: list[Array]) -> tuple[list[Array], list[Array]]:
            return cell.step([x[:, step] for x in xs], st)

        out_shapes = [shape for _, shape in cell.bc.outputs]
        return _scan(step_fn, t, m, [_float(s) for s in states], out_shapes, masked_output)

    def recurrent(
        self,
        info: LayerInfo,
        x: Array,
        mask: Mask,
        init: list[Array] | None,
        training: bool,
        xs: Sequence[Array] | None = None,
    ) -> list[tuple[Array, Mask]]:
        cfg = Cfg(info.config)
        block = self.block_cell(info, "") if is_cell_layer(info.config) else None
        cell = None if block else self.cell_of(info.name, "", info.kind, info.config, x.shape[2])
        n_states = len(block.bc.states) if block else cell.n_states if cell else 0
        stateful = cfg.flag("stateful")
        go_back = cfg.flag("go_backwards")
        masked_output = cfg.text("masked_output")
        if init is None and stateful and info.name in self.init_states:
            init = [_float(s) for s in self.init_states[info.name]]
            if len(init) != n_states:
                raise ReferenceError(f"{info.name}: {n_states} state(s) expected, got {len(init)}")
        if block is not None:
            run = self.run_block(info.name, block, xs or [x], mask, init, go_back, masked_output)
        else:
            assert cell is not None
            run = self.run_direction(
                info.name, cell, x, mask, init, training, go_back, masked_output
            )
        if stateful:
            self.final_states[info.name] = [s.copy() for s in run.states]
        outs: list[tuple[Array, Mask]] = []
        if cfg.flag("return_sequences"):
            out_mask = None if mask is None else (mask[:, ::-1].copy() if go_back else mask)
            outs += [(seq, out_mask) for seq in run.sequences]
        else:
            outs += [(last, None) for last in run.lasts]
        if cfg.flag("return_state"):
            outs += [(s, None) for s in run.states]
        return outs

    def bidirectional(
        self, info: LayerInfo, x: Array, mask: Mask, init: list[Array] | None, training: bool
    ) -> list[tuple[Array, Mask]]:
        cfg = Cfg(info.config)
        inner = cfg.layer("layer")
        flags = Cfg(inner.config)
        key_fw, key_bw = f"{info.name}/forward", f"{info.name}/backward"
        stateful = flags.flag("stateful")
        if init is None and stateful and info.name in self.init_states:
            # a stateful Bidirectional: each direction continues from its own final states
            init = [_float(s) for s in self.init_states[info.name]]
        if is_cell_layer(info.config):
            bfw, bbw = self.block_cell(info, "forward/"), self.block_cell(info, "backward/")
            n = len(bfw.bc.states)
            init_fw = init[:n] if init is not None else None
            init_bw = init[n:] if init is not None else None
            r_fw = self.run_block(key_fw, bfw, [x], mask, init_fw, False, "zero")
            r_bw = self.run_block(key_bw, bbw, [x], mask, init_bw, True, "zero")
        else:
            fw = self.cell_of(info.name, "forward/", inner.kind, inner.config, x.shape[2])
            back = backward_of(info.config)  # backward_layer, or a copy of layer
            bw = self.cell_of(info.name, "backward/", back.kind, back.config, x.shape[2])
            n = fw.n_states
            if init is not None and len(init) != 2 * n:
                raise ReferenceError(f"{info.name}: {2 * n} state(s) expected, got {len(init)}")
            init_fw = init[:n] if init is not None else None
            init_bw = init[n:] if init is not None else None
            r_fw = self.run_direction(key_fw, fw, x, mask, init_fw, training, False, "zero")
            r_bw = self.run_direction(key_bw, bw, x, mask, init_bw, training, True, "zero")
        if stateful:  # forward then backward, as the initial states
            self.final_states[info.name] = [s.copy() for s in r_fw.states + r_bw.states]
        if flags.flag("return_sequences"):
            y_fw, y_bw = r_fw.sequence, r_bw.sequence[:, ::-1]
            out_mask = mask
        else:
            y_fw, y_bw = r_fw.last, r_bw.last
            out_mask = None
        mode = cfg.text("merge_mode")
        if mode == "none":
            outs = [(y_fw, out_mask), (y_bw.copy(), out_mask)]
        else:
            if mode == "concat":
                y = np.concatenate([y_fw, y_bw], axis=-1)
            elif mode == "sum":
                y = y_fw + y_bw
            elif mode == "mul":
                y = y_fw * y_bw
            elif mode == "ave":
                y = (y_fw + y_bw) / 2.0
            else:  # pragma: no cover
                raise AssertionError(mode)
            outs = [(y, out_mask)]
        if flags.flag("return_state"):
            outs += [(s, None) for s in r_fw.states + r_bw.states]
        return outs

    # ------------------------------------------------------------ extern layers
    def extern(
        self,
        info: LayerInfo,
        results: Sequence[str],
        xs: Sequence[Array],
        ms: Sequence[Mask],
        training: bool,
    ) -> list[tuple[Array, Mask]]:
        """Call the layer's numpy implementation; the output masks follow the
        declared contract; the outputs (and a returned mask) must fit the declaration."""
        edef = self.model.externs[info.kind]
        impl = self.impls[info.kind]
        who = f"{info.kind} (layer `{info.name}`)"
        decl = f"declared at {edef.span}"
        config = {p.name: info.config.get(p.name) for p in edef.params}
        mask_arg: object = ms[0] if len(xs) == 1 else tuple(ms)
        res = impl.fn(
            *xs, mask=mask_arg, weights=self.layer_weights(info), config=config, training=training
        )
        got_mask: object = None
        if impl.returns_mask:
            if not (isinstance(res, (tuple, list)) and len(res) == 2):
                raise ExternError(
                    f"extern layer {who} is registered with returns_mask=True, so it must "
                    f"return (outputs, mask); it returned {type(res).__name__} ({decl})"
                )
            res, got_mask = res
        raw = list(res) if isinstance(res, (tuple, list)) else [res]
        arrays = [np.asarray(o) for o in raw]
        declared: list[tuple[str, list[int | None]]] = []
        for name in results:
            t = self.model.types[name]
            assert isinstance(t, TensorType)
            shape: list[int | None] = []
            for d in t.shape:
                v = None if d is None else d.evaluate(self.env)
                shape.append(None if v is None or v.denominator != 1 else int(v))
            declared.append((t.dtype, shape))
        got = [(str(a.dtype), a.shape) for a in arrays]
        check_output_shapes(who, declared, got, decl)
        outs = [
            _float(a) if dt in ("f32", "f64") else a
            for a, (dt, _) in zip(arrays, declared, strict=True)
        ]
        masks = self.extern_masks(info, edef.mask, xs, ms, outs)
        if impl.returns_mask:
            self.compare_extern_mask(who, decl, edef.mask.kind, got_mask, masks)
        return list(zip(outs, masks, strict=True))

    def extern_masks(
        self,
        info: LayerInfo,
        contract: MaskContract,
        xs: Sequence[Array],
        ms: Sequence[Mask],
        outs: Sequence[Array],
    ) -> list[Mask]:
        """The output masks an extern layer's declaration gives (cell_contract.md)."""
        active = contract.cond is None or bool(info.config.get(contract.cond))
        kind = contract.kind if active else "none"
        n = len(outs)
        in_mask = next((m for m in ms if m is not None), None)
        if kind == "propagate":
            return [in_mask if in_mask is not None and o.ndim >= 2 else None for o in outs]
        if kind == "generate":
            assert contract.value is not None
            x = xs[0]
            m = x != contract.value
            if m.ndim > 2:  # a step is valid where any of its values differs (as Masking)
                m = m.any(axis=tuple(range(2, m.ndim)))
            return [m if o.ndim >= 2 else None for o in outs]
        if kind == "split":
            if in_mask is None:
                return [None] * n
            k = in_mask.shape[1] // n
            return [in_mask[:, i * k : (i + 1) * k] for i in range(n)]
        if kind == "concat":
            if all(m is None for m in ms):
                return [None] * n
            parts = [
                m if m is not None else np.ones(x.shape[:2], bool)
                for x, m in zip(xs, ms, strict=True)
            ]
            return [np.concatenate(parts, axis=1)] * n
        return [None] * n  # consume, drop, none

    @staticmethod
    def compare_extern_mask(
        who: str, decl: str, kind: str, got: object, want: Sequence[Mask]
    ) -> None:
        """A mask returned by the implementation must be the declaration's."""
        n = len(want)
        if got is None:
            gots: list[object] = [None] * n
        elif isinstance(got, (tuple, list)) and len(got) == n and n > 1:
            gots = list(got)
        else:
            gots = [got] * n
        for i, (g, w) in enumerate(zip(gots, want, strict=True)):
            if g is None and w is None:
                continue
            where = f"output {i + 1}: " if n > 1 else ""
            if g is None or w is None:
                raise ExternError(
                    f"extern layer {who}: {where}the implementation returned "
                    f"{'no mask' if g is None else 'a mask'}, but the declaration "
                    f"(`mask: {kind}`, {decl}) gives {'none' if w is None else 'one'}"
                )
            ga = np.asarray(g)
            if ga.shape != w.shape or not np.array_equal(ga.astype(bool), w):
                bad = (
                    "shape " + str(ga.shape) + " instead of " + str(w.shape)
                    if ga.shape != w.shape
                    else f"{int((ga.astype(bool) != w).sum())} step(s) differ"
                )
                raise ExternError(
                    f"extern layer {who}: {where}the mask the implementation returned differs "
                    f"from the declaration's (`mask: {kind}`, {decl}): {bad}"
                )


# --------------------------------------------------------------------------
# the layers: one function per layer (or family), found by kind in LAYERS


@dataclass(frozen=True)
class _Call:
    """One call of a layer, as the functions of :data:`LAYERS` see it."""

    info: LayerInfo
    #: the layer's configuration, bound by the checker
    cfg: Cfg
    #: the inputs, each with its own mask
    values: Sequence[Value]
    #: the mask of each input; an explicit ``mask=`` argument replaces them all
    masks: Sequence[Mask]
    #: the call's ``training=``, else the default of the run
    training: bool
    #: the ``initial_state=`` values
    init: list[Array] | None

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def x(self) -> Array:
        return self.values[0][0]

    @property
    def xs(self) -> list[Array]:
        return [x for x, _ in self.values]

    @property
    def mask(self) -> Mask:
        return self.masks[0]


#: a layer: (interpreter, call) -> one (array, mask) per result
LayerFn = Callable[[_Interp, _Call], list[Value]]
#: a per-step layer (alone or in ``TimeDistributed``): (interpreter, config,
#: layer name, input, training) -> output; the mask passes through
PerStepFn = Callable[[_Interp, Cfg, str, Array, bool], Array]
#: a merge: (config, inputs, their masks) -> one (array, mask)
MergeFn = Callable[[Cfg, Sequence[Array], Sequence[Mask]], list[Value]]


# ------------------------------------------------------------ per-step layers
def _dense(it: _Interp, cfg: Cfg, name: str, x: Array, training: bool) -> Array:
    units = cfg.integer("units")
    y = x @ it.weight(name, "kernel", (x.shape[-1], units))
    if cfg.flag("use_bias"):
        y = y + it.weight(name, "bias", (units,))
    return _act(cfg.text("activation"))(y)


def _activation(it: _Interp, cfg: Cfg, name: str, x: Array, training: bool) -> Array:
    return _act(cfg.text("activation"))(x)


def _dropout(it: _Interp, cfg: Cfg, name: str, x: Array, training: bool) -> Array:
    rate = cfg.number("rate")
    if not training or rate == 0.0:
        return x
    return _float(x * it.keep(name, x.shape, rate))


def _layer_norm(it: _Interp, cfg: Cfg, name: str, x: Array, training: bool) -> Array:
    f = x.shape[-1]
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + cfg.number("epsilon"))
    if cfg.flag("scale"):
        y = y * it.weight(name, "gamma", (f,))
    if cfg.flag("center"):
        y = y + it.weight(name, "beta", (f,))
    return _float(y)


#: the layers that work on each step alone (``TimeDistributed`` takes these)
PER_STEP: dict[str, PerStepFn] = {
    "Dense": _dense,
    "Activation": _activation,
    "Dropout": _dropout,
    "LayerNormalization": _layer_norm,
}


def _per_step_fn(kind: str) -> PerStepFn:
    fn = PER_STEP.get(kind)
    if fn is None:
        raise NotImplementedError(f"the reference has no per-step rule for {kind}")
    return fn


def _per_step(it: _Interp, c: _Call) -> list[Value]:
    return [(_per_step_fn(c.kind)(it, c.cfg, c.name, c.x, c.training), c.mask)]


def _time_distributed(it: _Interp, c: _Call) -> list[Value]:
    inner = c.cfg.layer("layer")
    y = _per_step_fn(inner.kind)(it, Cfg(inner.config), c.name, c.x, c.training)
    return [(y, c.mask)]


def _spatial_dropout_1d(it: _Interp, c: _Call) -> list[Value]:
    """Keras' SpatialDropout1D: one keep-mask [B, 1, F] for every step of a row."""
    rate = c.cfg.number("rate")
    x = c.x
    if not c.training or rate == 0.0:
        return [(x, c.mask)]
    keep = it.keep(c.name, (x.shape[0], 1, x.shape[2]), rate)  # divided by 1 - rate
    return [(_float(x * keep), c.mask)]


# ------------------------------------------------------------ embedding, masking
def _embedding(it: _Interp, c: _Call) -> list[Value]:
    ids = c.x
    emb = it.layer_weights(c.info)["embeddings"]
    if ids.size and (ids.min() < 0 or ids.max() >= emb.shape[0]):
        raise ReferenceError(
            f"{c.name}: ids must lie in [0, {emb.shape[0]}), got {ids.min()}..{ids.max()}"
        )
    out = emb[ids]
    made = ids != 0 if c.cfg.flag("mask_zero") and ids.ndim >= 2 else None
    # without mask_zero an incoming mask (a `masked` id input) passes through
    return [(out, made if made is not None else c.mask)]


def _masking(it: _Interp, c: _Call) -> list[Value]:
    x = c.x
    m = (x != c.cfg.number("mask_value")).any(axis=-1)
    return [(np.where(m[..., None], x, 0.0), m)]


# ------------------------------------------------------------ normalization
def _batch_norm(it: _Interp, c: _Call) -> list[Value]:
    x, mask, cfg = c.x, c.mask, c.cfg
    w = it.layer_weights(c.info)
    eps = cfg.number("epsilon")
    if c.training and ("trainable" not in cfg or cfg.flag("trainable")):
        # moments over every axis but the last, at the valid steps only
        valid = (
            np.ones(x.shape[:-1], bool)
            if mask is None
            else np.broadcast_to(
                mask.reshape(mask.shape + (1,) * (x.ndim - 1 - mask.ndim)), x.shape[:-1]
            )
        )
        n = valid.sum()
        flat = x[valid]  # [n, F]
        if n == 0:  # no valid step in the whole batch: 0 and 0, as Keras
            mean = np.zeros(x.shape[-1])
            var = np.zeros(x.shape[-1])
        else:
            mean = flat.mean(axis=0)
            var = ((flat - mean) ** 2).mean(axis=0)
        mom = cfg.number("momentum")
        it.updated[f"{c.name}/moving_mean"] = mom * w["moving_mean"] + (1.0 - mom) * mean
        it.updated[f"{c.name}/moving_variance"] = mom * w["moving_variance"] + (1.0 - mom) * var
    else:
        mean, var = w["moving_mean"], w["moving_variance"]
    y = (x - mean) / np.sqrt(var + eps)
    if "gamma" in w:
        y = y * w["gamma"]
    if "beta" in w:
        y = y + w["beta"]
    return [(y, mask)]


# ------------------------------------------------------------ convolution, pooling
def _conv_windows(what: str, t: int, k: int, s: int, d: int, padding: str) -> tuple[int, int]:
    """(output length, zeros before) of a window layer, TensorFlow's padding. A
    valid window longer than the sequence is the checker's run-time constraint
    ``T >= window``: ReferenceError, as the backends' InputError."""
    k_eff = d * (k - 1) + 1
    if padding == "valid":
        if t < k_eff:
            raise ReferenceError(
                f"{what}: time length {t} is shorter than its window of {k_eff} (padding=valid)"
            )
        return (t - k_eff) // s + 1, 0
    t_out = -(-t // s)
    if padding == "causal":
        return t_out, k_eff - 1
    total = max((t_out - 1) * s + k_eff - t, 0)  # same: TF puts the odd zero after
    return t_out, total // 2


def _window_mask(mask: Mask, t_out: int, k: int, s: int, d: int, padding: str) -> Mask:
    if mask is None:
        return None
    out = np.zeros((mask.shape[0], t_out), bool)
    for j in range(t_out):
        if padding == "valid":
            pos = [j * s + i * d for i in range(k)]
            out[:, j] = mask[:, pos].all(axis=1)
        else:  # same, causal: the anchor step j * s
            out[:, j] = mask[:, j * s]
    return out


def _conv1d(it: _Interp, c: _Call) -> list[Value]:
    cfg, x, mask = c.cfg, c.x, c.mask
    k, s, d = (cfg.integer(n) for n in ("kernel_size", "strides", "dilation_rate"))
    padding = cfg.text("padding")
    w = it.layer_weights(c.info)
    if mask is not None:
        x = np.where(mask[..., None], x, 0.0)  # masked steps are zeroed first
    b, t, _ = x.shape
    t_out, before = _conv_windows(f"{c.kind} (line {c.info.span.line})", t, k, s, d, padding)
    kernel = w["kernel"]
    y = np.zeros((b, t_out, kernel.shape[2]))
    for j in range(t_out):
        for i in range(k):
            p = j * s - before + i * d
            if 0 <= p < t:
                y[:, j] += x[:, p] @ kernel[i]
    if "bias" in w:
        y = y + w["bias"]
    y = _act(cfg.text("activation"))(y)
    return [(y, _window_mask(mask, t_out, k, s, d, padding))]


def _pool1d(it: _Interp, c: _Call) -> list[Value]:
    """MaxPooling1D and AveragePooling1D: over the valid steps of each window."""
    cfg, x, mask = c.cfg, c.x, c.mask
    p = cfg.integer("pool_size")
    strides = cfg.opt_integer("strides")
    s = p if strides is None else strides
    padding = cfg.text("padding")
    b, t, f = x.shape
    t_out, before = _conv_windows(f"{c.kind} (line {c.info.span.line})", t, p, s, 1, padding)
    valid_in = np.ones((b, t), bool) if mask is None else mask
    y = np.zeros((b, t_out, f))
    for j in range(t_out):
        pos = [q for q in range(j * s - before, j * s - before + p) if 0 <= q < t]
        win = x[:, pos, :]  # [B, n, F]
        ok = valid_in[:, pos][..., None]  # [B, n, 1]
        count = ok.sum(axis=1)  # [B, 1]
        if c.kind == "MaxPooling1D":
            mx = np.where(ok, win, -np.inf).max(axis=1)
            y[:, j] = np.where(count > 0, mx, 0.0)
        else:
            y[:, j] = np.where(
                count > 0, np.where(ok, win, 0.0).sum(axis=1) / np.maximum(count, 1), 0.0
            )
    return [(y, _window_mask(mask, t_out, p, s, 1, padding))]


def _global_pool(it: _Interp, c: _Call) -> list[Value]:
    """GlobalAveragePooling1D and GlobalMaxPooling1D: over the valid steps."""
    x, mask = c.x, c.mask
    valid = np.ones(x.shape[:2], bool) if mask is None else mask
    ok = valid[..., None]
    count = ok.sum(axis=1)  # [B, 1]
    if c.kind == "GlobalMaxPooling1D":
        y = np.where(count > 0, np.where(ok, x, -np.inf).max(axis=1), 0.0)
    else:
        y = np.where(count > 0, np.where(ok, x, 0.0).sum(axis=1) / np.maximum(count, 1), 0.0)
    return [(y[:, None, :] if c.cfg.flag("keepdims") else y, None)]


# ------------------------------------------------------------ reshaping, time
def _flatten(it: _Interp, c: _Call) -> list[Value]:
    return [(c.x.reshape(c.x.shape[0], -1), None)]


def _reshape(it: _Interp, c: _Call) -> list[Value]:
    target = c.cfg.integers("target_shape")
    known = math.prod(x for x in target if x != -1)
    size = math.prod(c.x.shape[1:])
    if (size % known) if -1 in target else (size != known):  # a run-time constraint
        raise ReferenceError(
            f"{c.info.name}: {size} values per example do not fit target_shape {list(target)}"
        )
    return [(c.x.reshape(c.x.shape[0], *target), None)]


def _temporal_softmax(it: _Interp, c: _Call) -> list[Value]:
    x, mask = c.x, c.mask
    assert mask is not None
    ok = mask[..., None]  # [B, T, 1]
    mx = np.where(ok, x, -np.inf).max(axis=1, keepdims=True)  # [B, 1, F]
    mx = np.where(np.isfinite(mx), mx, 0.0)
    e = np.where(ok, np.exp(np.where(ok, x - mx, 0.0)), 0.0)
    total = e.sum(axis=1, keepdims=True)
    return [(np.where(total > 0, e / np.where(total > 0, total, 1.0), 0.0), None)]


def _temporal_split(it: _Interp, c: _Call) -> list[Value]:
    x, mask = c.x, c.mask
    n = c.cfg.integer("parts")
    if x.shape[1] % n:
        raise ReferenceError(
            f"TemporalSplit({n}): time length {x.shape[1]} is not divisible by {n}"
        )
    k = x.shape[1] // n
    return [
        (x[:, i * k : (i + 1) * k], None if mask is None else mask[:, i * k : (i + 1) * k])
        for i in range(n)
    ]


# ------------------------------------------------------------ attention
def _attention(it: _Interp, c: _Call) -> list[Value]:
    """Attention / MultiHeadAttention on ``(query, value[, key])``, each with its mask."""
    cfg, ins, training = c.cfg, c.values, c.training
    (q, q_mask), (v, v_mask) = ins[0], ins[1]
    k, k_mask = ins[2] if len(ins) > 2 else ins[1]
    # a key step is valid where the value's and the key's masks both say so
    key_valid = _and_masks([v_mask, k_mask] if len(ins) > 2 else [v_mask])
    b, tq, tv = q.shape[0], q.shape[1], v.shape[1]
    if k.shape[1] != tv:
        raise ReferenceError(f"{c.name}: key has {k.shape[1]} steps, value {tv}")
    causal = cfg.flag("use_causal_mask")
    rate = cfg.number("dropout")
    w = it.layer_weights(c.info)
    if c.kind == "Attention":
        scale = float(w["scale"]) if "scale" in w else 1.0
        if cfg.text("score_mode") == "dot":
            scores = np.einsum("bif,bjf->bij", q, k) * scale
        else:  # concat: the sum over features of tanh(scale * (q_i + k_j))
            pair = q[:, :, None, :] + k[:, None, :, :]
            scores = float(w["concat_score_weight"]) * np.tanh(scale * pair).sum(axis=-1)
        # the query mask takes no part in the weights; it zeroes the output
        allowed = _allowed_keys(b, tq, tv, key_valid, None, causal)
        weights = _masked_softmax(scores, allowed)
        used = weights
        if training and rate > 0.0:
            used = weights * it.keep(c.name, weights.shape, rate)
        out = np.einsum("bij,bjf->bif", used, v)
        if q_mask is not None:
            out = np.where(q_mask[:, :, None], out, 0.0)
    else:
        qp = np.einsum("btf,fnh->btnh", q, w["query/kernel"])
        kp = np.einsum("bsf,fnh->bsnh", k, w["key/kernel"])
        vp = np.einsum("bsf,fnh->bsnh", v, w["value/kernel"])
        if "query/bias" in w:
            qp, kp, vp = qp + w["query/bias"], kp + w["key/bias"], vp + w["value/bias"]
        key_dim = qp.shape[-1]
        scores = np.einsum("btnh,bsnh->bnts", qp, kp) / math.sqrt(key_dim)
        # the query mask is part of the attention mask: a masked query step attends to nothing
        allowed = _allowed_keys(b, tq, tv, key_valid, q_mask, causal)
        weights = _masked_softmax(scores, np.broadcast_to(allowed[:, None], scores.shape))
        used = weights
        if training and rate > 0.0:
            used = weights * it.keep(c.name, weights.shape, rate)
        context = np.einsum("bnts,bsnh->btnh", used, vp)
        out = np.einsum("btnh,nho->bto", context, w["attention_output/kernel"])
        if "attention_output/bias" in w:
            out = out + w["attention_output/bias"]
    outs: list[Value] = [(_float(out), q_mask)]
    if cfg.flag("return_attention_scores"):
        outs.append((weights, None))
    return outs


# ------------------------------------------------------------ recurrent
def _recurrent(it: _Interp, c: _Call) -> list[Value]:
    """LSTM, GRU, SimpleRNN and RNN (a built-in cell or a cell block)."""
    if is_cell_layer(c.info.config):
        # a cell block reads every input; a step is valid where all inputs are
        return it.recurrent(c.info, c.x, _and_masks(c.masks), c.init, c.training, c.xs)
    return it.recurrent(c.info, c.x, c.mask, c.init, c.training)


def _bidirectional(it: _Interp, c: _Call) -> list[Value]:
    mask = _and_masks(c.masks) if is_cell_layer(c.info.config) else c.mask
    return it.bidirectional(c.info, c.x, mask, c.init, c.training)


#: every built-in layer kind -> its function (extern layers are called by
#: ``_Interp.extern``); adding a layer adds one entry here
LAYERS: dict[str, LayerFn] = {
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
    "SpatialDropout1D": _spatial_dropout_1d,
    "LayerNormalization": _per_step,
    "TimeDistributed": _time_distributed,
    "BatchNormalization": _batch_norm,
    "Conv1D": _conv1d,
    "MaxPooling1D": _pool1d,
    "AveragePooling1D": _pool1d,
    "GlobalAveragePooling1D": _global_pool,
    "GlobalMaxPooling1D": _global_pool,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "TemporalSoftmax": _temporal_softmax,
    "TemporalSplit": _temporal_split,
    "Attention": _attention,
    "MultiHeadAttention": _attention,
}


# ------------------------------------------------------------ merges
def _concat(cfg: Cfg, xs: Sequence[Array], ms: Sequence[Mask]) -> list[Value]:
    rank = xs[0].ndim
    axis_cfg = cfg.raw("axis") if "axis" in cfg else "features"
    if axis_cfg == "features":
        axis = rank - 1
    elif axis_cfg == "time":
        axis = 1
    else:
        axis = cfg.integer("axis") % rank
    out = np.concatenate(xs, axis=axis)
    if axis == 1:  # in time, also for rank 2 (ids [B, T]): the masks are joined
        if all(m is None for m in ms):
            return [(out, None)]
        parts = [
            m if m is not None else np.ones(x.shape[:2], bool) for x, m in zip(xs, ms, strict=True)
        ]
        return [(out, np.concatenate(parts, axis=1))]
    return [(out, _and_masks(ms))]


def _elementwise(f: Callable[[Sequence[Array]], Array]) -> MergeFn:
    """A merge of same-shaped inputs: the AND of the masks."""

    def merge(cfg: Cfg, xs: Sequence[Array], ms: Sequence[Mask]) -> list[Value]:
        return [(f(xs), _and_masks(ms))]

    return merge


def _product(xs: Sequence[Array]) -> Array:
    out = xs[0]
    for x in xs[1:]:
        out = out * x
    return out


#: every merge function -> its function
MERGES: dict[str, MergeFn] = {
    "concat": _concat,
    "add": _elementwise(lambda xs: sum(xs[1:], xs[0])),
    "subtract": _elementwise(lambda xs: xs[0] - xs[1]),
    "multiply": _elementwise(_product),
    "average": _elementwise(lambda xs: sum(xs[1:], xs[0]) / len(xs)),
    "maximum": _elementwise(lambda xs: np.maximum.reduce(xs)),
    "minimum": _elementwise(lambda xs: np.minimum.reduce(xs)),
}


def _is_stateful(info: LayerInfo) -> bool:
    if info.kind == "Bidirectional":
        return bool(Cfg(info.config).layer("layer").config.get("stateful"))
    return info.kind in ("LSTM", "GRU", "SimpleRNN", "RNN") and bool(info.config.get("stateful"))


def _extern_impls(
    model: CheckedModel, overrides: Mapping[str, Callable[..., object] | Impl] | None
) -> dict[str, Impl]:
    """The numpy implementation of every extern layer the model uses (``overrides``
    first, then the registry, after importing the ``use "python.module"`` modules,
    as ``seqdsl.emit.build`` does). A missing one raises ExternError."""
    used = sorted({info.kind for info in model.layers if info.kind in model.externs})
    if not used:
        return {}
    if model.python_modules:
        folder = Path(model.file).parent if model.file else Path(".")
        import_modules(model.python_modules, [folder])
    return {name: get_extern(name, "numpy", overrides) for name in used}


def run_reference(
    model: CheckedModel,
    weights: Mapping[str, Array],
    inputs: Sequence[Array],
    *,
    lengths: Mapping[str, Array] | None = None,
    masks: Mapping[str, Array] | None = None,
    training: bool = False,
    dropout_masks: Mapping[str, Array] | None = None,
    states: Mapping[str, Sequence[Array]] | None = None,
    externs: Mapping[str, Callable[..., object] | Impl] | None = None,
) -> ReferenceResult:
    """Run a checked model on NumPy inputs in float64 (see the module docstring)."""
    impls = _extern_impls(model, externs)
    stateful = {info.name for info in model.layers if _is_stateful(info)}
    for name in states or {}:
        if name not in stateful:
            raise ReferenceError(
                f"states given for {name!r}, which is not a stateful layer of {model.name}"
            )
    interp = _Interp(model, weights, training, dropout_masks or {}, states or {}, impls)
    interp.bind_inputs(inputs, lengths or {}, masks or {})
    interp.run()
    outs: list[object] = []
    for out in model.model.outputs:
        arr, m = interp.values[out.name]
        outs.append((arr, m) if out.with_mask else arr)
    return ReferenceResult(tuple(outs), interp.values, interp.final_states, interp.updated)
