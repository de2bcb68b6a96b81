"""JAX rows: generated vs hand-written (section 1), masks (2), padding (4).

The hand-written model is what a competent JAX user writes with ``lax.scan``
(no Flax). Exact options for a right-padded batch with lengths:

  scan+where          the cell applied step by step, the mask in the body: at a
                      masked step the state keeps its value (``jnp.where``); the
                      final state is the output. Bidirectional: the backward
                      direction is ``lax.scan(reverse=True)`` with the same rule
  scan+where/hoisted  the same, with the input projection ``x @ kernel + bias`` of
                      every step done before the scan (time-major), the body doing
                      only the recurrent matmul and the gates

(An unmasked scan with the last outputs gathered at length - 1 is exact for
post padding too; it was slower than both in every trial, so it is left out.)

The baseline of a row is the faster option, measured in the same run. Both the
generated ``apply`` and the hand-written function are ``jax.jit``-ed, and so is
each training step (loss, ``jax.grad``, SGD update).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .common import measure, size_key
from .models import Data, layer_weights, load, make_data

LR = 1e-4


def _lstm_cell(p: dict[str, Any]) -> Callable[..., Any]:
    rk = p["recurrent_kernel"]

    def step(xw_t: Any, state: tuple[Any, Any]) -> tuple[Any, Any]:
        h, c = state
        z = xw_t + h @ rk
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return h, c

    return step


def _gru_cell(p: dict[str, Any]) -> Callable[..., Any]:
    rk, rb = p["recurrent_kernel"], p["bias"][1]

    def step(xw_t: Any, state: tuple[Any]) -> tuple[Any]:
        (h,) = state
        xz, xr, xh = jnp.split(xw_t, 3, axis=-1)
        hz, hr, hh = jnp.split(h @ rk + rb, 3, axis=-1)
        z = jax.nn.sigmoid(xz + hz)
        r = jax.nn.sigmoid(xr + hr)
        n = jnp.tanh(xh + r * hh)
        return (z * h + (1.0 - z) * n,)

    return step


def _layer(
    cell: str,
    p: dict[str, Any],
    x: Any,
    mask: Any,
    sequences: bool,
    reverse: bool = False,
    hoisted: bool = False,
) -> Any:
    """One direction of one layer, the mask in the scan body; returns the output
    sequence [B, T, U] or the final h."""
    kernel = p["kernel"]
    bias = p["bias"][0] if cell == "gru" else p["bias"]
    xs = jnp.swapaxes(x, 0, 1)  # [T, B, F]
    if hoisted:
        xs = xs @ kernel + bias
    step = _gru_cell(p) if cell == "gru" else _lstm_cell(p)
    units = p["recurrent_kernel"].shape[0]
    zeros = jnp.zeros((x.shape[0], units), x.dtype)
    state0 = (zeros,) if cell == "gru" else (zeros, zeros)

    def body(state: Any, inputs: Any) -> Any:
        x_t, m_t = inputs
        new = step(x_t if hoisted else x_t @ kernel + bias, state)
        keep = m_t[:, None]
        new = tuple(jnp.where(keep, n, s) for n, s in zip(new, state, strict=True))
        return new, (new[0] if sequences else None)

    final, ys = lax.scan(body, state0, (xs, mask.T), reverse=reverse)
    return jnp.swapaxes(ys, 0, 1) if sequences else final[0]


def hand_model(
    cell: str, params: list[dict[str, Any]], x: Any, lengths: Any, hoisted: bool = False
) -> Any:
    """The hand-written stack on a right-padded batch with lengths."""
    mask = jnp.arange(x.shape[1])[None, :] < lengths[:, None]
    base = "gru" if cell == "gru" else "lstm"
    for i, p in enumerate(params):
        seq = i < len(params) - 1
        if cell == "bilstm":
            f = _layer(base, p["forward"], x, mask, seq, hoisted=hoisted)
            b = _layer(base, p["backward"], x, mask, seq, reverse=True, hoisted=hoisted)
            x = jnp.concatenate([f, b], axis=-1)
        else:
            x = _layer(base, p, x, mask, seq, hoisted=hoisted)
    return x


HAND = {
    "scan+where": hand_model,
    "scan+where/hoisted": partial(hand_model, hoisted=True),
}


def _hand_params(cell: str, canonical: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for w in layer_weights(canonical):
        if cell == "bilstm":
            out.append(
                {
                    d: {
                        n: jnp.asarray(w[f"{d}/{n}"])
                        for n in ("kernel", "recurrent_kernel", "bias")
                    }
                    for d in ("forward", "backward")
                }
            )
        else:
            out.append({n: jnp.asarray(v) for n, v in w.items()})
    return out


def _sgd(loss: Callable[..., Any]) -> Callable[..., Any]:
    @jax.jit
    def step(params: Any, *args: Any) -> Any:
        grads = jax.grad(loss)(params, *args)
        return jax.tree.map(lambda p, g: p - LR * g, params, grads)

    return step


class _Trainer:
    """Holds the parameters that a jitted SGD step updates, call after call."""

    def __init__(self, step: Callable[..., Any], params: Any, *args: Any):
        self.step, self.params, self.args = step, params, args

    def __call__(self) -> None:
        self.params = self.step(self.params, *self.args)
        jax.block_until_ready(self.params)


def _blocking(fn: Callable[..., Any], *args: Any) -> Callable[[], None]:
    def run() -> None:
        jax.block_until_ready(fn(*args))

    return run


def _build(cell: str, units: int, mask: str) -> Any:
    return load(cell, units, mask).build("jax", seed=0)


def _gen_fns(model: Any, kind: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(jitted inference fn(variables, x, aux), loss fn(params, state, x, aux)) of a
    generated model; aux is the lengths or the mask, by kind."""
    apply = model.apply

    def call(variables: Any, x: Any, aux: Any) -> Any:
        if kind in ("post", "pre"):
            return apply(variables, x, lengths=aux)
        if kind == "gaps":
            return apply(variables, x, masks=aux)
        return apply(variables, x)

    def loss(params: Any, state: Any, x: Any, aux: Any) -> Any:
        return jnp.mean(call({"params": params, "state": state}, x, aux) ** 2)

    return jax.jit(call), loss


def _aux(data: Data) -> Any:
    if data.kind in ("post", "pre"):
        return jnp.asarray(data.lengths.astype(np.int32))
    if data.kind == "gaps":
        return jnp.asarray(data.mask)
    return None


def _diff(a: Any, b: Any) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


# --------------------------------------------------------------------------
# section 1


def handwritten(row: dict[str, Any], opts: dict[str, Any]) -> list[dict[str, Any]]:
    cell, b, t, u = row["cell"], row["B"], row["T"], row["U"]
    data = make_data(b, t, u, "post")
    gen = _build(cell, u, "post")
    variables = gen.variables
    x = jnp.asarray(data.x)
    lengths = jnp.asarray(data.lengths.astype(np.int32))
    gen_call, gen_loss = _gen_fns(gen, "post")
    hands = HAND
    hp = _hand_params(cell, gen.canonical_weights())
    hand_calls = {k: jax.jit(lambda p, x, n, f=f: f(cell, p, x, n)) for k, f in hands.items()}
    ref = gen_call(variables, x, lengths)
    diffs = {k: _diff(f(hp, x, lengths), ref) for k, f in hand_calls.items()}
    out = []
    for mode in row.get("modes", ("inference", "train")):
        if mode == "inference":
            fns = {"generated": _blocking(gen_call, variables, x, lengths)}
            fns.update({k: _blocking(f, hp, x, lengths) for k, f in hand_calls.items()})
        else:
            state = variables["state"]
            fns = {"generated": _Trainer(_sgd(gen_loss), variables["params"], state, x, lengths)}
            for k, f in hands.items():

                def loss(p: Any, x: Any, n: Any, f: Callable[..., Any] = f) -> Any:
                    return jnp.mean(f(cell, p, x, n) ** 2)

                fns[k] = _Trainer(_sgd(loss), hp, x, lengths)
        m = measure(fns, **opts)
        hand_names = [k for k in fns if k != "generated"]
        base = min(hand_names, key=m.median)
        out.append(
            {
                "section": "handwritten",
                "framework": "jax",
                "cell": cell,
                "B": b,
                "T": t,
                "U": u,
                "size": size_key(b, t, u),
                "mode": mode,
                "variants": m.stats(),
                "baseline": base,
                "ratio": m.ratio("generated", base),
                "other_ratios": {k: m.ratio("generated", k) for k in hand_names if k != base},
                "max_abs_diff": diffs,
                "valid_fraction": round(data.valid_fraction, 4),
                "rounds": m.rounds,
                "wall_s": round(m.wall_s, 2),
            }
        )
    return out


# --------------------------------------------------------------------------
# section 2


def masks(row: dict[str, Any], opts: dict[str, Any]) -> list[dict[str, Any]]:
    cell, b, t, u = row["cell"], row["B"], row["T"], row["U"]
    kinds = row.get("kinds", ("post", "pre", "gaps"))
    models = {"none": _build(cell, u, "none")}
    weights = models["none"].canonical_weights()
    for k in kinds:
        models[k] = _build(cell, u, k)
        models[k].load_canonical(weights)
    datas = {k: make_data(b, t, u, k) for k in ("none", *kinds)}
    xs = {k: jnp.asarray(datas[k].x) for k in kinds}
    xs["none"] = jnp.asarray(make_data(b, t, u, "post").x)
    auxs = {k: _aux(datas[k]) for k in models}
    fns_all = {k: _gen_fns(models[k], k) for k in models}
    out = []
    for mode in row.get("modes", ("inference", "train")):
        fns: dict[str, Callable[[], None]] = {}
        for k, (call, loss) in fns_all.items():
            v = models[k].variables
            if mode == "inference":
                fns[k] = _blocking(call, v, xs[k], auxs[k])
            else:
                fns[k] = _Trainer(_sgd(loss), v["params"], v["state"], xs[k], auxs[k])
        m = measure(fns, **opts)
        out.append(
            {
                "section": "masks",
                "framework": "jax",
                "cell": cell,
                "B": b,
                "T": t,
                "U": u,
                "size": size_key(b, t, u),
                "mode": mode,
                "variants": m.stats(),
                "ratios": {k: m.ratio(k, "none") for k in kinds},
                "valid_fraction": {k: round(datas[k].valid_fraction, 4) for k in kinds},
                "rounds": m.rounds,
                "wall_s": round(m.wall_s, 2),
            }
        )
    return out


# --------------------------------------------------------------------------
# section 4


class _Params:
    """Parameters shared by the training steps of one comparison."""

    def __init__(self, params: Any):
        self.p = params

    def steps(self, step: Callable[..., Any], state: Any, calls: list[tuple[Any, ...]]) -> None:
        for args in calls:
            self.p = step(self.p, state, *args)
        jax.block_until_ready(self.p)


def padding(row: dict[str, Any], opts: dict[str, Any]) -> list[dict[str, Any]]:
    from .padding_plan import plan

    cell, b, t, u = row["cell"], row["B"], row["T"], row["U"]
    p = plan(b, t, u, row.get("n_batches", 8), row.get("n_buckets", 8))
    masked = _build(cell, u, "post")
    plain = _build(cell, u, "none")
    plain.load_canonical(masked.canonical_weights())
    m_call, m_loss = _gen_fns(masked, "post")
    p_call, _ = _gen_fns(plain, "none")
    v = masked.variables
    one = (jnp.asarray(p.one_batch[0]), jnp.asarray(p.one_batch[1].astype(np.int32)))
    exact = [jnp.asarray(x) for x in p.exact_groups]
    epochs = {
        k: [(jnp.asarray(x), jnp.asarray(n.astype(np.int32))) for x, n in bs]
        for k, bs in p.epochs.items()
    }

    def exact_loss(params: Any, state: Any, xs: list[Any]) -> Any:
        variables = {"params": params, "state": state}
        outs = jnp.concatenate([plain.apply(variables, x) for x in xs])
        return jnp.mean(outs**2)

    m_step, x_step = _sgd(m_loss), _sgd(exact_loss)

    def infer(calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> Callable[[], None]:
        return lambda: jax.block_until_ready([f(v, *args) for f, args in calls])

    out = []
    for mode in row.get("modes", ("inference", "train")):
        if mode == "inference":
            groups = {
                "waste": {
                    "padded": infer([(m_call, one)]),
                    "exact": infer([(p_call, (x, None)) for x in exact]),
                },
                "bucketing": {k: infer([(m_call, a) for a in bs]) for k, bs in epochs.items()},
            }
        else:
            params = _Params(v["params"])
            st = v["state"]
            groups = {
                "waste": {
                    "padded": partial(params.steps, m_step, st, [one]),
                    # one step over every group, as the padded batch
                    "exact": partial(params.steps, x_step, st, [(exact,)]),
                },
                "bucketing": {k: partial(params.steps, m_step, st, bs) for k, bs in epochs.items()},
            }
        for group, fns in groups.items():
            m = measure(fns, **opts)
            r = p.row("jax", cell, mode, group, m)
            r["notes"] = ["jax: the jit compilation of every shape happens in the warm-up, untimed"]
            out.append(r)
    return out


SECTIONS = {"handwritten": handwritten, "masks": masks, "padding": padding}
