"""SpatialDropout1D, the layer added by the steps of docs/architecture.md.

Keras 3's definition: in training whole feature channels are dropped, the same
channels at every step of a row (noise_shape ``(batch, 1, features)``), and what
is kept is scaled by ``1 / (1 - rate)``; in inference the layer is the identity;
the mask passes through. The reference is checked against NumPy written here
(and against Keras' own layer with the same keep-mask); every backend against
the reference, masked, in training with an injected ``[B, 1, F]`` keep-mask and
in inference.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

import seqdsl
from seqdsl.initializers import initial_weights
from seqdsl.reference import ReferenceError, run_reference

B, T, F = 3, 5, 6

SOURCE = """
model SD {
    input x: f64[B, T, 6] pad(post, value=0.0) masked
    d = x -> SpatialDropout1D(0.4, name="sd")
    h = d -> LSTM(4, return_sequences=true, name="lstm")
    output d with mask, h
}
"""
SOURCE32 = SOURCE.replace("f64", "f32")

RNG = np.random.default_rng(7)
X = RNG.normal(0.0, 1.5, size=(B, T, F))
LENGTHS = np.array([5, 2, 0])
KEEP = (RNG.random((B, 1, F)) > 0.4).astype(np.float64)
KEEP[0, 0, :2] = (0.0, 1.0)  # both kinds in the first row, whatever the draw


def weights(m: Any, dtype: str = "float64") -> dict[str, np.ndarray]:
    return initial_weights(((la.name, la.weights) for la in m.layers), 3, dtype)


def by_hand(x: np.ndarray, keep: np.ndarray, rate: float) -> np.ndarray:
    return x * np.broadcast_to(keep, x.shape) / (1.0 - rate)


# --------------------------------------------------------------------------
# the front end


def test_catalogue_and_checker() -> None:
    prog = seqdsl.loads(SOURCE)
    m = prog.model()
    sd = next(la for la in m.layers if la.name == "sd")
    assert sd.kind == "SpatialDropout1D" and not sd.weights
    assert m.types["d"].mask is not None  # the mask passes through
    assert m.types["d"] == m.types["x"]


@pytest.mark.parametrize(
    ("decl", "code"),
    [("f32[B, 6]", "SEQ303"), ("i32[B, T, 6]", "SEQ301")],
)
def test_rejects_what_keras_rejects(decl: str, code: str) -> None:
    _, diags = seqdsl.analyze(
        f"model M {{\n input x: {decl}\n y = x -> SpatialDropout1D(0.5)\n output y\n}}"
    )
    assert code in {d.code for d in diags if d.is_error}


def test_rate_is_checked() -> None:
    _, diags = seqdsl.analyze(
        "model M {\n input x: f32[B, T, 2]\n y = x -> SpatialDropout1D(1.0)\n output y\n}"
    )
    assert any(d.is_error for d in diags)


# --------------------------------------------------------------------------
# the reference


def test_reference_against_numpy() -> None:
    m = seqdsl.loads(SOURCE).model()
    w = weights(m)
    train = run_reference(
        m, w, [X], lengths={"x": LENGTHS}, training=True, dropout_masks={"sd": KEEP}
    )
    (d, d_mask), _h = train.outputs
    np.testing.assert_array_equal(d, by_hand(X, KEEP, 0.4))
    np.testing.assert_array_equal(d_mask, np.arange(T)[None, :] < LENGTHS[:, None])
    # the same channels at every step: a dropped channel is 0 over the whole row
    dropped = np.broadcast_to(KEEP == 0, X.shape)
    assert dropped.any() and not d[dropped].any()
    infer = run_reference(m, w, [X], lengths={"x": LENGTHS})
    np.testing.assert_array_equal(infer.outputs[0][0], X)
    with pytest.raises(ReferenceError, match="'sd'"):
        run_reference(m, w, [X], lengths={"x": LENGTHS}, training=True)
    with pytest.raises(ReferenceError, match="shape"):
        run_reference(
            m, w, [X], lengths={"x": LENGTHS}, training=True,
            dropout_masks={"sd": np.ones((B, T, F))},
        )  # fmt: skip


def test_reference_against_keras() -> None:
    keras = pytest.importorskip("keras")
    layer = keras.layers.SpatialDropout1D(0.4)
    # Keras' own layer, its random keep-mask replaced by ours (its noise_shape is [B, 1, F])
    layer.call = lambda inputs, training=False: inputs * (KEEP / 0.6) if training else inputs
    m = seqdsl.loads(SOURCE).model()
    ref = run_reference(
        m, weights(m), [X], lengths={"x": LENGTHS}, training=True, dropout_masks={"sd": KEEP}
    )
    np.testing.assert_allclose(ref.outputs[0][0], np.asarray(layer(X, training=True)), atol=1e-12)
    real = keras.layers.SpatialDropout1D(0.4, seed=1)
    noisy = np.asarray(real(np.ones((B, T, F)), training=True))
    # Keras' layer itself drops whole channels: constant over time in every row
    assert (noisy == noisy[:, :1, :]).all() and (noisy == 0).any()


# --------------------------------------------------------------------------
# the backends against the reference


def reference_outputs(training: bool, dtype: str = "float64") -> list[np.ndarray]:
    m = seqdsl.loads(SOURCE).model()
    kw: dict[str, Any] = {"dropout_masks": {"sd": KEEP}} if training else {}
    r = run_reference(m, weights(m, dtype), [X], lengths={"x": LENGTHS}, training=training, **kw)
    (d, d_mask), h = r.outputs
    return [d, d_mask, h]


def flat(outputs: Any) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for o in outputs if isinstance(outputs, (tuple, list)) else (outputs,):
        for v in o if isinstance(o, (tuple, list)) else (o,):
            out.append(v.detach().numpy() if hasattr(v, "detach") else np.asarray(v))
    return out


def run_torch(training: bool, standalone: bool = False) -> list[np.ndarray]:
    torch = pytest.importorskip("torch")
    prog = seqdsl.loads(SOURCE)
    if standalone:
        from seqdsl.emit import load_source

        text = prog.compile("torch", standalone=True)
        # it imports nothing of seqdsl (its torch operator is named seqdsl::fused_rnn)
        assert not re.search(r"^\s*(import|from)\s+seqdsl\b", text, re.M)
        net = load_source(text, "SD").SD(dtype=torch.float64)
    else:
        net = prog.build("torch", dtype="float64")
    net.load_canonical(weights(prog.model()))
    net.train(training)
    drops = {"sd": KEEP} if training else None
    with torch.no_grad():
        return flat(net(X, lengths={"x": LENGTHS}, dropout_masks=drops))


def run_jax(training: bool) -> list[np.ndarray]:
    jax = pytest.importorskip("jax")
    with jax.enable_x64(True):
        prog = seqdsl.loads(SOURCE)
        net = prog.build("jax", dtype="float64")
        net.load_canonical(weights(prog.model()))
        drops = {"sd": KEEP} if training else None
        return flat(net(X, lengths={"x": LENGTHS}, training=training, dropout_masks=drops))


def run_keras(training: bool) -> list[np.ndarray]:
    pytest.importorskip("keras")
    from seqdsl.emit import emit, load_source

    m = seqdsl.loads(SOURCE32).model()
    mod = load_source(emit(m, "keras"), m.name)
    net = mod.build_model()
    net.load_canonical(weights(m, "float32"))
    args = [X.astype(np.float32), LENGTHS.astype(np.int32)]
    if training:
        with mod.dropout_masks(net, {"sd": KEEP.astype(np.float32)}):
            return flat(net(args, training=True))
    return flat(net(args))


RUNNERS = {"torch": run_torch, "jax": run_jax, "keras": run_keras}


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("backend", sorted(RUNNERS))
def test_backend_matches_reference(backend: str, training: bool) -> None:
    got = RUNNERS[backend](training)
    want = reference_outputs(training)
    tol = 1e-5 if backend == "keras" else 1e-12  # Keras runs float32 here
    assert len(got) == len(want) == 3
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g.astype(np.float64), r.astype(np.float64), atol=tol)
    assert np.abs(want[2]).max() > 1e-3


def test_training_flag_of_a_call_wins() -> None:
    """`SpatialDropout1D(0.4)(x, training=false)` is the identity even in training."""
    src = SOURCE.replace('d = x -> SpatialDropout1D(0.4, name="sd")',
                         'd = SpatialDropout1D(0.4, name="sd")(x, training=false)')  # fmt: skip
    m = seqdsl.loads(src).model()
    ref = run_reference(m, weights(m), [X], lengths={"x": LENGTHS}, training=True)
    np.testing.assert_array_equal(ref.outputs[0][0], X)
    pytest.importorskip("torch")
    net = seqdsl.loads(src).build("torch", dtype="float64")
    net.load_canonical(weights(m))
    net.train()
    np.testing.assert_array_equal(flat(net(X, lengths={"x": LENGTHS}))[0], X)


def test_standalone_torch_module_runs_the_same() -> None:
    np.testing.assert_array_equal(run_torch(True, standalone=True)[0], run_torch(True)[0])


def test_drawn_masks_drop_whole_channels() -> None:
    """Without injected keep-masks each backend draws one per row and channel: on an
    input of ones a dropped channel is 0 at every step, a kept one 1 / (1 - rate)."""
    ones = np.ones((8, T, F))
    outs = []
    if "torch" in RUNNERS:
        torch = pytest.importorskip("torch")
        net = seqdsl.loads(SOURCE).build("torch", dtype="float64")
        net.train()
        torch.manual_seed(0)
        with torch.no_grad():
            outs.append(flat(net(ones, lengths={"x": np.full(8, T)}))[0])
    jax = pytest.importorskip("jax")
    with jax.enable_x64(True):
        jnet = seqdsl.loads(SOURCE).build("jax", dtype="float64")
        y = jnet(ones, lengths={"x": np.full(8, T)}, training=True, rng=jax.random.key(0))
        outs.append(flat(y)[0])
    for d in outs:
        assert (d == d[:, :1, :]).all()  # the same at every step
        assert set(np.unique(d).round(12)) == {0.0, round(1 / 0.6, 12)}  # both drawn
