"""The run-time code of generated JAX modules: one small function per layer kind.

A generated module imports what it uses from here (``from seqdsl.runtime.jax
import _dense, _lstm``); ``seqdsl compile --standalone`` copies those
definitions into the module instead (:mod:`seqdsl.emit.standalone`). Plain JAX:
``jax``, ``jax.numpy``, ``jax.lax`` and NumPy, no neural-network library.
Semantics: docs/semantics.md; the JAX-specific choices: docs/backend-jax.md.

Module-level knobs, read when a layer is traced: ``FUSED_LSTM`` ("auto",
"always", "never"), ``_fused_lstm`` (the fused kernel) and ``_hoist_projection``
(where ``_scan`` projects the inputs). They are shared by every generated module
that imports them from here; a standalone module has its own copies.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.experimental.rnn
import jax.numpy as jnp
import numpy as np
from jax import lax

from seqdsl.externs import ExternError, check_output_shapes

from .common import (
    InputError,
    WeightsFileError,
    canonical_mapping,
    check_ids_values,
    check_inputs,
    check_lengths_values,
    check_mask_values,
    check_weight_keys,
    pad_inputs,
    pad_sequences,
    window_padding,
)

# --------------------------------------------------------------------------
# activations (Keras' definitions)


def _linear(x: jax.Array) -> jax.Array:
    return x


def _softmax(x: jax.Array) -> jax.Array:
    return jax.nn.softmax(x, axis=-1)


def _log_softmax(x: jax.Array) -> jax.Array:
    return jax.nn.log_softmax(x, axis=-1)


def _gelu(x: jax.Array) -> jax.Array:
    # Keras' gelu is the exact one (approximate=False); jax.nn.gelu defaults to tanh's
    return jax.nn.gelu(x, approximate=False)


def _hard_sigmoid(x: jax.Array) -> jax.Array:
    # Keras 3: relu6(x + 3) / 6
    return jnp.clip(x / 6.0 + 0.5, 0.0, 1.0)


def _leaky_relu(x: jax.Array) -> jax.Array:
    # Keras' default negative_slope is 0.2 (jax.nn.leaky_relu's is 0.01)
    return jax.nn.leaky_relu(x, negative_slope=0.2)


def _mish(x: jax.Array) -> jax.Array:
    return x * jnp.tanh(jax.nn.softplus(x))


# --------------------------------------------------------------------------
# inputs, masks and run-time checks


def _compute_dtype(params: Mapping[str, Mapping[str, jax.Array]], *inputs: Any) -> Any:
    """The float dtype of the computation: the weights' (float32, or float64 when
    float64 weights are loaded with jax_enable_x64 on), else the inputs'."""
    for layer in params.values():
        for w in layer.values():
            return w.dtype
    for x in inputs:
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.floating):
            return x.dtype
    return jnp.float32


def _named(arrays: Any, names: Sequence[str], what: str) -> dict[str, Any]:
    """`lengths=` / `masks=`: a dict keyed by input name, or one array for the one masked input."""
    if arrays is None or isinstance(arrays, dict):
        return arrays or {}
    if len(names) != 1:
        raise TypeError(f"{what}= must be a dict keyed by input name ({', '.join(names)})")
    return {names[0]: arrays}


def _lengths_to_mask(lengths: Any, T: int, side: str) -> jax.Array:
    """post: step t of row b is valid iff t < len[b]; pre: iff t >= T - len[b]."""
    steps = jnp.arange(T)[None, :]
    lengths = jnp.asarray(lengths)[:, None]
    return steps < lengths if side == "post" else steps >= T - lengths


def _input_mask(
    name: str, x: jax.Array, side: str, lengths: Mapping[str, Any], masks: Mapping[str, Any]
) -> jax.Array:
    """The mask of a `masked` input: masks[name] (bool [B, T]) or lengths[name] ([B]);
    _check_inputs has checked their shapes and dtypes."""
    if masks.get(name) is not None:
        return jnp.asarray(masks[name], bool)
    if lengths.get(name) is not None:
        if side == "any":
            raise InputError(
                f"input `{name}` declares no pad side, so lengths cannot say which steps "
                f"are valid: pass masks={{{name!r}: ...}}"
            )
        return _lengths_to_mask(jnp.asarray(lengths[name]), x.shape[1], side)
    raise InputError(
        f"input `{name}` is declared `masked`: pass lengths={{{name!r}: ...}} "
        f"or masks={{{name!r}: ...}}"
    )


def _concrete(x: Any) -> np.ndarray:
    """A NumPy copy of x for the debug checks, which need values (no tracers)."""
    try:
        return np.asarray(x)
    except jax.errors.TracerArrayConversionError:
        raise InputError(
            "debug checks need concrete values: run apply(..., debug=True) outside jax.jit "
            "(model.debug = True does)"
        ) from None


def _check_mask(mask: Any, side: str, nonempty: bool, where: str, hint: str) -> None:
    """debug: verify that a mask has its declared kind (check_mask_values)."""
    check_mask_values(_concrete(mask), side, nonempty, where, hint)


def _check_lengths(name: str, x: jax.Array, lengths: Mapping[str, Any], nonempty: bool) -> None:
    """debug: lengths of a `masked` input are in [0, T] ([1, T] when declared nonempty)."""
    if lengths.get(name) is None:
        return
    check_lengths_values(name, _concrete(lengths[name]), x.shape[1], nonempty)


def _check_ids(ids: Any, input_dim: int, where: str) -> None:
    """debug: token ids index the embedding table."""
    check_ids_values(_concrete(ids), input_dim, where)


def _keep(
    dropout_masks: Mapping[str, Any],
    rng: Any,
    key: str,
    index: int,
    shape: Sequence[int],
    rate: float,
    dtype: Any,
) -> jax.Array:
    """A dropout keep-mask, scaled: keep / (1 - rate), where keep (1 keep, 0 drop)
    is dropout_masks[key] when given, else drawn from rng (folded with index)."""
    if key in dropout_masks:
        keep = jnp.asarray(dropout_masks[key], dtype)
        if keep.shape != tuple(shape):
            raise ValueError(
                f"dropout_masks[{key!r}] has shape {keep.shape}, expected {tuple(shape)}"
            )
    elif rng is None:
        raise ValueError(
            f"training with dropout needs rng= (a jax.random key) or dropout_masks={{{key!r}: ...}}"
        )
    else:
        keep = jax.random.bernoulli(jax.random.fold_in(rng, index), 1.0 - rate, shape).astype(dtype)
    return keep / (1.0 - rate)


def _spatial_dropout_1d(
    x: jax.Array,
    dropout_masks: Mapping[str, Any],
    rng: Any,
    key: str,
    index: int,
    rate: float,
    dtype: Any,
) -> jax.Array:
    """Keras' SpatialDropout1D in training: x [B, T, F] times one keep-mask [B, 1, F]
    for every step of a row (whole channels dropped), scaled by 1 / (1 - rate)."""
    return x * _keep(dropout_masks, rng, key, index, (x.shape[0], 1, x.shape[2]), rate, dtype)


def _check_extern(
    layer: str,
    declaration: str,
    outputs: Sequence[Any],
    declared: Any,
    returned: Any,
    expected: Sequence[Any],
) -> None:
    """debug: an extern layer against its declaration. The number, dtypes and
    shapes of its outputs are static (checked at trace time, so also under
    jax.jit); a mask the implementation returns is compared with the masks the
    declared contract gives (concrete values)."""
    got = [(str(jnp.asarray(o).dtype), tuple(jnp.shape(o))) for o in outputs]
    check_output_shapes(layer, declared, got, declaration)
    if returned is None:
        return
    masks = tuple(returned) if isinstance(returned, (tuple, list)) else (returned,) * len(expected)
    if len(masks) != len(expected):
        raise ExternError(
            f"extern layer {layer} returned {len(masks)} masks for {len(expected)} outputs "
            f"(declaration: {declaration})"
        )
    for i, (m, want) in enumerate(zip(masks, expected, strict=True)):
        if m is None and want is None:
            continue
        if m is None or want is None:
            raise ExternError(
                f"extern layer {layer}: output {i + 1} has "
                + ("no mask" if m is None else "a mask")
                + f" from the implementation, but its declaration ({declaration}) gives "
                + ("one" if m is None else "none")
            )
        m, want = _concrete(m).astype(bool), _concrete(want)
        if m.shape != want.shape or (m != want).any():
            rows = (
                np.nonzero((m != want).any(axis=tuple(range(1, m.ndim))))[0]
                if m.shape == want.shape
                else None
            )
            raise ExternError(
                f"extern layer {layer}: the mask it returned for output {i + 1} "
                + (f"has shape {m.shape}, " if rows is None else f"differs in row {int(rows[0])}, ")
                + f"but its declaration ({declaration}) gives "
                + (f"shape {want.shape}" if rows is None else "another mask")
            )


# --------------------------------------------------------------------------
# per-step layers


def _rows(x: jax.Array, ndim: int) -> Any:
    """Under explicit sharding (a mesh of jax.sharding.AxisType.Explicit axes, as
    jax.make_mesh makes), the sharding of an array of ndim axes split by row as
    x's batch is; None otherwise (no mesh, or Auto axes: types carry no sharding)."""
    sharding = jax.typeof(x).sharding
    spec = sharding.spec
    if not len(spec) or spec[0] is None:
        return None
    rows = jax.sharding.PartitionSpec(spec[0], *([None] * (ndim - 1)))
    return jax.sharding.NamedSharding(sharding.mesh, rows)


def _like_rows(states: Sequence[jax.Array], x: jax.Array) -> tuple[jax.Array, ...]:
    """Recurrent states [B, ...] split by row as x is (explicit sharding: a scan's
    carry must keep its sharding, and the steps make it x's); else unchanged."""
    if _rows(x, 1) is None:
        return tuple(states)
    return tuple(jax.sharding.reshard(s, _rows(x, s.ndim)) for s in states)


def _all_valid(x: jax.Array) -> jax.Array:
    """The mask of x [B, T, ...] with every step valid, bool [B, T] (split by row
    as x is, under explicit sharding)."""
    return jnp.ones(x.shape[:2], bool, out_sharding=_rows(x, 2))


def _embedding(p: Mapping[str, jax.Array], ids: jax.Array) -> jax.Array:
    # the vector of id 0 is not zeroed (as Keras): the mask, not the value, marks padding
    sharding = jax.typeof(ids).sharding
    if any(a is not None for a in sharding.spec):  # explicit sharding: split as the ids
        out = jax.sharding.NamedSharding(
            sharding.mesh, jax.sharding.PartitionSpec(*sharding.spec, None)
        )
        return p["embeddings"].at[ids].get(out_sharding=out, mode="fill", fill_value=jnp.nan)
    # an id out of range (negative ones included) reads a row of NaN, not another row;
    # debug mode names it (_check_ids)
    ids = jnp.where(ids < 0, p["embeddings"].shape[0], ids)
    return jnp.take(p["embeddings"], ids, axis=0, mode="fill", fill_value=jnp.nan)


def _masking(x: jax.Array, mask_value: float) -> tuple[jax.Array, jax.Array]:
    """Masking: a step is masked when all its features equal mask_value (NaN never
    does); masked steps are zeroed. Replaces any incoming mask."""
    mask = jnp.any(x != mask_value, axis=-1)
    return x * mask[..., None].astype(x.dtype), mask


def _dense(
    p: Mapping[str, jax.Array], x: jax.Array, activation: Callable[[jax.Array], jax.Array]
) -> jax.Array:
    y = x @ p["kernel"]
    if "bias" in p:
        y = y + p["bias"]
    return activation(y)


def _layer_norm(p: Mapping[str, jax.Array], x: jax.Array, epsilon: float) -> jax.Array:
    """LayerNormalization over the features of each step (masked steps computed too)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * lax.rsqrt(var + epsilon)
    if "gamma" in p:
        y = y * p["gamma"]
    if "beta" in p:
        y = y + p["beta"]
    return y


def _batch_norm(
    p: Mapping[str, jax.Array],
    s: Mapping[str, jax.Array],
    x: jax.Array,
    mask: jax.Array | None,
    training: bool,
    momentum: float,
    epsilon: float,
) -> tuple[jax.Array, Mapping[str, jax.Array]]:
    """BatchNormalization over the last axis; returns (y, new moving statistics).

    Inference normalises with the moving statistics. Training uses the batch's
    moments over the valid steps only (all steps when there is no mask;
    population variance) and updates the moving statistics Keras' way:
    moving = momentum * moving + (1 - momentum) * batch.
    """
    if training:
        axes = tuple(range(x.ndim - 1))
        if mask is None:
            w = jnp.ones(x.shape[:-1] + (1,), x.dtype)
        else:
            w = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)).astype(x.dtype)
            w = jnp.broadcast_to(w, x.shape[:-1] + (1,))
        count = jnp.maximum(jnp.sum(w, axis=axes), 1.0)
        mean = jnp.sum(w * x, axis=axes) / count
        var = jnp.sum(w * jnp.square(x - mean), axis=axes) / count
        s = {
            "moving_mean": momentum * s["moving_mean"] + (1.0 - momentum) * mean,
            "moving_variance": momentum * s["moving_variance"] + (1.0 - momentum) * var,
        }
    else:
        mean, var = s["moving_mean"], s["moving_variance"]
    y = (x - mean) * lax.rsqrt(var + epsilon)
    if "gamma" in p:
        y = y * p["gamma"]
    if "beta" in p:
        y = y + p["beta"]
    return y, s


def _extern(
    impl: Any, inputs: Sequence[Any], mask: Any, weights: Any, config: Any, training: bool
) -> tuple[tuple[Any, ...], Any]:
    """Call an extern layer's implementation. Returns (its outputs as a tuple, the
    mask it returned or None); the layer's output masks come from its
    declaration, a returned mask is only compared with them (debug)."""
    out = impl.fn(*inputs, mask=mask, weights=weights, config=config, training=training)
    returned = None
    if impl.returns_mask:
        out, returned = out
    return (tuple(out) if isinstance(out, (tuple, list)) else (out,)), returned


# --------------------------------------------------------------------------
# time-changing layers (windows use the mask: docs/semantics.md section 3)


def _first_steps(x: jax.Array, steps: Any) -> jax.Array:
    """x[:, :steps]: the first `steps` steps of a window layer's result. Nothing to
    cut when x has them already. A symbolic size (jax.export) is floored at 0 as
    XLA's window shapes are (max((t - 5) // 2 + 1, 0)): then the comparison can
    be decided, where a slice to (t - 5) // 2 + 1 could not (not provably >= 0)."""
    if not isinstance(steps, int):
        steps = jax.core.max_dim(steps, 0)
    return x if x.shape[1] == steps else x[:, :steps]


def _window_mask(
    mask: jax.Array, size: int, stride: int, dilation: int, padding: str, out: int
) -> jax.Array:
    """Output mask of a window layer. valid: step j is valid iff every input step
    its window reads is valid; same/causal: iff its anchor input step j * stride is.
    For post/pre masks this maps each row's length L to max(0, (L - k_eff) // s + 1)
    (valid) or ceil(L / s) (same, causal), keeping the side."""
    if padding != "valid":
        return _first_steps(mask[:, ::stride], out)
    invalid = (~mask).astype(jnp.int32)
    bad = lax.reduce_window(
        invalid, 0, lax.add, (1, size), (1, stride), "VALID", window_dilation=(1, dilation)
    )
    return _first_steps(bad, out) == 0


def _conv1d(
    p: Mapping[str, jax.Array],
    x: jax.Array,
    mask: jax.Array | None,
    kernel_size: int,
    strides: int,
    dilation: int,
    padding: str,
    activation: Callable[[jax.Array], jax.Array],
) -> tuple[jax.Array, jax.Array | None]:
    """Conv1D (Keras layout: kernel [k, F, filters]). Masked input steps are zeroed
    first, so padding never leaks into a valid window; returns (y, output mask)."""
    if mask is not None:
        x = jnp.where(mask[..., None], x, 0.0)
    k_eff = dilation * (kernel_size - 1) + 1
    before, after, out = window_padding(x.shape[1], k_eff, strides, padding)
    y = lax.conv_general_dilated(
        x,
        p["kernel"],
        window_strides=(strides,),
        padding=[(before, after)],
        rhs_dilation=(dilation,),
        dimension_numbers=("NWC", "WIO", "NWC"),
    )
    y = _first_steps(y, out)
    if "bias" in p:
        y = y + p["bias"]
    y = activation(y)
    if mask is None:
        return y, None
    return y, _window_mask(mask, kernel_size, strides, dilation, padding, out)


def _pool(
    x: jax.Array, mask: jax.Array | None, kind: str, pool_size: int, strides: int, padding: str
) -> tuple[jax.Array, jax.Array | None]:
    """MaxPooling1D / AveragePooling1D over the valid steps of each window (0 when
    a window has none; same-padding zeros are not steps). Returns (y, output mask)."""
    before, after, out = window_padding(x.shape[1], pool_size, strides, padding)
    valid = _all_valid(x) if mask is None else mask
    v = valid[..., None]
    dims, steps, pads = (1, pool_size, 1), (1, strides, 1), ((0, 0), (before, after), (0, 0))
    count = lax.reduce_window(v.astype(x.dtype), 0.0, lax.add, dims, steps, pads)
    if kind == "max":
        vals = lax.reduce_window(jnp.where(v, x, -jnp.inf), -jnp.inf, lax.max, dims, steps, pads)
    else:
        total = lax.reduce_window(jnp.where(v, x, 0.0), 0.0, lax.add, dims, steps, pads)
        vals = total / jnp.maximum(count, 1.0)
    y = _first_steps(jnp.where(count > 0, vals, 0.0), out)
    if mask is None:
        return y, None
    return y, _window_mask(mask, pool_size, strides, 1, padding, out)


def _global_pool(x: jax.Array, mask: jax.Array | None, kind: str, keepdims: bool) -> jax.Array:
    """GlobalMax/AveragePooling1D over the valid steps; 0 for a row with none."""
    valid = _all_valid(x) if mask is None else mask
    v = valid[..., None]
    if kind == "max":
        y = jnp.max(jnp.where(v, x, -jnp.inf), axis=1)
        y = jnp.where(jnp.any(valid, axis=1)[:, None], y, 0.0)
    else:
        count = jnp.sum(valid, axis=1).astype(x.dtype)[:, None]
        y = jnp.sum(jnp.where(v, x, 0.0), axis=1) / jnp.maximum(count, 1.0)
    return y[:, None, :] if keepdims else y


def _temporal_softmax(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Per feature, a softmax over the valid steps of each row (max-subtracted);
    0 at masked steps and for a row with no valid step."""
    v = mask[..., None]
    top = jnp.max(jnp.where(v, x, -jnp.inf), axis=1, keepdims=True)
    top = jnp.where(jnp.any(mask, axis=1)[:, None, None], top, 0.0)
    e = jnp.where(v, jnp.exp(x - top), 0.0)
    total = jnp.sum(e, axis=1, keepdims=True)
    return jnp.where(total > 0, e / jnp.where(total > 0, total, 1.0), 0.0)


# --------------------------------------------------------------------------
# recurrent layers: lax.scan, or the fused cuDNN LSTM on CUDA


class _RNN(NamedTuple):
    """What a recurrent layer gives: its output sequence (None without
    return_sequences), its last output (the output at the last valid step, 0 for
    a row with none) and its final states ((h, c) for LSTM, (h,) otherwise)."""

    sequence: Any
    last: Any
    states: tuple


def _zero_states(x: jax.Array, units: int, n: int) -> tuple[jax.Array, ...]:
    return tuple(jnp.zeros((x.shape[0], units), x.dtype) for _ in range(n))


def _flip_time(x: Any) -> Any:
    return None if x is None else jnp.flip(x, axis=1)


def _go_backwards(
    x: jax.Array, mask: jax.Array | None, side: str
) -> tuple[Any, jax.Array | None, str]:
    """go_backwards on the fused kernel: the layer reads the steps in reverse order
    (Keras), so it runs on the flipped sequence and mask; its outputs stay in that
    reversed order. A flipped post mask is a pre mask and vice versa."""
    side = {"post": "pre", "pre": "post"}.get(side, side)
    return _flip_time(x), _flip_time(mask), side


def _check_steps(steps: Any) -> None:
    """A symbolic number of steps (jax.export) must be provably >= 1: lax.scan
    cannot loop over a length that may be 0. Window layers make such lengths
    (max((t - 5) // 2 + 1, 0)); a lower bound on the time symbol settles it."""
    if isinstance(steps, int):
        return
    try:
        if steps >= 1:
            return
    except jax.errors.InconclusiveDimensionOperation:
        pass
    raise ValueError(
        f"a recurrent layer runs over {steps} steps, which may be 0 for some values of the "
        f"symbolic sizes: give jax.export a lower bound on the time symbol that makes it at "
        f'least 1, e.g. jax.export.symbolic_shape("b, t", constraints=("t >= 9",))'
    )


def _scan(
    step: Callable[[jax.Array, tuple[jax.Array, ...]], tuple[jax.Array, ...]],
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    states: tuple[jax.Array, ...],
    return_sequences: bool,
    masked_output: str,
    go_backwards: bool,
) -> _RNN:
    """Runs a cell over time with lax.scan: one compiled loop body, whatever T.

    x: the layer's inputs [B, T, F]. The state-independent part of the cell, the
    projection x @ kernel (+ bias), is done inside the loop body step by step or
    for every step at once before the loop (_hoist_projection says which).
    step(xw_t, states) -> new states; every cell's output is its first state, h.
    The mask is handled in the loop body, exactly for every mask kind (post, pre,
    gaps, empty rows): at a masked step every state keeps its value, where(mask,
    new, old), so the final states equal running the valid steps alone. The
    output at a masked step is 0 (masked_output="zero") or the last valid output,
    0 before the first ("carry"); the last output is h at the last valid step, 0
    for a row with none. go_backwards reads the steps in reverse order (a reverse
    scan) and returns the outputs in that order, as Keras does.
    """
    _check_steps(x.shape[1])
    xs = jnp.swapaxes(x, 0, 1)  # [T, B, F]: scan runs over the leading axis
    hoist = _hoist_projection(x, kernel)
    if hoist:
        xs = _project(xs, kernel, bias)

    def body(states, inputs):
        x_t, m_t = inputs
        new = step(x_t if hoist else _project(x_t, kernel, bias), states)
        if m_t is not None:
            keep = m_t[:, None]
            new = tuple(jnp.where(keep, n, s) for n, s in zip(new, states, strict=True))
        return new, (new[0] if return_sequences else None)

    m = None if mask is None else mask.T
    states = _like_rows(states, x)
    states, hs = lax.scan(body, states, (xs, m), reverse=go_backwards)
    last = states[0]
    if mask is not None:  # h keeps its last valid value, or its initial one in an empty row
        last = jnp.where(jnp.any(mask, axis=1)[:, None], last, 0.0)
        if return_sequences:
            assert m is not None
            if masked_output == "carry":  # from the first valid step on, in reading order
                m = jnp.cumsum(m[::-1], axis=0)[::-1] if go_backwards else jnp.cumsum(m, axis=0)
                m = m > 0
            hs = jnp.where(m[:, :, None], hs, 0.0)
    sequence = None if hs is None else jnp.swapaxes(hs, 0, 1)
    return _RNN(_flip_time(sequence) if go_backwards else sequence, last, states)


def _project(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """x @ kernel (+ bias): the part of a cell that does not depend on the state."""
    xw = x @ kernel
    return xw if bias is None else xw + bias


def _hoist_projection(x: jax.Array, kernel: jax.Array) -> bool:
    """Whether _scan computes x @ kernel for every step at once, before the loop (one
    large matmul), rather than step by step in its body. Measured per layer on XLA's
    CPU backend (docs/benchmarks.md): in the body, as Keras 3 does, is the faster
    for most shapes, but not for a batch of one row, nor for a kernel of 2**20
    entries or more, nor, in batches under 64 rows, for F >= 256 features into at
    most 2F gates. On GPUs (not measured here) one large matmul is the usual choice.

    A symbolic batch (jax.export with shapes like symbolic_shape("b, t")) is
    decided by what its constraints prove (b == 1, b < 64); where they prove
    nothing, the batch is taken as one of 64 rows or more (the default for a
    served batch): the projection goes in the body unless the kernel is large.
    Both choices compute the same numbers."""
    if jax.default_backend() != "cpu":
        return True
    batch, (features, gates) = x.shape[0], kernel.shape
    if batch == 1 or features * gates >= 2**20:
        return True
    if not (features >= 256 and gates <= 2 * features):
        return False
    try:
        return bool(batch < 64)
    except jax.errors.InconclusiveDimensionOperation:  # a symbolic batch: the default
        return False


def _lstm_step(
    recurrent_kernel: jax.Array,
    activation: Callable[[jax.Array], jax.Array],
    recurrent_activation: Callable[[jax.Array], jax.Array],
    recurrent_keep: jax.Array | None,
) -> Callable[[jax.Array, tuple[jax.Array, ...]], tuple[jax.Array, ...]]:
    """Keras' LSTM cell on a precomputed input projection; gates i, f, c, o."""

    def step(xw_t, states):
        h, c = states
        if recurrent_keep is not None:  # recurrent dropout acts on the matmul input only
            h = h * recurrent_keep
        z = xw_t + h @ recurrent_kernel
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = recurrent_activation(f) * c + recurrent_activation(i) * activation(g)
        h = recurrent_activation(o) * activation(c)
        return h, c

    return step


def _lstm(
    p: Mapping[str, jax.Array],
    x: jax.Array,
    mask: jax.Array | None,
    states: tuple[jax.Array, ...],
    *,
    activation: Callable[[jax.Array], jax.Array] = jnp.tanh,
    recurrent_activation: Callable[[jax.Array], jax.Array] = jax.nn.sigmoid,
    go_backwards: bool = False,
    return_sequences: bool = False,
    masked_output: str = "zero",
    input_keep: jax.Array | None = None,
    recurrent_keep: jax.Array | None = None,
    fused: str | None = None,
) -> _RNN:
    """An LSTM layer (Keras' LSTM and RNN(LSTMCell)); returns _RNN.

    fused: the static mask side ("post", "pre" or "any") when the layer may run
    on the fused kernel (_lstm_fused, CUDA only), None when it always scans."""
    if input_keep is not None:  # input dropout: one keep-mask per sequence, every gate
        x = x * input_keep[:, None, :]
    if fused is not None and _use_fused_lstm(x):
        if go_backwards:
            x, mask, fused = _go_backwards(x, mask, fused)
        seqs, lasts, finals = _lstm_fused(
            [p], x, mask, fused, [states], return_sequences, masked_output
        )
        return _RNN(seqs[0], lasts[0], finals[0])
    step = _lstm_step(p["recurrent_kernel"], activation, recurrent_activation, recurrent_keep)
    kernel, bias = p["kernel"], p.get("bias")
    return _scan(step, x, kernel, bias, mask, states, return_sequences, masked_output, go_backwards)


def _gru_step(
    recurrent_kernel: jax.Array,
    recurrent_bias: jax.Array | None,
    activation: Callable[[jax.Array], jax.Array],
    recurrent_activation: Callable[[jax.Array], jax.Array],
    recurrent_keep: jax.Array | None,
) -> Callable[[jax.Array, tuple[jax.Array, ...]], tuple[jax.Array, ...]]:
    """Keras' GRU cell with reset_after=true (gates z, r, h): the reset gate
    multiplies the recurrent projection, which has its own bias."""

    def step(xw_t, states):
        (h,) = states
        hr = h if recurrent_keep is None else h * recurrent_keep
        inner = hr @ recurrent_kernel
        if recurrent_bias is not None:
            inner = inner + recurrent_bias
        x_z, x_r, x_h = jnp.split(xw_t, 3, axis=-1)
        r_z, r_r, r_h = jnp.split(inner, 3, axis=-1)
        z = recurrent_activation(x_z + r_z)
        r = recurrent_activation(x_r + r_r)
        candidate = activation(x_h + r * r_h)
        return (z * h + (1.0 - z) * candidate,)

    return step


def _gru_v1_step(
    recurrent_kernel: jax.Array,
    activation: Callable[[jax.Array], jax.Array],
    recurrent_activation: Callable[[jax.Array], jax.Array],
    recurrent_keep: jax.Array | None,
) -> Callable[[jax.Array, tuple[jax.Array, ...]], tuple[jax.Array, ...]]:
    """Keras' GRU cell with reset_after=false (gates z, r, h): the reset gate
    multiplies the state before its projection; one bias, on the inputs."""
    units = recurrent_kernel.shape[0]

    def step(xw_t, states):
        (h,) = states
        hr = h if recurrent_keep is None else h * recurrent_keep
        x_z, x_r, x_h = jnp.split(xw_t, 3, axis=-1)
        r_z, r_r = jnp.split(hr @ recurrent_kernel[:, : 2 * units], 2, axis=-1)
        z = recurrent_activation(x_z + r_z)
        r = recurrent_activation(x_r + r_r)
        candidate = activation(x_h + (r * hr) @ recurrent_kernel[:, 2 * units :])
        return (z * h + (1.0 - z) * candidate,)

    return step


def _gru(
    p: Mapping[str, jax.Array],
    x: jax.Array,
    mask: jax.Array | None,
    states: tuple[jax.Array, ...],
    *,
    activation: Callable[[jax.Array], jax.Array] = jnp.tanh,
    recurrent_activation: Callable[[jax.Array], jax.Array] = jax.nn.sigmoid,
    reset_after: bool = True,
    go_backwards: bool = False,
    return_sequences: bool = False,
    masked_output: str = "zero",
    input_keep: jax.Array | None = None,
    recurrent_keep: jax.Array | None = None,
) -> _RNN:
    """A GRU layer (Keras' GRU and RNN(GRUCell)); always lax.scan: JAX has no fused GRU."""
    if input_keep is not None:  # input dropout: one keep-mask per sequence, every gate
        x = x * input_keep[:, None, :]
    bias = p.get("bias")
    if reset_after:  # bias [2, 3U]: rows input, recurrent
        step = _gru_step(
            p["recurrent_kernel"],
            None if bias is None else bias[1],
            activation,
            recurrent_activation,
            recurrent_keep,
        )
        bias = None if bias is None else bias[0]
    else:
        step = _gru_v1_step(p["recurrent_kernel"], activation, recurrent_activation, recurrent_keep)
    kernel = p["kernel"]
    return _scan(step, x, kernel, bias, mask, states, return_sequences, masked_output, go_backwards)


def _simple_rnn(
    p: Mapping[str, jax.Array],
    x: jax.Array,
    mask: jax.Array | None,
    states: tuple[jax.Array, ...],
    *,
    activation: Callable[[jax.Array], jax.Array] = jnp.tanh,
    go_backwards: bool = False,
    return_sequences: bool = False,
    masked_output: str = "zero",
    input_keep: jax.Array | None = None,
    recurrent_keep: jax.Array | None = None,
) -> _RNN:
    """A SimpleRNN layer (Keras' SimpleRNN and RNN(SimpleRNNCell)): h = act(x W + h R + b)."""
    if input_keep is not None:
        x = x * input_keep[:, None, :]
    recurrent_kernel = p["recurrent_kernel"]

    def step(xw_t, states):
        (h,) = states
        if recurrent_keep is not None:
            h = h * recurrent_keep
        return (activation(xw_t + h @ recurrent_kernel),)

    kernel, bias = p["kernel"], p.get("bias")
    return _scan(step, x, kernel, bias, mask, states, return_sequences, masked_output, go_backwards)


def _merge_directions(a: Any, b: Any, merge_mode: str) -> Any:
    if merge_mode == "concat":
        return jnp.concatenate([a, b], axis=-1)
    if merge_mode == "sum":
        return a + b
    if merge_mode == "mul":
        return a * b
    if merge_mode == "ave":
        return (a + b) / 2.0
    return a, b  # merge_mode="none": two outputs


def _directions(p: Mapping[str, jax.Array]) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """A Bidirectional layer's weights, split into forward and backward."""
    fw = {k[len("forward/") :]: v for k, v in p.items() if k.startswith("forward/")}
    bw = {k[len("backward/") :]: v for k, v in p.items() if k.startswith("backward/")}
    return fw, bw


def _merged(
    seqs: Sequence[Any],
    lasts: Sequence[Any],
    finals: Sequence[Any],
    merge_mode: str,
    return_sequences: bool,
) -> _RNN:
    sequence = _merge_directions(seqs[0], seqs[1], merge_mode) if return_sequences else None
    return _RNN(
        sequence,
        _merge_directions(lasts[0], lasts[1], merge_mode),
        tuple(finals[0]) + tuple(finals[1]),
    )


def _bidirectional(
    layer: Callable[..., _RNN],
    p: Mapping[str, jax.Array],
    x: jax.Array,
    mask: jax.Array | None,
    states_fw: tuple[jax.Array, ...],
    states_bw: tuple[jax.Array, ...],
    *,
    merge_mode: str,
    return_sequences: bool,
    input_keeps: tuple[jax.Array | None, jax.Array | None] = (None, None),
    recurrent_keeps: tuple[jax.Array | None, jax.Array | None] = (None, None),
    backward: Mapping[str, Any] | None = None,
    **cell: Any,
) -> _RNN:
    """Bidirectional: the forward layer on x; the backward layer reads the valid
    steps in reverse (go_backwards) and its outputs are flipped back to input
    order; merged by merge_mode. Outputs at masked steps are 0 in both halves.
    States: forward then backward. backward: the backward layer's own cell options
    (Keras' backward_layer) in place of `cell`'s (the kernel choice, fused, is shared)."""
    fw_p, bw_p = _directions(p)
    bw_cell = cell
    if backward is not None:
        bw_cell = {**{k: v for k, v in cell.items() if k == "fused"}, **backward}
    fw = layer(
        fw_p,
        x,
        mask,
        states_fw,
        return_sequences=return_sequences,
        input_keep=input_keeps[0],
        recurrent_keep=recurrent_keeps[0],
        **cell,
    )
    bw = layer(
        bw_p,
        x,
        mask,
        states_bw,
        go_backwards=True,
        return_sequences=return_sequences,
        input_keep=input_keeps[1],
        recurrent_keep=recurrent_keeps[1],
        **bw_cell,
    )
    seqs = (fw.sequence, _flip_time(bw.sequence))
    return _merged(seqs, (fw.last, bw.last), (fw.states, bw.states), merge_mode, return_sequences)


def _bidirectional_lstm(
    p: Mapping[str, jax.Array],
    x: jax.Array,
    mask: jax.Array | None,
    states_fw: tuple[jax.Array, ...],
    states_bw: tuple[jax.Array, ...],
    *,
    merge_mode: str,
    return_sequences: bool,
    input_keeps: tuple[jax.Array | None, jax.Array | None] = (None, None),
    fused: str | None = None,
    **cell: Any,
) -> _RNN:
    """Bidirectional(LSTM): on the fused kernel both directions run in one call
    (the kernel reverses each row within its length), unless the directions
    have different input dropout masks; otherwise _bidirectional."""
    if (
        fused is not None
        and input_keeps[0] is None
        and input_keeps[1] is None
        and _use_fused_lstm(x)
    ):
        seqs, lasts, finals = _lstm_fused(
            list(_directions(p)), x, mask, fused, [states_fw, states_bw], return_sequences, "zero"
        )
        return _merged(seqs, lasts, finals, merge_mode, return_sequences)
    return _bidirectional(
        _lstm,
        p,
        x,
        mask,
        states_fw,
        states_bw,
        merge_mode=merge_mode,
        return_sequences=return_sequences,
        input_keeps=input_keeps,
        fused=fused,
        **cell,
    )


#: "auto": the fused kernel (cuDNN, jax.experimental.rnn.lstm) for float32 on a
#: CUDA GPU, lax.scan elsewhere; "always" / "never" force the choice. Read when an
#: LSTM is traced (by _use_fused_lstm): setting it here acts on every generated
#: module that imports from this one.
FUSED_LSTM = "auto"


def _cudnn_lstm(
    x: jax.Array,
    h0: jax.Array,
    c0: jax.Array,
    weights: jax.Array,
    seq_lengths: jax.Array,
    input_size: int,
    hidden_size: int,
    bidirectional: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    return jax.experimental.rnn.lstm(
        x,
        h0,
        c0,
        weights,
        seq_lengths,
        input_size=input_size,
        hidden_size=hidden_size,
        num_layers=1,
        dropout=0.0,
        bidirectional=bidirectional,
    )


#: The fused kernel (same signature as _cudnn_lstm), called through this global.
#: jax.experimental.rnn.lstm raises on CPU; tests put an adapter around
#: jax.experimental.rnn.lstm_ref here (with FUSED_LSTM = "always", both set with
#: pytest's monkeypatch) to check this code path anywhere.
_fused_lstm = _cudnn_lstm


def _use_fused_lstm(x: jax.Array) -> bool:
    """Whether an LSTM runs on the fused kernel (FUSED_LSTM). "auto" keeps lax.scan
    for symbolic shapes (jax.export): the cuDNN kernel sizes its workspace from
    concrete ones, and its custom call is not one jax.export may serialize."""
    if FUSED_LSTM == "auto":
        return (
            x.dtype == jnp.float32
            and all(isinstance(d, int) for d in x.shape)
            and jax.default_backend() == "gpu"
            and "rocm" not in str(getattr(jax.devices()[0].client, "platform_version", "")).lower()
        )
    return FUSED_LSTM == "always"


def _roll_rows(x: jax.Array, shift: jax.Array) -> jax.Array:
    """Roll each row b of x [B, T, ...] in time by shift[b] steps (to the right)."""
    T = x.shape[1]
    index = (jnp.arange(T)[None, :] - shift[:, None]) % T
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def _cudnn_weights(ps: Sequence[Mapping[str, jax.Array]]) -> jax.Array:
    """jax.experimental.rnn's flat weight vector: every W_ih [4U, F] and W_hh
    [4U, U] first (forward, then backward; row-major), then every bias pair
    b_ih, b_hh. Its gates i, f, g, o are Keras' i, f, c, o; Keras has one bias,
    so b_hh = 0."""
    mats, biases = [], []
    for p in ps:
        zeros = jnp.zeros(p["recurrent_kernel"].shape[1], p["recurrent_kernel"].dtype)
        mats += [p["kernel"].T.ravel(), p["recurrent_kernel"].T.ravel()]
        biases += [p.get("bias", zeros), zeros]
    return jnp.concatenate(mats + biases)


def _lstm_fused(
    ps: Sequence[Mapping[str, jax.Array]],
    x: jax.Array,
    mask: jax.Array | None,
    side: str,
    states: Sequence[tuple[jax.Array, ...]],
    return_sequences: bool,
    masked_output: str,
) -> tuple[list[Any], list[jax.Array], list[tuple[jax.Array, jax.Array]]]:
    """LSTM on the fused kernel, which takes right-padded rows and their lengths.

    Every mask kind is brought to that layout and back, exactly:
      post  rows as they are;
      pre   each row rolled left by its padding; outputs rolled back;
      any   the valid steps compacted to the front (stable argsort of ~mask);
            outputs gathered back with k = cumsum(mask): out[t] = y_c[k[t] - 1];
      empty rows  the kernel needs length >= 1: they run one step, then their
            outputs and states are restored (0 and the initial state).
    ps / states: per direction (one, or forward and backward). Returns per
    direction lists of sequences, last outputs and final (h, c).
    """
    B, T, F = x.shape
    U = ps[0]["recurrent_kernel"].shape[0]
    n_dir = len(ps)
    if mask is None:
        lengths = jnp.full((B,), T, jnp.int32)
        xc = x
    else:
        lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)
        if side == "post":
            xc = x
        elif side == "pre":
            xc = _roll_rows(x, lengths - T)
        else:
            order = jnp.argsort(~mask, axis=1, stable=True)
            xc = jnp.take_along_axis(x, order[:, :, None], axis=1)
    h0 = jnp.stack([s[0] for s in states])
    c0 = jnp.stack([s[1] for s in states])
    y, h_n, c_n = _fused_lstm(
        xc,
        h0,
        c0,
        _cudnn_weights(ps),
        jnp.maximum(lengths, 1),
        input_size=F,
        hidden_size=U,
        bidirectional=n_dir == 2,
    )
    empty = (lengths == 0)[:, None]
    finals = [
        (jnp.where(empty, h0[d], h_n[d]), jnp.where(empty, c0[d], c_n[d])) for d in range(n_dir)
    ]
    lasts = [jnp.where(empty, 0.0, h_n[d]) for d in range(n_dir)]
    if not return_sequences:
        return [None] * n_dir, lasts, finals
    y = jnp.where(empty[:, :, None], 0.0, y)  # an empty row's one clamped step
    if mask is None or (side == "post" and masked_output == "zero"):
        seq = y  # the kernel writes 0 past each row's length
    elif side == "pre" and masked_output == "zero":
        seq = _roll_rows(y, T - lengths)
    else:
        k = jnp.cumsum(mask, axis=1)
        seq = jnp.take_along_axis(y, jnp.maximum(k - 1, 0)[:, :, None], axis=1)
        valid = mask if masked_output == "zero" else k > 0
        seq = jnp.where(valid[:, :, None], seq, 0.0)
    return jnp.split(seq, n_dir, axis=-1), lasts, finals


def _cell_states(x: jax.Array, shapes: Sequence[tuple[int, ...]]) -> tuple[jax.Array, ...]:
    return tuple(jnp.zeros((x.shape[0], *shape), x.dtype) for shape in shapes)


def _valid_where(m_t: jax.Array, new: Any, old: Any) -> jax.Array:
    """where(mask, new, old) for a per-step value of any rank (mask [B])."""
    return jnp.where(m_t.reshape(m_t.shape + (1,) * (jnp.ndim(new) - 1)), new, old)


def _cell_rnn(
    step: Callable[..., Any],
    p: Mapping[str, jax.Array],
    xs: Sequence[jax.Array],
    mask: jax.Array | None,
    states: tuple[jax.Array, ...],
    outputs: Sequence[tuple[int, ...]],
    *,
    go_backwards: bool = False,
    return_sequences: bool = False,
    masked_output: str = "zero",
) -> _RNN:
    """A cell block over time with lax.scan: one compiled loop body, whatever T.

    step(p, inputs_t, states) -> (outputs, new states), all tuples; xs: the input
    sequences [B, T, ...]; outputs: the output shapes (without the batch). The
    mask is handled in the loop body, exactly for every mask kind (post, pre,
    gaps, empty rows), as for the built-in layers (_scan): at a masked step every
    state keeps its value, the outputs there are 0 (masked_output="zero") or the
    last valid ones ("carry"); `last` holds the outputs of the last valid step (0
    for a row with none). go_backwards: the flipped sequences and mask (outputs
    stay in that reversed order). Returns _RNN with tuples of outputs.
    """
    _check_steps(xs[0].shape[1])
    if go_backwards:
        xs, mask = tuple(_flip_time(x) for x in xs), _flip_time(mask)
    last = tuple(jnp.zeros((xs[0].shape[0], *shape), xs[0].dtype) for shape in outputs)
    states, last = _like_rows(states, xs[0]), _like_rows(last, xs[0])
    seqs = tuple(jnp.swapaxes(x, 0, 1) for x in xs)  # [T, B, ...]: scan runs over time
    if mask is None:

        def body(carry, x_t):
            ys, new = step(p, x_t, carry[0])
            return (new, ys), (ys if return_sequences else None)

        (states, last), ys = lax.scan(body, (tuple(states), last), seqs)
    else:

        def body(carry, inputs):
            states, last = carry
            x_t, m_t = inputs
            ys, new = step(p, x_t, states)
            states = tuple(_valid_where(m_t, n, s) for n, s in zip(new, states, strict=True))
            last = tuple(_valid_where(m_t, y, prev) for y, prev in zip(ys, last, strict=True))
            out = None
            if return_sequences:
                out = last  # masked_output="carry"
                if masked_output == "zero":
                    out = tuple(_valid_where(m_t, y, 0.0) for y in ys)
            return (states, last), out

        (states, last), ys = lax.scan(body, (tuple(states), last), (seqs, mask.T))
    sequence = None if ys is None else tuple(jnp.swapaxes(y, 0, 1) for y in ys)
    return _RNN(sequence, last, states)


def _cell_bidirectional(
    step: Callable[..., Any],
    p: Mapping[str, jax.Array],
    xs: Sequence[jax.Array],
    mask: jax.Array | None,
    states_fw: tuple[jax.Array, ...],
    states_bw: tuple[jax.Array, ...],
    outputs: Sequence[tuple[int, ...]],
    *,
    merge_mode: str,
    return_sequences: bool,
) -> _RNN:
    """Bidirectional(RNN(cell)) for a cell with one output [n]: the forward run on
    xs; the backward run reads the valid steps in reverse (go_backwards) and its
    outputs are flipped back to input order; merged by merge_mode (two arrays for
    "none"). States: forward then backward."""
    fw_p = {k[len("forward/") :]: v for k, v in p.items() if k.startswith("forward/")}
    bw_p = {k[len("backward/") :]: v for k, v in p.items() if k.startswith("backward/")}
    run: dict[str, Any] = dict(outputs=outputs, return_sequences=return_sequences)
    fw = _cell_rnn(step, fw_p, xs, mask, states_fw, **run)
    bw = _cell_rnn(step, bw_p, xs, mask, states_bw, go_backwards=True, **run)
    sequence = None
    if return_sequences:
        sequence = _merge_directions(fw.sequence[0], _flip_time(bw.sequence[0]), merge_mode)
    last = _merge_directions(fw.last[0], bw.last[0], merge_mode)
    return _RNN(sequence, last, tuple(fw.states) + tuple(bw.states))


# --------------------------------------------------------------------------
# attention layers: masked softmax weights (docs/semantics.md section 3)


def _attention_allowed(
    query: jax.Array,
    key: jax.Array,
    key_mask: jax.Array | None,
    query_mask: jax.Array | None,
    causal: bool,
) -> jax.Array | None:
    """Which key steps each query step attends to, bool [B, Tq, Tk] (None: all): the
    valid key steps, the valid query steps (MultiHeadAttention: a masked query step
    attends to nothing) and, with causal, the steps j <= i."""
    allowed = None if key_mask is None else key_mask[:, None, :]
    if query_mask is not None:
        allowed = query_mask[:, :, None] if allowed is None else allowed & query_mask[:, :, None]
    if causal:
        steps = jnp.tril(jnp.ones((query.shape[1], key.shape[1]), bool))[None]
        allowed = steps if allowed is None else allowed & steps
    if allowed is None:
        return None
    return jnp.broadcast_to(allowed, (query.shape[0], query.shape[1], key.shape[1]))


def _masked_softmax(scores: jax.Array, allowed: jax.Array | None) -> jax.Array:
    """Softmax over the last axis among the allowed entries: 0 elsewhere, and 0 for a
    row with none (Keras gives such a row a uniform average)."""
    if allowed is None:
        return jax.nn.softmax(scores, axis=-1)
    top = jnp.max(jnp.where(allowed, scores, -jnp.inf), axis=-1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    e = jnp.exp(jnp.where(allowed, scores - top, -jnp.inf))
    total = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(total > 0, total, 1.0)


def _attention(
    p: Mapping[str, jax.Array],
    query: jax.Array,
    value: jax.Array,
    key: jax.Array | None = None,
    *,
    query_mask: jax.Array | None = None,
    key_mask: jax.Array | None = None,
    score_mode: str = "dot",
    causal: bool = False,
    keep: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Keras' Attention (Luong); returns (output, weights). The weights are a softmax
    of the scores over the valid key steps (query . key, times p["scale"] with
    use_scale; "concat": concat_score_weight * sum(tanh(scale * (query + key)))); a
    query step with none gets weights 0. keep: the dropout keep-mask (training)
    or None. The output is 0 at the masked query steps."""
    key = value if key is None else key
    scale = p.get("scale", 1.0)
    if score_mode == "dot":
        scores = jnp.einsum("bif,bjf->bij", query, key) * scale
    else:
        pairs = query[:, :, None, :] + key[:, None, :, :]
        scores = p["concat_score_weight"] * jnp.sum(jnp.tanh(scale * pairs), axis=-1)
    weights = _masked_softmax(scores, _attention_allowed(query, key, key_mask, None, causal))
    out = jnp.einsum("bij,bjf->bif", weights if keep is None else weights * keep, value)
    if query_mask is not None:
        out = jnp.where(query_mask[..., None], out, 0.0)
    return out, weights


def _multi_head_attention(
    p: Mapping[str, jax.Array],
    query: jax.Array,
    value: jax.Array,
    key: jax.Array | None = None,
    *,
    query_mask: jax.Array | None = None,
    key_mask: jax.Array | None = None,
    causal: bool = False,
    keep: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Keras' MultiHeadAttention; returns (output, weights [B, heads, Tq, Tk]).
    query, key and value are projected to heads (Keras' EinsumDense kernels
    [F, heads, size]); the weights are softmax(q . k / sqrt(key_dim)) over the
    allowed key steps. As in Keras, the query mask is part of the attention mask: a
    query step that attends to nothing gets weights 0, so its output is
    attention_output's bias. keep: the dropout keep-mask (training) or None."""
    key = value if key is None else key

    def heads(x, part):
        y = jnp.einsum("btf,fnh->btnh", x, p[part + "/kernel"])
        return y + p[part + "/bias"] if part + "/bias" in p else y

    q, k, v = heads(query, "query"), heads(key, "key"), heads(value, "value")
    scores = jnp.einsum("btnh,bsnh->bnts", q * q.shape[-1] ** -0.5, k)  # Keras scales q first
    allowed = _attention_allowed(query, key, key_mask, query_mask, causal)
    weights = _masked_softmax(scores, None if allowed is None else allowed[:, None])
    context = jnp.einsum("bnts,bsnh->btnh", weights if keep is None else weights * keep, v)
    out = jnp.einsum("btnh,nho->bto", context, p["attention_output/kernel"])
    if "attention_output/bias" in p:
        out = out + p["attention_output/bias"]
    return out, weights


# --------------------------------------------------------------------------
# variables: init, canonical weights


def _initialize(name: str, key: jax.Array, shape: Sequence[int], dtype: Any) -> jax.Array:
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


def _init_weights(
    weights: Mapping[str, Sequence[tuple[Any, ...]]], rng_key: jax.Array, dtype: Any
) -> dict[str, jax.Array]:
    """Fresh canonical weights {"layer/weight": array} for a WEIGHTS table: each
    layer's weights drawn from its own stream (rng_key folded with a hash of the
    layer name), Keras' formulas."""
    out = {}
    for layer, specs in weights.items():
        key = jax.random.fold_in(rng_key, zlib.crc32(layer.encode()) & 0x7FFFFFFF)
        for i, (name, shape, initializer, _, _) in enumerate(specs):
            out[f"{layer}/{name}"] = _initialize(
                initializer, jax.random.fold_in(key, i), shape, dtype
            )
    return out


def _zero_state(entry: tuple[Any, Any, Sequence[str]], dtype: Any) -> dict[str, jax.Array]:
    """The zero states of one stateful recurrent layer. Its STATEFUL entry is
    (batch, units, names) for a built-in layer, (batch, state shapes, names)
    for a cell block."""
    batch, units, names = entry
    if isinstance(units, int):
        return {n: jnp.zeros((batch, units), dtype) for n in names}
    return {n: jnp.zeros((batch, *s), dtype) for n, s in zip(names, units, strict=True)}


def _from_canonical(
    table: Mapping[str, Sequence[tuple[Any, ...]]],
    stateful: Mapping[str, tuple[Any, Any, Sequence[str]]],
    weights: Mapping[str, Any],
) -> dict[str, dict[str, dict[str, jax.Array]]]:
    """Variables from canonical weights {"layer/weight": array} (Keras layout),
    checked against the WEIGHTS table; the (zero) states of the STATEFUL layers.

    Returns {"params": {layer: {weight: array}}, "state": {...}}. Arrays keep
    their dtype (float64 needs jax_enable_x64). ``weights`` may also be the
    (weights, metadata) of load_weights or a weights file's path; WeightsFileError
    names the keys that differ or the shape."""
    params: dict[str, dict[str, Any]] = {}
    state: dict[str, dict[str, Any]] = {}
    dtype = jnp.float32
    weights = canonical_mapping(weights)
    expected = [f"{layer}/{spec[0]}" for layer, specs in table.items() for spec in specs]
    check_weight_keys(expected, weights, "the model")
    for layer, specs in table.items():
        for name, shape, _, _, where in specs:
            key = f"{layer}/{name}"
            try:
                w = jnp.asarray(weights[key])
            except TypeError as e:
                raise WeightsFileError(f"weight {key}: not an array of numbers ({e})") from None
            if w.shape != tuple(shape):
                raise WeightsFileError(
                    f"weight {key}: shape {list(w.shape)}, but the model's is {list(shape)}"
                )
            dtype = w.dtype
            (params if where == "params" else state).setdefault(layer, {})[name] = w
    for layer, entry in stateful.items():
        state[layer] = _zero_state(entry, dtype)
    return {"params": params, "state": state}


def _to_canonical(
    table: Mapping[str, Sequence[tuple[Any, ...]]], variables: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """Canonical weights {"layer/weight": numpy array} by a WEIGHTS table (the
    bit-exact inverse of _from_canonical)."""
    out = {}
    for layer, specs in table.items():
        for name, _, _, _, where in specs:
            out[f"{layer}/{name}"] = np.asarray(variables[where][layer][name])
    return out


# --------------------------------------------------------------------------
# padding and input checks


def _pad_sequences(
    sequences: Sequence[Any], side: str, value: float, maxlen: int | None, truncate: str, dtype: Any
) -> tuple[np.ndarray, np.ndarray]:
    """keras.utils.pad_sequences in `dtype`: returns (batch, int32 lengths after truncation)."""
    return pad_sequences(sequences, side, value, maxlen, truncate, dtype, np.int32)


def _pad(pads: Mapping[str, tuple[Any, ...]], raw: Sequence[Any]) -> Any:
    """The body of a generated module's pad(*raw): :func:`seqdsl.runtime.common.pad_inputs`
    (int32 lengths). Returns (batch, lengths) for one padded input, a tuple of such
    pairs for several."""
    out = pad_inputs(pads, raw, np.int32)
    return out[0] if len(out) == 1 else tuple(out)


def _input_symbols(
    inputs: Mapping[str, tuple[str, tuple[Any, ...]]],
    arrays: Sequence[Any],
    lengths: Mapping[str, Any] | None = None,
    masks: Mapping[str, Any] | None = None,
    masked: Sequence[str] = (),
) -> dict[str, Any]:
    """The structural checks of the inputs against an INPUTS table:
    check_inputs of the common runtime, the same on every backend (shapes
    are known at trace time, so under jax.jit they cost nothing). Returns the
    symbol values."""
    return check_inputs(inputs, dict(zip(inputs, arrays, strict=True)), lengths, masks, masked)


def _divisible(size: Any, divisor: int, what: str, values: str = "") -> bool:
    """Check that a size is a multiple of divisor (a checker's run-time constraint,
    `what`): InputError when a concrete size is not (naming the symbols' `values`). A symbolic size (jax.export,
    shapes like symbolic_shape("b, t")) must be one provably: declared as a
    multiple, symbolic_shape("b, 2*k"); otherwise this raises ValueError, naming
    the constraint, rather than export a model that would fail, or compute
    something else, on the sizes that are not."""
    if isinstance(size, int):
        if size % divisor:
            raise InputError(f"{values}, but {what}" if values else what)
        return True
    if size % divisor == 0:  # provable for the symbolic size (False when it cannot tell)
        return True
    raise ValueError(
        f"{what}, which the symbolic size {size} does not guarantee: export with a "
        f'multiple of {divisor} (e.g. jax.export.symbolic_shape("b, {divisor}*k") for it)'
    )


def _at_least(size: Any, minimum: int, what: str, values: str = "", least: int = 0) -> bool:
    """Check that a size is at least minimum (a checker's run-time constraint `what`:
    a valid window must fit in the steps that reach it): InputError when a concrete
    size is not (naming the symbols' `values`). A symbolic size (jax.export) must be
    one provably, by a lower bound on its symbol; otherwise this raises ValueError,
    naming the constraint and the bound (`least`, when the size has one symbol)."""
    if isinstance(size, int):
        if size < minimum:
            raise InputError(f"{values}, but {what}" if values else what)
        return True
    try:
        if size >= minimum:
            return True
    except jax.errors.InconclusiveDimensionOperation:
        pass
    bound = least or minimum
    raise ValueError(
        f"{what}, which the symbolic size {size} does not guarantee: give jax.export a "
        f"lower bound on the time symbol that makes it hold, e.g. "
        f'jax.export.symbolic_shape("b, t", constraints=("t >= {bound}",))'
    )


# --------------------------------------------------------------------------
# the model class


def _host(x: Any, what: str) -> Any:
    """An argument for the jitted apply: JAX and NumPy arrays as they are, anything
    else array-like (lists, torch tensors, TensorFlow tensors) as a NumPy array."""
    if x is None or isinstance(x, (jax.Array, np.ndarray, np.generic, bool, int, float)):
        return x
    try:
        return np.asarray(x)
    except ValueError:
        raise InputError(
            f"{what}: not a rectangular array (pad ragged sequences with pad())"
        ) from None
    except Exception as e:  # e.g. a torch tensor that requires grad
        raise InputError(f"{what}: cannot be read as an array ({e})") from None


def _host_options(options: dict[str, Any]) -> dict[str, Any]:
    """lengths=, masks= and dropout_masks= of a call, their arrays as _host makes them."""
    out = dict(options)
    for key in ("lengths", "masks", "dropout_masks"):
        value = out.get(key)
        if isinstance(value, Mapping):
            out[key] = {k: _host(v, f"{key}[{k!r}]") for k, v in value.items()}
        elif value is not None:
            out[key] = _host(value, key)
    return out


class _Model:
    """The base of a generated model class: the model with its variables.
    Calling it runs apply (jitted) and keeps the new state (BatchNormalization
    statistics after training calls, the states of stateful recurrent layers)
    for the next call. The generated subclass sets the module's functions and
    its STATEFUL table as class attributes.

    Inputs may be JAX or NumPy arrays, lists, or other frameworks' tensors (torch's
    pad() gives torch tensors): what is not a JAX array is read as a NumPy array.
    ``debug`` (False; ``build(..., debug=True)`` sets it): each call runs apply
    with debug=True, outside jax.jit, and checks the inputs' values as well."""

    init: Any
    apply: Any
    pad: Any
    from_canonical: Any
    to_canonical: Any
    stateful: Any

    def __init__(self, variables: Any = None, rng_key: Any = None) -> None:
        if variables is None:
            variables = self.init(jax.random.key(0) if rng_key is None else rng_key)
        self.variables = variables
        self.debug = False
        self._jitted = jax.jit(self.apply, static_argnames=("training", "return_state", "debug"))
        self._eager = self.apply

    def __call__(self, *inputs: Any, **options: Any) -> Any:
        inputs = tuple(_host(x, f"input {i + 1}") for i, x in enumerate(inputs))
        options = _host_options(options)
        run: Any = functools.partial(self._eager, debug=True) if self.debug else self._jitted
        outputs, state = run(self.variables, *inputs, return_state=True, **options)
        self.variables = {"params": self.variables["params"], "state": state}
        return outputs

    def reset_states(self) -> None:
        """Zero the states of stateful recurrent layers (not the normalisation statistics)."""
        state = dict(self.variables["state"])
        for layer, entry in self.stateful.items():
            state[layer] = _zero_state(entry, state[layer][entry[2][0]].dtype)
        self.variables = {"params": self.variables["params"], "state": state}

    def load_canonical(self, weights: Any) -> None:
        """Load {"layer/weight": array}, the (weights, metadata) of load_weights, or a
        weights file's path: all or nothing (from_canonical checks every key and
        shape before the variables change)."""
        self.variables = self.from_canonical(weights)

    def canonical_weights(self) -> dict[str, np.ndarray]:
        return self.to_canonical(self.variables)


class _ExternModel(_Model):
    """The base of a generated model class with extern layers: their
    implementations are resolved when the model is built (resolve_externs: the
    module's _externs)."""

    resolve_externs: Any

    def __init__(self, variables: Any = None, rng_key: Any = None, externs: Any = None) -> None:
        if variables is None:
            variables = self.init(jax.random.key(0) if rng_key is None else rng_key)
        self.variables = variables
        self.debug = False
        self.externs = self.resolve_externs(externs)  # now: a missing implementation raises here
        self._jitted = jax.jit(
            functools.partial(self.apply, externs=self.externs),
            static_argnames=("training", "return_state", "debug"),
        )
        self._eager = functools.partial(self.apply, externs=self.externs)


def masked_mean(values: Any, mask: Any) -> Any:
    """The mean of per-step ``values`` over the valid steps of ``mask``: the loss of
    an ``output x with mask``, as Keras' masked losses average it. ``values`` is
    ``[B, T]`` (per-step losses, e.g.
    ``optax.softmax_cross_entropy_with_integer_labels(logits, y)``) or ``[B, T, ...]``
    (each valid step's entries all count); ``mask`` is the bool ``[B, T]`` mask the
    model returns. A batch with no valid step gives 0. jit- and grad-safe."""
    m = jnp.broadcast_to(
        mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim)), values.shape
    ).astype(values.dtype)
    return (values * m).sum() / jnp.maximum(m.sum(), 1.0)
