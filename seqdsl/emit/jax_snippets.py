"""The building blocks of emitted JAX modules: one small function per layer kind.

Each snippet is source text copied verbatim into a generated module when the
model uses it (with the snippets it depends on), so an emitted module carries
exactly the functions it needs and nothing else. The text is plain JAX:
``jax``, ``jax.numpy as jnp``, ``jax.lax as lax`` and ``numpy as np``.
Semantics: docs/semantics.md; the JAX-specific choices: docs/backend-jax.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from .common import with_dependencies

__all__ = ["SNIPPETS", "Snippet", "closure", "ACTIVATION_EXPR"]


@dataclass(frozen=True)
class Snippet:
    name: str
    text: str
    deps: tuple[str, ...] = ()
    section: str = "layers"


#: Keras activation name -> the expression naming the JAX function (a snippet
#: when jax.nn has no exact twin of Keras' definition).
ACTIVATION_EXPR = {
    "linear": "_linear",
    "relu": "jax.nn.relu",
    "sigmoid": "jax.nn.sigmoid",
    "tanh": "jnp.tanh",
    "softmax": "_softmax",
    "log_softmax": "_log_softmax",
    "softplus": "jax.nn.softplus",
    "softsign": "jax.nn.soft_sign",
    "elu": "jax.nn.elu",
    "selu": "jax.nn.selu",
    "gelu": "_gelu",
    "silu": "jax.nn.silu",
    "swish": "jax.nn.silu",
    "exponential": "jnp.exp",
    "hard_sigmoid": "_hard_sigmoid",
    "relu6": "jax.nn.relu6",
    "leaky_relu": "_leaky_relu",
    "mish": "_mish",
}

_S: list[Snippet] = []


def _add(name: str, text: str, deps: tuple[str, ...] = (), section: str = "layers") -> None:
    _S.append(Snippet(name, text.strip("\n") + "\n", deps, section))


# --------------------------------------------------------------------------
# activations (Keras 3 definitions where jax.nn differs)

_add(
    "_linear",
    """
def _linear(x):
    return x
""",
    section="activations",
)

_add(
    "_softmax",
    """
def _softmax(x):
    return jax.nn.softmax(x, axis=-1)
""",
    section="activations",
)

_add(
    "_log_softmax",
    """
def _log_softmax(x):
    return jax.nn.log_softmax(x, axis=-1)
""",
    section="activations",
)

_add(
    "_gelu",
    """
def _gelu(x):
    # Keras' gelu is the exact one (approximate=False); jax.nn.gelu defaults to tanh's
    return jax.nn.gelu(x, approximate=False)
""",
    section="activations",
)

_add(
    "_hard_sigmoid",
    """
def _hard_sigmoid(x):
    # Keras 3: relu6(x + 3) / 6
    return jnp.clip(x / 6.0 + 0.5, 0.0, 1.0)
""",
    section="activations",
)

_add(
    "_leaky_relu",
    """
def _leaky_relu(x):
    # Keras' default negative_slope is 0.2 (jax.nn.leaky_relu's is 0.01)
    return jax.nn.leaky_relu(x, negative_slope=0.2)
""",
    section="activations",
)

_add(
    "_mish",
    """
def _mish(x):
    return x * jnp.tanh(jax.nn.softplus(x))
""",
    section="activations",
)

# --------------------------------------------------------------------------
# inputs, masks, checks

_add(
    "_compute_dtype",
    '''
def _compute_dtype(params, *inputs):
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
''',
    section="inputs",
)

_add(
    "_named",
    '''
def _named(arrays, names, what):
    """`lengths=` / `masks=`: a dict keyed by input name, or one array for the one masked input."""
    if arrays is None or isinstance(arrays, dict):
        return arrays or {}
    if len(names) != 1:
        raise TypeError(f"{what}= must be a dict keyed by input name ({', '.join(names)})")
    return {names[0]: arrays}
''',
    section="inputs",
)

_add(
    "_lengths_to_mask",
    '''
def _lengths_to_mask(lengths, T, side):
    """post: step t of row b is valid iff t < len[b]; pre: iff t >= T - len[b]."""
    steps = jnp.arange(T)[None, :]
    lengths = jnp.asarray(lengths)[:, None]
    return steps < lengths if side == "post" else steps >= T - lengths
''',
    section="inputs",
)

_add(
    "_input_mask",
    '''
def _input_mask(name, x, side, lengths, masks):
    """The mask of a `masked` input: masks[name] (bool [B, T]) or lengths[name] ([B])."""
    B, T = x.shape[0], x.shape[1]
    if name in masks:
        mask = jnp.asarray(masks[name], bool)
        if mask.shape != (B, T):
            raise ValueError(f"masks[{name!r}] has shape {mask.shape}, expected {(B, T)}")
        return mask
    if name in lengths:
        if side == "any":
            raise ValueError(
                f"input `{name}` declares no pad side, so lengths cannot say which steps "
                f"are valid: pass masks={{{name!r}: ...}}"
            )
        lens = jnp.asarray(lengths[name])
        if lens.shape != (B,):
            raise ValueError(f"lengths[{name!r}] has shape {lens.shape}, expected {(B,)}")
        return _lengths_to_mask(lens, T, side)
    raise ValueError(
        f"input `{name}` is declared `masked`: pass lengths={{{name!r}: ...}} "
        f"or masks={{{name!r}: ...}}"
    )
''',
    deps=("_lengths_to_mask",),
    section="inputs",
)

_add(
    "_concrete",
    '''
def _concrete(x):
    """A NumPy copy of x for the debug checks, which need values (no tracers)."""
    try:
        return np.asarray(x)
    except jax.errors.TracerArrayConversionError:
        raise ValueError(
            "debug checks need concrete values: call debug() outside jax.jit"
        ) from None
''',
    section="inputs",
)

_add(
    "_check_mask",
    '''
def _check_mask(mask, side, nonempty, where, hint):
    """debug: verify that a mask has its declared kind."""
    m = _concrete(mask).astype(bool)
    T = m.shape[1]
    n = m.sum(axis=1)
    steps = np.arange(T)[None, :]
    expected = {"post": steps < n[:, None], "pre": steps >= T - n[:, None]}.get(side, m)
    bad = np.nonzero((m != expected).any(axis=1))[0]
    if bad.size:
        b = int(bad[0])
        row = "".join("1" if v else "0" for v in m[b][:64]) + ("..." if T > 64 else "")
        pad = (
            "right-padded (valid steps first)"
            if side == "post"
            else "left-padded (valid steps last)"
        )
        raise ValueError(
            f"{where}: the mask is declared `{side}`, but row {b} is not {pad}: mask {row}. {hint}"
        )
    if nonempty and (n == 0).any():
        b = int(np.nonzero(n == 0)[0][0])
        raise ValueError(f"{where}: the mask is declared nonempty, but row {b} has no valid step")
''',
    deps=("_concrete",),
    section="inputs",
)

_add(
    "_check_lengths",
    '''
def _check_lengths(name, x, lengths, nonempty):
    """debug: lengths of a `masked` input are in [0, T] ([1, T] when declared nonempty)."""
    if name not in lengths:
        return
    lens = _concrete(lengths[name])
    lo, T = (1 if nonempty else 0), x.shape[1]
    if lens.size and (lens.min() < lo or lens.max() > T):
        raise ValueError(f"input `{name}`: lengths must lie in [{lo}, {T}], got {lens.tolist()}")
''',
    deps=("_concrete",),
    section="inputs",
)

_add(
    "_check_ids",
    '''
def _check_ids(ids, input_dim, where):
    """debug: token ids index the embedding table."""
    ids = _concrete(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= input_dim):
        raise ValueError(f"{where}: ids must lie in [0, {input_dim}), got {ids.min()}..{ids.max()}")
''',
    deps=("_concrete",),
    section="inputs",
)

_add(
    "_keep",
    '''
def _keep(dropout_masks, rng, key, index, shape, rate, dtype):
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
''',
    section="inputs",
)

# --------------------------------------------------------------------------
# per-step layers

_add(
    "_embedding",
    """
def _embedding(p, ids):
    # the vector of id 0 is not zeroed (as Keras): the mask, not the value, marks padding
    return jnp.take(p["embeddings"], ids, axis=0)
""",
)

_add(
    "_masking",
    '''
def _masking(x, mask_value):
    """Masking: a step is masked when all its features equal mask_value (NaN never
    does); masked steps are zeroed. Replaces any incoming mask."""
    mask = jnp.any(x != mask_value, axis=-1)
    return x * mask[..., None].astype(x.dtype), mask
''',
)

_add(
    "_dense",
    """
def _dense(p, x, activation):
    y = x @ p["kernel"]
    if "bias" in p:
        y = y + p["bias"]
    return activation(y)
""",
)

_add(
    "_layer_norm",
    '''
def _layer_norm(p, x, epsilon):
    """LayerNormalization over the features of each step (masked steps computed too)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * lax.rsqrt(var + epsilon)
    if "gamma" in p:
        y = y * p["gamma"]
    if "beta" in p:
        y = y + p["beta"]
    return y
''',
)

_add(
    "_batch_norm",
    '''
def _batch_norm(p, s, x, mask, training, momentum, epsilon):
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
''',
)

# --------------------------------------------------------------------------
# time-changing layers

_add(
    "_window",
    '''
def _window(T, k_eff, stride, padding):
    """(zeros before, zeros after, output steps) of a window of k_eff steps, as
    Keras/TensorFlow pad: valid: none; causal: k_eff - 1 before; same: the
    zeros needed for ceil(T / stride) windows, split evenly, the odd one after."""
    if padding == "valid":
        return 0, 0, (T - k_eff) // stride + 1
    out = -(-T // stride)
    if padding == "causal":
        return k_eff - 1, 0, out
    total = max((out - 1) * stride + k_eff - T, 0)
    return total // 2, total - total // 2, out
''',
    section="time",
)

_add(
    "_window_mask",
    '''
def _window_mask(mask, size, stride, dilation, padding, out):
    """Output mask of a window layer. valid: step j is valid iff every input step
    its window reads is valid; same/causal: iff its anchor input step j * stride is.
    For post/pre masks this maps each row's length L to max(0, (L - k_eff) // s + 1)
    (valid) or ceil(L / s) (same, causal), keeping the side."""
    if padding != "valid":
        return mask[:, ::stride][:, :out]
    invalid = (~mask).astype(jnp.int32)
    bad = lax.reduce_window(
        invalid, 0, lax.add, (1, size), (1, stride), "VALID", window_dilation=(1, dilation)
    )
    return bad[:, :out] == 0
''',
    section="time",
)

_add(
    "_conv1d",
    '''
def _conv1d(p, x, mask, kernel_size, strides, dilation, padding, activation):
    """Conv1D (Keras layout: kernel [k, F, filters]). Masked input steps are zeroed
    first, so padding never leaks into a valid window; returns (y, output mask)."""
    if mask is not None:
        x = jnp.where(mask[..., None], x, 0.0)
    k_eff = dilation * (kernel_size - 1) + 1
    before, after, out = _window(x.shape[1], k_eff, strides, padding)
    y = lax.conv_general_dilated(
        x,
        p["kernel"],
        window_strides=(strides,),
        padding=[(before, after)],
        rhs_dilation=(dilation,),
        dimension_numbers=("NWC", "WIO", "NWC"),
    )[:, :out]
    if "bias" in p:
        y = y + p["bias"]
    y = activation(y)
    if mask is None:
        return y, None
    return y, _window_mask(mask, kernel_size, strides, dilation, padding, out)
''',
    deps=("_window", "_window_mask"),
    section="time",
)

_add(
    "_pool",
    '''
def _pool(x, mask, kind, pool_size, strides, padding):
    """MaxPooling1D / AveragePooling1D over the valid steps of each window (0 when
    a window has none; same-padding zeros are not steps). Returns (y, output mask)."""
    before, after, out = _window(x.shape[1], pool_size, strides, padding)
    valid = jnp.ones(x.shape[:2], bool) if mask is None else mask
    v = valid[..., None]
    dims, steps, pads = (1, pool_size, 1), (1, strides, 1), ((0, 0), (before, after), (0, 0))
    count = lax.reduce_window(v.astype(x.dtype), 0.0, lax.add, dims, steps, pads)
    if kind == "max":
        vals = lax.reduce_window(jnp.where(v, x, -jnp.inf), -jnp.inf, lax.max, dims, steps, pads)
    else:
        total = lax.reduce_window(jnp.where(v, x, 0.0), 0.0, lax.add, dims, steps, pads)
        vals = total / jnp.maximum(count, 1.0)
    y = jnp.where(count > 0, vals, 0.0)[:, :out]
    if mask is None:
        return y, None
    return y, _window_mask(mask, pool_size, strides, 1, padding, out)
''',
    deps=("_window", "_window_mask"),
    section="time",
)

_add(
    "_global_pool",
    '''
def _global_pool(x, mask, kind, keepdims):
    """GlobalMax/AveragePooling1D over the valid steps; 0 for a row with none."""
    valid = jnp.ones(x.shape[:2], bool) if mask is None else mask
    v = valid[..., None]
    if kind == "max":
        y = jnp.max(jnp.where(v, x, -jnp.inf), axis=1)
        y = jnp.where(jnp.any(valid, axis=1)[:, None], y, 0.0)
    else:
        count = jnp.sum(valid, axis=1).astype(x.dtype)[:, None]
        y = jnp.sum(jnp.where(v, x, 0.0), axis=1) / jnp.maximum(count, 1.0)
    return y[:, None, :] if keepdims else y
''',
    section="time",
)

_add(
    "_temporal_softmax",
    '''
def _temporal_softmax(x, mask):
    """Per feature, a softmax over the valid steps of each row (max-subtracted);
    0 at masked steps and for a row with no valid step."""
    v = mask[..., None]
    top = jnp.max(jnp.where(v, x, -jnp.inf), axis=1, keepdims=True)
    top = jnp.where(jnp.any(mask, axis=1)[:, None, None], top, 0.0)
    e = jnp.where(v, jnp.exp(x - top), 0.0)
    total = jnp.sum(e, axis=1, keepdims=True)
    return jnp.where(total > 0, e / jnp.where(total > 0, total, 1.0), 0.0)
''',
    section="time",
)

# --------------------------------------------------------------------------
# recurrent layers

_add(
    "_RNN",
    '''
class _RNN(NamedTuple):
    """What a recurrent layer gives: its output sequence (None without
    return_sequences), its last output (the output at the last valid step, 0 for
    a row with none) and its final states ((h, c) for LSTM, (h,) otherwise)."""

    sequence: Any
    last: Any
    states: tuple
''',
    section="recurrent",
)

_add(
    "_zero_states",
    """
def _zero_states(x, units, n):
    return tuple(jnp.zeros((x.shape[0], units), x.dtype) for _ in range(n))
""",
    section="recurrent",
)

_add(
    "_flip_time",
    """
def _flip_time(x):
    return None if x is None else jnp.flip(x, axis=1)
""",
    section="recurrent",
)

_add(
    "_go_backwards",
    '''
def _go_backwards(x, mask, side):
    """go_backwards on the fused kernel: the layer reads the steps in reverse order
    (Keras), so it runs on the flipped sequence and mask; its outputs stay in that
    reversed order. A flipped post mask is a pre mask and vice versa."""
    side = {"post": "pre", "pre": "post"}.get(side, side)
    return _flip_time(x), _flip_time(mask), side
''',
    deps=("_flip_time",),
    section="recurrent",
)

_add(
    "_scan",
    '''
def _scan(step, x, kernel, bias, mask, states, return_sequences, masked_output, go_backwards):
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
    states, hs = lax.scan(body, states, (xs, m), reverse=go_backwards)
    last = states[0]
    if mask is not None:  # h keeps its last valid value, or its initial one in an empty row
        last = jnp.where(jnp.any(mask, axis=1)[:, None], last, 0.0)
        if return_sequences:
            if masked_output == "carry":  # from the first valid step on, in reading order
                m = jnp.cumsum(m[::-1], axis=0)[::-1] if go_backwards else jnp.cumsum(m, axis=0)
                m = m > 0
            hs = jnp.where(m[:, :, None], hs, 0.0)
    sequence = None if hs is None else jnp.swapaxes(hs, 0, 1)
    return _RNN(_flip_time(sequence) if go_backwards else sequence, last, states)
''',
    deps=("_RNN", "_project", "_hoist_projection", "_flip_time"),
    section="recurrent",
)

_add(
    "_project",
    '''
def _project(x, kernel, bias=None):
    """x @ kernel (+ bias): the part of a cell that does not depend on the state."""
    xw = x @ kernel
    return xw if bias is None else xw + bias
''',
    section="recurrent",
)

_add(
    "_hoist_projection",
    '''
def _hoist_projection(x, kernel):
    """Whether _scan computes x @ kernel for every step at once, before the loop (one
    large matmul), rather than step by step in its body. Measured per layer on XLA's
    CPU backend (docs/benchmarks.md): in the body, as Keras 3 does, is the faster
    for most shapes, but not for a batch of one row, nor for a kernel of 2**20
    entries or more, nor, in batches under 64 rows, for F >= 256 features into at
    most 2F gates. On GPUs (not measured here) one large matmul is the usual choice."""
    if jax.default_backend() != "cpu":
        return True
    batch, (features, gates) = x.shape[0], kernel.shape
    if batch == 1 or features * gates >= 2**20:
        return True
    return batch < 64 and features >= 256 and gates <= 2 * features
''',
    section="recurrent",
)

_add(
    "_lstm_step",
    '''
def _lstm_step(recurrent_kernel, activation, recurrent_activation, recurrent_keep):
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
''',
    section="recurrent",
)

_add(
    "_lstm",
    '''
def _lstm(
    p,
    x,
    mask,
    states,
    *,
    activation=jnp.tanh,
    recurrent_activation=jax.nn.sigmoid,
    go_backwards=False,
    return_sequences=False,
    masked_output="zero",
    input_keep=None,
    recurrent_keep=None,
    fused=None,
):
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
''',
    deps=("_lstm_step", "_scan", "_go_backwards", "_lstm_fused"),
    section="recurrent",
)

_add(
    "_gru_step",
    '''
def _gru_step(recurrent_kernel, recurrent_bias, activation, recurrent_activation, recurrent_keep):
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
''',
    section="recurrent",
)

_add(
    "_gru_v1_step",
    '''
def _gru_v1_step(recurrent_kernel, activation, recurrent_activation, recurrent_keep):
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
''',
    section="recurrent",
)

_add(
    "_gru",
    '''
def _gru(
    p,
    x,
    mask,
    states,
    *,
    activation=jnp.tanh,
    recurrent_activation=jax.nn.sigmoid,
    reset_after=True,
    go_backwards=False,
    return_sequences=False,
    masked_output="zero",
    input_keep=None,
    recurrent_keep=None,
):
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
''',
    deps=("_gru_step", "_gru_v1_step", "_scan"),
    section="recurrent",
)

_add(
    "_simple_rnn",
    '''
def _simple_rnn(
    p,
    x,
    mask,
    states,
    *,
    activation=jnp.tanh,
    go_backwards=False,
    return_sequences=False,
    masked_output="zero",
    input_keep=None,
    recurrent_keep=None,
):
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
''',
    deps=("_scan",),
    section="recurrent",
)

_add(
    "_merge_directions",
    """
def _merge_directions(a, b, merge_mode):
    if merge_mode == "concat":
        return jnp.concatenate([a, b], axis=-1)
    if merge_mode == "sum":
        return a + b
    if merge_mode == "mul":
        return a * b
    if merge_mode == "ave":
        return (a + b) / 2.0
    return a, b  # merge_mode="none": two outputs
""",
    section="recurrent",
)

_add(
    "_bidirectional",
    '''
def _directions(p):
    """A Bidirectional layer's weights, split into forward and backward."""
    fw = {k[len("forward/") :]: v for k, v in p.items() if k.startswith("forward/")}
    bw = {k[len("backward/") :]: v for k, v in p.items() if k.startswith("backward/")}
    return fw, bw


def _merged(seqs, lasts, finals, merge_mode, return_sequences):
    sequence = _merge_directions(*seqs, merge_mode) if return_sequences else None
    return _RNN(
        sequence, _merge_directions(*lasts, merge_mode), tuple(finals[0]) + tuple(finals[1])
    )


def _bidirectional(
    layer,
    p,
    x,
    mask,
    states_fw,
    states_bw,
    *,
    merge_mode,
    return_sequences,
    input_keeps=(None, None),
    recurrent_keeps=(None, None),
    **cell,
):
    """Bidirectional: the forward layer on x; the backward layer reads the valid
    steps in reverse (go_backwards) and its outputs are flipped back to input
    order; merged by merge_mode. Outputs at masked steps are 0 in both halves.
    States: forward then backward."""
    fw_p, bw_p = _directions(p)
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
        **cell,
    )
    seqs = (fw.sequence, _flip_time(bw.sequence))
    return _merged(seqs, (fw.last, bw.last), (fw.states, bw.states), merge_mode, return_sequences)
''',
    deps=("_RNN", "_flip_time", "_merge_directions"),
    section="recurrent",
)

_add(
    "_bidirectional_lstm",
    '''
def _bidirectional_lstm(
    p,
    x,
    mask,
    states_fw,
    states_bw,
    *,
    merge_mode,
    return_sequences,
    input_keeps=(None, None),
    fused=None,
    **cell,
):
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
''',
    deps=("_bidirectional", "_lstm", "_lstm_fused"),
    section="recurrent",
)

_add(
    "_lstm_fused",
    '''
#: "auto": the fused kernel (cuDNN, jax.experimental.rnn.lstm) for float32 on a
#: CUDA GPU, lax.scan elsewhere; "always" / "never" force the choice.
FUSED_LSTM = "auto"


def _cudnn_lstm(x, h0, c0, weights, seq_lengths, input_size, hidden_size, bidirectional):
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


#: The fused kernel (same signature as _cudnn_lstm). jax.experimental.rnn.lstm
#: raises on CPU; tests put an adapter around jax.experimental.rnn.lstm_ref here
#: (with FUSED_LSTM = "always") to check this code path anywhere.
_fused_lstm = _cudnn_lstm


def _use_fused_lstm(x):
    if FUSED_LSTM == "auto":
        return (
            x.dtype == jnp.float32
            and jax.default_backend() == "gpu"
            and "rocm" not in str(getattr(jax.devices()[0].client, "platform_version", "")).lower()
        )
    return FUSED_LSTM == "always"


def _roll_rows(x, shift):
    """Roll each row b of x [B, T, ...] in time by shift[b] steps (to the right)."""
    T = x.shape[1]
    index = (jnp.arange(T)[None, :] - shift[:, None]) % T
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def _cudnn_weights(ps):
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


def _lstm_fused(ps, x, mask, side, states, return_sequences, masked_output):
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
''',
    section="recurrent",
)

# --------------------------------------------------------------------------
# cell blocks (one generated step function each) and extern layers

_add(
    "_cell_states",
    """
def _cell_states(x, shapes):
    return tuple(jnp.zeros((x.shape[0], *shape), x.dtype) for shape in shapes)
""",
    section="recurrent",
)

_add(
    "_cell_rnn",
    '''
def _valid_where(m_t, new, old):
    """where(mask, new, old) for a per-step value of any rank (mask [B])."""
    return jnp.where(m_t.reshape(m_t.shape + (1,) * (jnp.ndim(new) - 1)), new, old)


def _cell_rnn(
    step,
    p,
    xs,
    mask,
    states,
    outputs,
    *,
    go_backwards=False,
    return_sequences=False,
    masked_output="zero",
):
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
    if go_backwards:
        xs, mask = tuple(_flip_time(x) for x in xs), _flip_time(mask)
    last = tuple(jnp.zeros((xs[0].shape[0], *shape), xs[0].dtype) for shape in outputs)
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
''',
    deps=("_RNN", "_flip_time"),
    section="recurrent",
)

_add(
    "_cell_bidirectional",
    '''
def _cell_bidirectional(
    step, p, xs, mask, states_fw, states_bw, outputs, *, merge_mode, return_sequences
):
    """Bidirectional(RNN(cell)) for a cell with one output [n]: the forward run on
    xs; the backward run reads the valid steps in reverse (go_backwards) and its
    outputs are flipped back to input order; merged by merge_mode (two arrays for
    "none"). States: forward then backward."""
    fw_p = {k[len("forward/") :]: v for k, v in p.items() if k.startswith("forward/")}
    bw_p = {k[len("backward/") :]: v for k, v in p.items() if k.startswith("backward/")}
    run = dict(outputs=outputs, return_sequences=return_sequences)
    fw = _cell_rnn(step, fw_p, xs, mask, states_fw, **run)
    bw = _cell_rnn(step, bw_p, xs, mask, states_bw, go_backwards=True, **run)
    sequence = None
    if return_sequences:
        sequence = _merge_directions(fw.sequence[0], _flip_time(bw.sequence[0]), merge_mode)
    last = _merge_directions(fw.last[0], bw.last[0], merge_mode)
    return _RNN(sequence, last, tuple(fw.states) + tuple(bw.states))
''',
    deps=("_cell_rnn", "_merge_directions", "_flip_time", "_RNN"),
    section="recurrent",
)

_add(
    "_extern",
    '''
def _extern(impl, inputs, mask, weights, config, training):
    """Call an extern layer's implementation. Returns (its outputs as a tuple, the
    mask it returned or None); the layer's output masks come from its
    declaration, a returned mask is only compared with them (debug)."""
    out = impl.fn(*inputs, mask=mask, weights=weights, config=config, training=training)
    returned = None
    if impl.returns_mask:
        out, returned = out
    return (tuple(out) if isinstance(out, (tuple, list)) else (out,)), returned
''',
)

_add(
    "_check_extern",
    '''
def _check_extern(layer, declaration, outputs, declared, returned, expected):
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
''',
    deps=("_concrete",),
    section="inputs",
)


# --------------------------------------------------------------------------
# attention

_add(
    "_attention_allowed",
    '''
def _attention_allowed(query, key, key_mask, query_mask, causal):
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
''',
    section="attention",
)

_add(
    "_masked_softmax",
    '''
def _masked_softmax(scores, allowed):
    """Softmax over the last axis among the allowed entries: 0 elsewhere, and 0 for a
    row with none (Keras gives such a row a uniform average)."""
    if allowed is None:
        return jax.nn.softmax(scores, axis=-1)
    top = jnp.max(jnp.where(allowed, scores, -jnp.inf), axis=-1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    e = jnp.exp(jnp.where(allowed, scores - top, -jnp.inf))
    total = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(total > 0, total, 1.0)
''',
    section="attention",
)

_add(
    "_attention",
    '''
def _attention(
    p,
    query,
    value,
    key=None,
    *,
    query_mask=None,
    key_mask=None,
    score_mode="dot",
    causal=False,
    keep=None,
):
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
''',
    deps=("_attention_allowed", "_masked_softmax"),
    section="attention",
)

_add(
    "_multi_head_attention",
    '''
def _multi_head_attention(
    p, query, value, key=None, *, query_mask=None, key_mask=None, causal=False, keep=None
):
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
''',
    deps=("_attention_allowed", "_masked_softmax"),
    section="attention",
)

SNIPPETS: dict[str, Snippet] = {s.name: s for s in _S}
ORDER: list[str] = [s.name for s in _S]
SECTIONS = ("activations", "inputs", "layers", "time", "recurrent", "attention")


def closure(names: set[str]) -> list[str]:
    """The snippets ``names`` need, in library order (deterministic)."""
    return with_dependencies(names, {n: SNIPPETS[n].deps for n in ORDER})


def defined_names() -> set[str]:
    """Every module-level name the snippets define (reserved in generated code)."""
    import re

    out: set[str] = set()
    for s in _S:
        out |= set(re.findall(r"^(?:def|class) (\w+)", s.text, re.M))
        out |= set(re.findall(r"^(\w+) = ", s.text, re.M))
    return out
