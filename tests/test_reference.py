"""The reference interpreter (seqdsl/reference.py): against real Keras, by hand, on the examples.

Keras 3 (TensorFlow backend, float32, CPU) is the oracle on the subset where
docs/semantics.md follows Keras; elsewhere the expected numbers are computed
by hand here, in a few lines each. Every case has a full row, a padded row and
an empty row, and asserts that the compared values are not all (near) zero.
Where Keras deviates on purpose (docs/semantics.md, "Deviations from Keras"),
the test pins both Keras' behaviour and ours.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import seqdsl
from seqdsl.checker import CheckedModel
from seqdsl.dims import Dim
from seqdsl.padding import lengths_to_mask
from seqdsl.reference import (
    ACTIVATION_FUNCTIONS,
    ReferenceError,
    mask_fits_kind,
    reference_weights,
    run_reference,
)
from seqdsl.types import MaskType, TensorType

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.seq"))
TOL = dict(rtol=1e-5, atol=1e-5)  # keras computes in float32


@pytest.fixture(scope="module")
def keras() -> ModuleType:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    k = pytest.importorskip("keras")
    if k.backend.backend() != "tensorflow":
        pytest.skip("these comparisons pin Keras' TensorFlow backend")
    return k


def model_of(text: str) -> CheckedModel:
    return seqdsl.loads(text).model()


def rand_weights(m: CheckedModel, seed: int, scale: float = 0.6) -> dict[str, np.ndarray]:
    """Random non-trivial weights (biases included) in the canonical layout."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for layer in m.layers:
        for w in layer.weights:
            if w.name.endswith("moving_variance"):
                out[f"{layer.name}/{w.name}"] = rng.uniform(0.5, 1.5, w.shape)
            else:
                out[f"{layer.name}/{w.name}"] = rng.normal(0.0, scale, w.shape)
    return out


def keras_list(m: CheckedModel, layer: str, w: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A layer's weights in Keras' get_weights() order (the catalogue's order)."""
    info = m.layer(layer)
    return [w[f"{layer}/{s.name}"].astype(np.float32) for s in info.weights]


def close(a: Any, b: Any, what: str = "") -> None:
    np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(b, np.float64), err_msg=what, **TOL
    )


def nontrivial(*arrays: Any) -> None:
    assert max(float(np.abs(np.asarray(a, np.float64)).max()) for a in arrays) > 1e-3


B, T, F, U = 4, 5, 3, 4
# one full row, two padded rows, one empty row, per mask kind
MASKS = {
    "post": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], bool),
    "pre": np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], bool),
    "gap": np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [0, 1, 0, 0, 1], [0, 0, 0, 0, 0]], bool),
}


# --------------------------------------------------------------------------
# activations


def test_activations_match_keras(keras: ModuleType) -> None:
    x = np.linspace(-7.0, 7.0, 57).reshape(3, 19)
    for name, fn in ACTIVATION_FUNCTIONS.items():
        k = np.asarray(keras.activations.get(name)(x.astype(np.float32)))
        close(fn(x), k, name)
    assert set(ACTIVATION_FUNCTIONS) == set(seqdsl.catalogue.ACTIVATIONS)


# --------------------------------------------------------------------------
# recurrent layers against Keras


def _rnn_ctor(cell: str, args: list[str]) -> str:
    if cell == "RNN_LSTMCell":
        cell_args = [a for a in args if a.split("=")[0] not in _FLAGS]
        flags = [a for a in args if a.split("=")[0] in _FLAGS]
        return f'RNN({", ".join([f"LSTMCell({chr(44).join(cell_args)})", *flags])}, name="y_layer")'
    base = "GRU" if cell == "GRU_v1" else cell
    extra = ["reset_after=false"] if cell == "GRU_v1" else []
    return f'{base}({", ".join(args + extra)}, name="y_layer")'


_FLAGS = ("return_sequences", "return_state", "go_backwards", "masked_output", "stateful")


def _rnn_source(ctor: str, n_init: int, n_out: int, seq: bool) -> str:
    lines = ["model M {", f"    input x: f64[B, T, {F}]", "    input m: mask[B, T]"]
    lines += [f"    input s{i}: f64[B, {U}]" for i in range(n_init)]
    call = ["x", "mask=m"]
    if n_init:
        call.append(f"initial_state=[{', '.join(f's{i}' for i in range(n_init))}]")
    res = [f"r{i}" for i in range(n_out)]
    lines.append(f"    {', '.join(res)} = {ctor}({', '.join(call)})")
    outs = [f"{r} with mask" if seq and i < (2 if n_out > 1 and 'merge_mode=none' in ctor else 1) else r
            for i, r in enumerate(res)]  # fmt: skip
    lines += [f"    output {', '.join(outs)}", "}"]
    return "\n".join(lines)


def _keras_cell_layer(
    keras: ModuleType, cell: str, kw: dict[str, Any], cell_kw: dict[str, Any]
) -> Any:
    L = keras.layers
    if cell == "LSTM":
        return L.LSTM(U, **cell_kw, **kw)
    if cell == "GRU":
        return L.GRU(U, **cell_kw, **kw)
    if cell == "GRU_v1":
        return L.GRU(U, reset_after=False, **cell_kw, **kw)
    if cell == "SimpleRNN":
        return L.SimpleRNN(U, **cell_kw, **kw)
    assert cell == "RNN_LSTMCell"
    return L.RNN(L.LSTMCell(U, **cell_kw), **kw)


RNN_OPTIONS = [
    dict(rs=True, mo="zero"),
    dict(rs=True, mo="carry"),
    dict(rs=False),
    dict(rs=True, gb=True, mo="zero"),
    dict(rs=True, gb=True, mo="carry", rst=True, init=True),
    dict(rs=False, gb=True, rst=True, init=True),
    dict(rs=True, rst=True, init=True, mo="zero"),
    dict(rs=True, mo="carry", act=True),
]
CELLS = ["LSTM", "GRU", "GRU_v1", "SimpleRNN", "RNN_LSTMCell"]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("opt", range(len(RNN_OPTIONS)))
def test_recurrent_matches_keras(keras: ModuleType, cell: str, opt: int) -> None:
    o = RNN_OPTIONS[opt]
    rs, rst, gb = bool(o.get("rs")), bool(o.get("rst")), bool(o.get("gb"))
    mo = str(o.get("mo", "zero"))
    args = [str(U)]
    cell_kw: dict[str, Any] = {}
    if o.get("act"):  # non-default activations, no bias
        args += ["activation=relu", "use_bias=false"]
        cell_kw = dict(activation="relu", use_bias=False)
        if cell != "SimpleRNN":
            args.append("recurrent_activation=hard_sigmoid")
            cell_kw["recurrent_activation"] = "hard_sigmoid"
    if rs:
        args.append("return_sequences=true")
    if rst:
        args.append("return_state=true")
    if gb:
        args.append("go_backwards=true")
    if mo != "zero":
        args.append(f"masked_output={mo}")
    n_states = 2 if cell in ("LSTM", "RNN_LSTMCell") else 1
    n_init = n_states if o.get("init") else 0
    m = model_of(_rnn_source(_rnn_ctor(cell, args), n_init, 1 + (n_states if rst else 0), rs))
    w = rand_weights(m, opt)
    rng = np.random.default_rng(100 + opt)
    x = rng.normal(0.0, 1.2, (B, T, F))
    init = [rng.normal(0.0, 0.8, (B, U)) for _ in range(n_init)]
    kw: dict[str, Any] = dict(return_sequences=rs, return_state=rst, go_backwards=gb)
    if mo == "zero" and rs:  # (with return_sequences=false it would zero Keras' last output)
        kw["zero_output_for_mask"] = True
    layer = _keras_cell_layer(keras, cell, kw, cell_kw)
    kinit = [s.astype(np.float32) for s in init] or None
    layer(x.astype(np.float32), initial_state=kinit)
    layer.set_weights(keras_list(m, "y_layer", w))
    for kind, mask in MASKS.items():
        r = run_reference(m, w, [x, mask, *init])
        ko = layer(x.astype(np.float32), mask=mask, initial_state=kinit)
        ko = list(ko) if rst else [ko]
        ours = [o[0] if isinstance(o, tuple) else o for o in r.outputs]
        for i, (a, b) in enumerate(zip(ours, ko, strict=True)):
            close(a, b, f"{kind}: output {i}")
        nontrivial(*ours)
        if rs:
            (_, our_mask) = r.outputs[0]
            k_mask = np.asarray(
                layer.compute_mask(x, mask)[0] if rst else layer.compute_mask(x, mask)
            )
            if gb:  # deviation: Keras keeps the input mask on the reversed outputs
                np.testing.assert_array_equal(k_mask, mask)
                np.testing.assert_array_equal(our_mask, mask[:, ::-1])
            else:
                np.testing.assert_array_equal(our_mask, k_mask)
            if mo == "zero":
                assert not np.asarray(ko[0])[~our_mask].any()
        # the empty row: zero output (last or every step), initial states kept
        assert not ours[0][3].any()
        for i, s in enumerate(ours[1:]):
            np.testing.assert_allclose(s[3], init[i][3] if init else 0.0)


MERGE_MODES = ["concat", "sum", "mul", "ave", "none"]


@pytest.mark.parametrize("mode", MERGE_MODES)
@pytest.mark.parametrize(
    "variant", ["LSTM-seq", "GRU-last-state", "LSTM-seq-state", "SimpleRNN-last"]
)
def test_bidirectional_matches_keras(keras: ModuleType, mode: str, variant: str) -> None:
    cell, *flags = variant.split("-")
    rs, rst = "seq" in flags, "state" in flags
    n_states = 2 if cell == "LSTM" else 1
    inner = (
        [str(U)]
        + (["return_sequences=true"] if rs else [])
        + (["return_state=true"] if rst else [])
    )
    ctor = f'Bidirectional({cell}({", ".join(inner)}), merge_mode={mode}, name="y_layer")'
    n_init = 2 * n_states if rst else 0
    n_out = (2 if mode == "none" else 1) + (2 * n_states if rst else 0)
    m = model_of(_rnn_source(ctor, n_init, n_out, rs))
    w = rand_weights(m, 7)
    rng = np.random.default_rng(8)
    x = rng.normal(0.0, 1.2, (B, T, F))
    init = [rng.normal(0.0, 0.8, (B, U)) for _ in range(n_init)]
    kinit = [s.astype(np.float32) for s in init] or None
    layer = keras.layers.Bidirectional(
        getattr(keras.layers, cell)(U, return_sequences=rs, return_state=rst),
        merge_mode=None if mode == "none" else mode,
    )
    layer(x.astype(np.float32), initial_state=kinit)
    layer.set_weights(keras_list(m, "y_layer", w))
    for kind, mask in MASKS.items():
        r = run_reference(m, w, [x, mask, *init])
        ko = layer(x.astype(np.float32), mask=mask, initial_state=kinit)
        ko = list(ko) if isinstance(ko, (list, tuple)) else [ko]
        ours = [o[0] if isinstance(o, tuple) else o for o in r.outputs]
        assert len(ours) == len(ko)
        for i, (a, b) in enumerate(zip(ours, ko, strict=True)):
            close(a, b, f"{kind}: output {i}")
        nontrivial(*ours)
        if rs:
            np.testing.assert_array_equal(r.outputs[0][1], mask)
            assert not ours[0][~mask].any()  # zeros at masked steps, both halves
        else:
            assert not ours[0][3].any()
        if rst:
            for i, s in enumerate(ours[-2 * n_states :]):
                np.testing.assert_allclose(s[3], init[i][3])


def test_bidirectional_last_is_merge_of_final_states() -> None:
    """return_sequences=false: concat(h_fw final, h_bw final), not y[:, -1]."""
    src = f"""model M {{
    input x: f64[B, T, {F}]
    input m: mask[B, T]
    y, hf, cf, hb, cb = Bidirectional(LSTM({U}, return_state=true), name="y_layer")(x, mask=m)
    s = Bidirectional(LSTM({U}, return_sequences=true), name="y_layer")(x, mask=m)
    output y, hf, hb, s with mask
}}"""
    # two layers cannot share a name: build the sequence twin separately
    m = model_of(
        src.replace(
            'name="y_layer")(x, mask=m)\n    output', 'name="z_layer")(x, mask=m)\n    output'
        )
    )
    w = rand_weights(m, 3)
    for k in list(w):
        if k.startswith("y_layer/"):
            w["z_layer/" + k[8:]] = w[k]
    x = np.random.default_rng(4).normal(size=(B, T, F))
    mask = MASKS["post"]
    y, hf, hb, (s, _) = run_reference(m, w, [x, mask]).outputs
    close(y, np.concatenate([hf, hb], axis=1))
    lens = mask.sum(1)
    for b in range(3):  # forward final at the last valid step, backward final at t=0
        close(hf[b], s[b, lens[b] - 1, :U])
        close(hb[b], s[b, 0, U:])
    nontrivial(y)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "SimpleRNN"])
def test_rnn_cell_equals_layer_in_bidirectional(cell: str) -> None:
    """Bidirectional(RNN(XCell(...))) computes Bidirectional(X(...)), same weights."""
    src = f"""model M {{
    input x: f64[B, T, {F}]
    input m: mask[B, T]
    a = Bidirectional({cell}({U}, return_sequences=true, activation=softsign), name="a")(x, mask=m)
    b = Bidirectional(RNN({cell}Cell({U}, activation=softsign), return_sequences=true), name="b")(x, mask=m)
    output a, b
}}"""
    m = model_of(src)
    w = rand_weights(m, 1)
    w.update({"b/" + k[2:]: v for k, v in w.items() if k.startswith("a/")})
    x = np.random.default_rng(0).normal(size=(B, T, F))
    a, b = run_reference(m, w, [x, MASKS["gap"]]).outputs
    np.testing.assert_array_equal(a, b)
    nontrivial(a)


def test_recurrent_dropout_matches_keras(keras: ModuleType) -> None:
    """Injected keep-masks act where Keras' cached masks do: input before the
    kernel, h_tm1 before the recurrent kernel, the same mask for every gate."""
    rate, rrate = 0.3, 0.4
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 1.2, (B, T, F))
    mask = MASKS["gap"]
    keep_in = (rng.random((B, F)) > rate).astype(np.float64)
    keep_rec = (rng.random((B, U)) > rrate).astype(np.float64)
    for cell, n_gates in (("LSTM", 4), ("GRU", 3), ("GRU_v1", 3), ("SimpleRNN", None)):
        for rd in (0.0, rrate):
            args = [str(U), f"dropout={rate}", f"recurrent_dropout={rd}", "return_sequences=true"]
            m = model_of(
                _rnn_source(_rnn_ctor(cell, args), 0, 1, True).replace(
                    "mask=m)", "mask=m, training=true)"
                )
            )
            w = rand_weights(m, 11)
            layer = _keras_cell_layer(keras, cell, dict(return_sequences=True, zero_output_for_mask=True),
                                      dict(dropout=rate, recurrent_dropout=rd))  # fmt: skip
            layer(x.astype(np.float32))
            layer.set_weights(keras_list(m, "y_layer", w))
            dm = {"y_layer/input": keep_in, "y_layer/recurrent": keep_rec}
            ours = run_reference(m, w, [x, mask], dropout_masks=dm).outputs[0][0]
            kin = (keep_in / (1 - rate)).astype(np.float32)
            krec = (keep_rec / (1 - rd if rd else 1)).astype(np.float32)
            # implementation 1 (recurrent_dropout > 0) indexes one mask per gate
            layer.cell._dropout_mask = [kin] * n_gates if (n_gates and rd) else kin
            layer.cell._recurrent_dropout_mask = (
                ([krec] * n_gates if n_gates else krec) if rd else None
            )
            ko = np.asarray(layer(x.astype(np.float32), mask=mask, training=True))
            close(ours, ko, f"{cell} recurrent_dropout={rd}")
            ones = {k: np.ones_like(v) for k, v in dm.items()}
            kept = run_reference(m, w, [x, mask], dropout_masks=ones).outputs[0][0]
            assert np.abs(kept - ours).max() > 1e-3  # the masks did something
            nontrivial(ours)
    # a missing mask in training is an error, never a silent draw
    with pytest.raises(ReferenceError, match="y_layer/input"):
        run_reference(m, w, [x, mask])


def test_bidirectional_dropout_keys() -> None:
    src = f"""model M {{
    input x: f64[B, T, {F}]
    y = Bidirectional(SimpleRNN({U}, dropout=0.5, recurrent_dropout=0.5), merge_mode=none, name="bi")(x, training=true)
    output y
}}"""
    src = src.replace("    y = ", "    y, z = ").replace("output y", "output y, z")
    m = model_of(src)
    w = rand_weights(m, 1)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(B, T, F))
    dm = {f"bi/{d}/{k}": (rng.random((B, n)) > 0.5).astype(float)
          for d in ("forward", "backward") for k, n in (("input", F), ("recurrent", U))}  # fmt: skip
    y, z = run_reference(m, w, [x], dropout_masks=dm).outputs

    def simple(prefix: str, xs: np.ndarray) -> np.ndarray:
        h = np.zeros((B, U))
        for t in range(T):
            xt = xs[:, t] * dm[f"bi/{prefix}/input"] / 0.5
            hr = h * dm[f"bi/{prefix}/recurrent"] / 0.5
            h = np.tanh(
                xt @ w[f"bi/{prefix}/kernel"]
                + hr @ w[f"bi/{prefix}/recurrent_kernel"]
                + w[f"bi/{prefix}/bias"]
            )
        return h

    close(y, simple("forward", x))
    close(z, simple("backward", x[:, ::-1]))
    nontrivial(y, z)


# --------------------------------------------------------------------------
# other layers against Keras


def test_embedding_masking_lstm_match_keras(keras: ModuleType) -> None:
    m = model_of("""model M {
    input ids: i32[B, T] pad(post, value=0)
    input f: f64[B, T, 3] pad(pre, value=0.0)
    a = ids -> Embedding(7, 3, mask_zero=true, name="emb")
    b = f -> Masking(mask_value=0.0)
    y = LSTM(4, return_sequences=true, name="l1")(a)
    z = GRU(4, name="l2")(b)
    output a with mask, b with mask, y with mask, z
}""")
    w = rand_weights(m, 2)
    rng = np.random.default_rng(3)
    ids = np.array([[1, 2, 3, 4, 5], [6, 1, 2, 0, 0], [3, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    f = rng.normal(size=(B, T, 3)) * MASKS["pre"][..., None]
    f[0, 2, 1] = 0.0  # a zero feature does not mask its step
    (a, am), (b, bm), (y, ym), z = run_reference(m, w, [ids, f]).outputs
    L = keras.layers
    emb, msk = L.Embedding(7, 3, mask_zero=True), L.Masking(0.0)
    l1 = L.LSTM(4, return_sequences=True, zero_output_for_mask=True)
    l2 = L.GRU(4)
    ka = emb(ids)
    emb.set_weights(keras_list(m, "emb", w))
    ka, kam = emb(ids), np.asarray(emb.compute_mask(ids))
    kb, kbm = msk(f.astype(np.float32)), np.asarray(msk.compute_mask(f.astype(np.float32)))
    l1(ka, mask=kam)
    l1.set_weights(keras_list(m, "l1", w))
    l2(kb, mask=kbm)
    l2.set_weights(keras_list(m, "l2", w))
    close(a, ka)
    np.testing.assert_array_equal(am, kam)
    np.testing.assert_array_equal(am, MASKS["post"])
    close(b, kb)
    np.testing.assert_array_equal(bm, kbm)
    np.testing.assert_array_equal(bm, MASKS["pre"])
    close(y, l1(ka, mask=kam))
    np.testing.assert_array_equal(ym, am)
    close(z, l2(kb, mask=kbm))
    assert not z[3].any() and not y[3].any()
    nontrivial(a, b, y, z)


def test_dense_layernorm_batchnorm_match_keras(keras: ModuleType) -> None:
    m = model_of("""model M {
    input x: f64[B, T, 3] pad(post) masked
    d = Dense(4, activation=tanh, name="d")(x)
    n = LayerNormalization(name="ln")(d)
    n2 = LayerNormalization(center=false, epsilon=0.01, name="ln2")(d)
    bi = BatchNormalization(name="bn")(n)
    bt = BatchNormalization(momentum=0.9, name="bt")(n, training=true)
    td = TimeDistributed(Dense(2), name="td")(bi)
    output d, n, n2, bi, bt, td with mask
}""")
    w = rand_weights(m, 4)
    for k in ("bt/moving_mean", "bt/moving_variance"):
        w[k] = w[k.replace("bt", "bn")].copy()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(B, T, 3))
    lens = np.array([5, 3, 1, 0])
    r = run_reference(m, w, [x], lengths={"x": lens})
    d, n, n2, bi, bt, (td, tdm) = r.outputs
    L = keras.layers
    mask = lengths_to_mask(lens, T)
    layers = {
        "d": L.Dense(4, activation="tanh"),
        "ln": L.LayerNormalization(),
        "ln2": L.LayerNormalization(center=False, epsilon=0.01),
        "bn": L.BatchNormalization(),
        "bt": L.BatchNormalization(momentum=0.9),
        "td": L.TimeDistributed(L.Dense(2)),
    }
    x32 = x.astype(np.float32)
    layers["d"](x32)
    for k, lay in layers.items():
        if k != "d":
            lay(np.zeros((1, T, 4 if k != "td" else 4), np.float32))
        lay.set_weights(keras_list(m, k, w))
    kd = layers["d"](x32)
    close(d, kd)
    kn = layers["ln"](kd)
    close(n, kn)
    close(n2, layers["ln2"](kd))
    close(bi, layers["bn"](kn, training=False))
    close(bt, layers["bt"](kn, training=True, mask=mask))  # masked moments
    close(r.updated["bt/moving_mean"], layers["bt"].moving_mean)
    close(r.updated["bt/moving_variance"], layers["bt"].moving_variance)
    assert set(r.updated) == {"bt/moving_mean", "bt/moving_variance"}
    close(td, layers["td"](layers["bn"](kn, training=False)))
    np.testing.assert_array_equal(tdm, mask)
    nontrivial(d, n, n2, bi, bt, td)
    # the moments are over the valid steps only: changing padded values changes nothing
    x2 = x.copy()
    x2[~mask] = 50.0
    r2 = run_reference(m, w, [x2], lengths={"x": lens})
    close(r2.updated["bt/moving_mean"], r.updated["bt/moving_mean"])
    close(r2.outputs[4][mask], bt[mask])


def test_batchnorm_not_trainable_runs_inference() -> None:
    m = model_of("""model M {
    input x: f64[B, 3]
    y = BatchNormalization(trainable=false, name="bn")(x, training=true)
    output y
}""")
    w = rand_weights(m, 1)
    x = np.random.default_rng(0).normal(size=(B, 3))
    r = run_reference(m, w, [x])
    close(
        r.outputs[0],
        (x - w["bn/moving_mean"]) / np.sqrt(w["bn/moving_variance"] + 1e-3) * w["bn/gamma"]
        + w["bn/beta"],
    )
    assert r.updated == {}


@pytest.mark.parametrize(
    "conv",
    ["3, padding=valid", "3, padding=same", "3, padding=causal", "2, strides=2", "3, strides=2, padding=same",
     "2, dilation_rate=2, padding=causal", "3, dilation_rate=2, padding=same", "4, strides=3, padding=causal"],
)  # fmt: skip
def test_conv1d_matches_keras_unmasked(keras: ModuleType, conv: str) -> None:
    m = model_of(f"""model M {{
    input x: f64[B, 7, 3]
    y = Conv1D(4, {conv}, activation=relu, name="c")(x)
    output y
}}""")
    w = rand_weights(m, 9)
    x = np.random.default_rng(1).normal(size=(B, 7, 3))
    kw = {}
    for part in conv.split(", ")[1:]:
        k, v = part.split("=")
        kw[k] = int(v) if v.isdigit() else v
    layer = keras.layers.Conv1D(4, int(conv.split(",")[0]), activation="relu", **kw)
    layer(x.astype(np.float32))
    layer.set_weights(keras_list(m, "c", w))
    y = run_reference(m, w, [x]).outputs[0]
    close(y, layer(x.astype(np.float32)))
    nontrivial(y)


@pytest.mark.parametrize("kind", ["MaxPooling1D", "AveragePooling1D"])
@pytest.mark.parametrize(
    "args", ["2", "3, strides=2", "2, padding=same", "3, strides=2, padding=same"]
)
def test_pooling_matches_keras_unmasked(keras: ModuleType, kind: str, args: str) -> None:
    m = model_of(f"model M {{\n input x: f64[B, 7, 3]\n y = {kind}({args})(x)\n output y\n}}")
    x = np.random.default_rng(2).normal(size=(B, 7, 3))
    kw: dict[str, Any] = {}
    for part in args.split(", ")[1:]:
        k, v = part.split("=")
        kw[k] = int(v) if v.isdigit() else v
    y = run_reference(m, {}, [x]).outputs[0]
    close(y, getattr(keras.layers, kind)(int(args.split(",")[0]), **kw)(x.astype(np.float32)))
    nontrivial(y)


def test_global_average_pooling_matches_keras_on_nonempty_rows(keras: ModuleType) -> None:
    m = model_of("""model M {
    input x: f64[B, T, 3]
    input m: mask[B, T]
    a = GlobalAveragePooling1D()(x, mask=m)
    b = GlobalAveragePooling1D(keepdims=true)(x, mask=m)
    c = GlobalMaxPooling1D()(x, mask=m)
    output a, b, c
}""")
    x = np.random.default_rng(3).normal(size=(B, T, 3))
    for kind, mask in MASKS.items():
        a, b, c = run_reference(m, {}, [x, mask]).outputs
        k = np.asarray(keras.layers.GlobalAveragePooling1D()(x.astype(np.float32), mask=mask))
        close(a[:3], k[:3], kind)
        assert np.isnan(k[3]).all()  # deviation 2: Keras gives NaN for an empty row
        assert not a[3].any() and not c[3].any()  # we give 0
        close(b[:, 0], a)
        # GlobalMaxPooling1D: max over the valid steps (Keras ignores the mask)
        for row in range(3):
            close(c[row], x[row][mask[row]].max(axis=0))
        nontrivial(a, c)


def test_merges_and_mask_and() -> None:
    m = model_of("""model M {
    input a: f64[B, T, 2]
    input b: f64[B, T, 2]
    input ma: mask[B, T]
    input mb: mask[B, T]
    p = Dense(2, name="p")(a, mask=ma)
    q = Dense(2, name="q")(b, mask=mb)
    s = add(p, q, b)
    d = subtract(p, q)
    x = multiply(p, q)
    v = average(p, q, b)
    hi = maximum(p, q)
    lo = minimum(p, q)
    cf = concat(p, b, axis=features)
    output s with mask, d with mask, x with mask, v with mask, hi with mask, lo with mask, cf with mask
}""")
    w = rand_weights(m, 0)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, B, T, 2))
    ma, mb = MASKS["post"], MASKS["gap"]
    outs = run_reference(m, w, [a, b, ma, mb]).outputs
    p = a @ w["p/kernel"] + w["p/bias"]
    q = b @ w["q/kernel"] + w["q/bias"]
    expect = [
        p + q + b,
        p - q,
        p * q,
        (p + q + b) / 3,
        np.maximum(p, q),
        np.minimum(p, q),
        np.concatenate([p, b], -1),
    ]
    for i, ((val, mk), e) in enumerate(zip(outs, expect, strict=True)):
        close(val, e, str(i))
        np.testing.assert_array_equal(
            mk, ma & mb if i < 6 else ma
        )  # an unmasked input imposes nothing
    nontrivial(*[o[0] for o in outs])


def test_keras_merges_or_their_masks(keras: ModuleType) -> None:
    """Deviation 4 of docs/semantics.md: what Keras does instead of AND."""
    a = np.ones((B, T, 2), np.float32)
    ma, mb = MASKS["post"], MASKS["gap"]
    add, cat = keras.layers.Add(), keras.layers.Concatenate(axis=-1)
    np.testing.assert_array_equal(np.asarray(add.compute_mask([a, a], [ma, mb])), ma | mb)
    assert add.compute_mask([a, a], [ma, None]) is None
    np.testing.assert_array_equal(np.asarray(cat.compute_mask([a, a], [ma, mb])), ma | mb)
    assert np.asarray(cat.compute_mask([a, a], [ma, None])).all()


# --------------------------------------------------------------------------
# semantics by hand


def test_temporal_softmax_by_hand() -> None:
    m = model_of("""model M {
    input x: f64[B, T, 2]
    input m: mask[B, T]
    y = TemporalSoftmax()(x, mask=m)
    output y
}""")
    x = np.random.default_rng(1).normal(0, 3, size=(B, T, 2))
    x[0, 0, 0] = 800.0  # max-subtracted: no overflow
    for kind, mask in MASKS.items():
        y = run_reference(m, {}, [x, mask]).outputs[0]
        for b in range(B):
            for f in range(2):
                v = mask[b]
                if not v.any():
                    assert not y[b, :, f].any()
                    continue
                e = np.exp(x[b, v, f] - x[b, v, f].max())
                close(y[b, v, f], e / e.sum(), kind)
                assert not y[b, ~v, f].any()
        assert np.isfinite(y).all()
        close(y.sum(axis=1)[:3], np.ones((3, 2)))


def _window_expect(
    mask: np.ndarray, t_out: int, k: int, s: int, d: int, padding: str
) -> np.ndarray:
    out = np.zeros((mask.shape[0], t_out), bool)
    for j in range(t_out):
        if padding == "valid":
            out[:, j] = mask[:, [j * s + i * d for i in range(k)]].all(axis=1)
        else:
            out[:, j] = mask[:, j * s]
    return out


@pytest.mark.parametrize(
    "k,s,d,padding",
    [(3, 1, 1, "valid"), (2, 2, 1, "valid"), (3, 2, 1, "valid"), (2, 1, 2, "valid"), (3, 1, 1, "same"),
     (3, 2, 1, "same"), (2, 3, 1, "same"), (3, 1, 1, "causal"), (2, 2, 1, "causal"), (2, 1, 2, "causal")],
)  # fmt: skip
def test_conv_output_masks_and_lengths(k: int, s: int, d: int, padding: str) -> None:
    t = 9
    k_eff = d * (k - 1) + 1
    rng = np.random.default_rng(k * 100 + s * 10 + d)
    x = rng.normal(size=(5, t, 2))
    lens = np.array([9, 6, 4, 1, 0])
    for side in ("post", "pre", "any"):
        m = model_of(f"""model M {{
    input x: f64[B, {t}, 2]{" pad(" + side + ") masked" if side != "any" else " masked"}
    y = Conv1D(3, {k}, strides={s}, dilation_rate={d}, padding={padding}, name="c")(x)
    p = MaxPooling1D({k}, strides={s}, padding={"valid" if padding == "valid" else "same"})(x)
    output y with mask, p with mask
}}""")
        w = rand_weights(m, 1)
        if side == "any":
            mask = rng.random((5, t)) > 0.3
            mask[4] = False
            r = run_reference(m, w, [x], masks={"x": mask})
        else:
            mask = lengths_to_mask(lens, t, side)
            r = run_reference(m, w, [x], lengths={"x": lens})
        (y, ym), (p, pm) = r.outputs
        t_out = y.shape[1]
        assert t_out == ((t - k_eff) // s + 1 if padding == "valid" else math.ceil(t / s))
        np.testing.assert_array_equal(ym, _window_expect(mask, t_out, k, s, d, padding))
        if side == "post" or (side == "pre" and s == 1):
            # lengths map through the window formula
            expect = [
                max(0, (n - k_eff) // s + 1) if padding == "valid" else math.ceil(n / s)
                for n in lens
            ]
            np.testing.assert_array_equal(ym.sum(axis=1), expect)
        if side != "any":
            assert mask_fits_kind(ym, m.types["y"].mask)  # type: ignore[union-attr]
        # masked input steps are zeroed first: padded values do not leak
        x2 = x.copy()
        x2[~mask] = 99.0
        r2 = run_reference(
            m, w, [x2], **({"masks": {"x": mask}} if side == "any" else {"lengths": {"x": lens}})
        )
        close(r2.outputs[0][0], y)
        close(r2.outputs[1][0], p)
        nontrivial(y, p)


@pytest.mark.parametrize("side", ["post", "pre", "any"])
def test_window_layers_output_masks_fit_static_kinds(side: str) -> None:
    """Every output mask of a window layer has the kind the checker gives it,
    emptiness included (a nonempty `pre` row can lose every anchor at s > 1)."""
    t = 8
    rng = np.random.default_rng(len(side))
    n = 40
    lens = rng.integers(1, t + 1, size=n)
    mask = lengths_to_mask(lens, t, side) if side != "any" else rng.random((n, t)) > 0.6
    if side == "any":
        mask[np.arange(n), rng.integers(0, t, size=n)] = True  # nonempty rows
    x = rng.normal(size=(n, t, 2))
    for padding in ("valid", "same", "causal"):
        for k, s in ((1, 1), (2, 1), (2, 2), (3, 2), (2, 3)):
            pool = "valid" if padding == "valid" else "same"
            m = model_of(f"""model M {{
    input x: f64[B, T, 2]
    input m: mask({side}, nonempty)[B, T]
    y = Conv1D(2, {k}, strides={s}, padding={padding}, name="c")(x, mask=m)
    p = AveragePooling1D({k}, strides={s}, padding={pool})(x, mask=m)
    output y with mask, p with mask
}}""")
            (_, ym), (_, pm) = run_reference(m, rand_weights(m, 0), [x, mask]).outputs
            for name, got in (("y", ym), ("p", pm)):
                kind = m.types[name].mask  # type: ignore[union-attr]
                assert kind is not None and mask_fits_kind(got, kind), (padding, k, s, name, kind)


def test_pooling_over_valid_steps_by_hand() -> None:
    m = model_of("""model M {
    input x: f64[B, T, 2]
    input m: mask[B, T]
    a = MaxPooling1D(2)(x, mask=m)
    b = AveragePooling1D(2, strides=1)(x, mask=m)
    output a with mask, b with mask
}""")
    x = np.random.default_rng(5).normal(size=(B, T, 2))
    mask = MASKS["gap"]
    (a, am), (b, bm) = run_reference(m, {}, [x, mask]).outputs
    for row in range(B):
        for j in range(2):
            v = [q for q in (2 * j, 2 * j + 1) if mask[row, q]]
            close(a[row, j], x[row, v].max(axis=0) if v else 0.0)
            assert am[row, j] == (len(v) == 2)
        for j in range(4):
            v = [q for q in (j, j + 1) if mask[row, q]]
            close(b[row, j], x[row, v].mean(axis=0) if v else 0.0)
    nontrivial(a, b)


def test_concat_time_and_split_masks() -> None:
    m = model_of("""model M {
    input prompt: f64[B, 2, 3]
    input x: f64[B, T, 3] pad(post) masked
    j = concat(prompt, x, axis=time)
    first, second = x -> TemporalSplit(2)
    sw = concat(second, first, axis=time)
    output j with mask, first with mask, second with mask, sw with mask
}""")
    rng = np.random.default_rng(0)
    prompt = rng.normal(size=(B, 2, 3))
    x = rng.normal(size=(B, 6, 3))
    lens = np.array([6, 4, 2, 0])
    (j, jm), (f, fm), (s, sm), (sw, swm) = run_reference(
        m, {}, [prompt, x], lengths={"x": lens}
    ).outputs
    mask = lengths_to_mask(lens, 6)
    close(j, np.concatenate([prompt, x], axis=1))
    np.testing.assert_array_equal(jm, np.concatenate([np.ones((B, 2), bool), mask], axis=1))
    close(f, x[:, :3])
    close(s, x[:, 3:])
    np.testing.assert_array_equal(fm, mask[:, :3])
    np.testing.assert_array_equal(sm, mask[:, 3:])
    np.testing.assert_array_equal(swm, np.concatenate([mask[:, 3:], mask[:, :3]], axis=1))
    assert mask_fits_kind(jm, m.types["j"].mask)  # type: ignore[union-attr]
    assert not mask_fits_kind(swm, m.types["x"].mask)  # type: ignore[union-attr]  # gaps: kind any
    nontrivial(j, sw)
    # TemporalSplit needs a divisible time length
    with pytest.raises(ReferenceError, match="divisible"):
        run_reference(m, {}, [prompt, x[:, :5]], lengths={"x": np.minimum(lens, 5)})


def test_recurrent_empty_row_and_padding_invariance() -> None:
    """Final states = running the valid steps alone, whatever the mask kind;
    an empty row keeps its initial state and outputs 0."""
    m = model_of(f"""model M {{
    input x: f64[B, T, {F}]
    input m: mask[B, T]
    input h0: f64[B, {U}]
    input c0: f64[B, {U}]
    y, h, c = LSTM({U}, return_sequences=true, return_state=true, masked_output=carry, name="l")(x, mask=m, initial_state=[h0, c0])
    output y with mask, h, c
}}""")
    w = rand_weights(m, 3)
    rng = np.random.default_rng(1)
    h0, c0 = rng.normal(size=(2, 1, U)).repeat(B, axis=1)
    seq = rng.normal(size=(3, F))  # three valid steps, placed differently in every row
    x = rng.normal(size=(B, T, F)) * 9.0
    mask = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 1, 0, 1], [0, 0, 0, 0, 0]], bool)
    for row in range(3):
        x[row, mask[row]] = seq
    (y, ym), h, c = run_reference(m, w, [x, mask, h0, c0]).outputs
    alone = run_reference(m, w, [seq[None].repeat(B, 0), np.ones((B, 3), bool), h0, c0]).outputs
    for row in range(3):
        close(h[row], alone[1][row])
        close(c[row], alone[2][row])
        close(y[row][mask[row]], alone[0][0][row])  # outputs at valid steps
        # carry: the last valid output, 0 before the first
        k = np.cumsum(mask[row])
        for t in range(T):
            close(y[row, t], alone[0][0][row][k[t] - 1] if k[t] > 0 else 0.0)
    close(h[3], h0[3])
    close(c[3], c0[3])
    assert not y[3].any()
    nontrivial(y, h, c)


STATEFUL = """model StatefulParagraphs {
    input paragraph: f64[3, 4, 5]
    output_state = paragraph -> LSTM(6, stateful=true, return_sequences=true, name="lstm")
    output output_state
}"""


def test_stateful_across_calls_equals_one_long_sequence() -> None:
    """The RNN guide's cross-batch statefulness: three paragraphs fed one after
    the other equal the whole sequence in one call."""
    m = model_of(STATEFUL)
    whole = model_of(STATEFUL.replace("[3, 4, 5]", "[3, 12, 5]").replace("stateful=true, ", ""))
    w = rand_weights(m, 6)
    rng = np.random.default_rng(7)
    long = rng.normal(size=(3, 12, 5))
    p1, p2, p3 = long[:, :4], long[:, 4:8], long[:, 8:]
    r1 = run_reference(m, w, [p1])
    r2 = run_reference(m, w, [p2], states=r1.states)
    r3 = run_reference(m, w, [p3], states=r2.states)
    out = np.concatenate([r1.outputs[0], r2.outputs[0], r3.outputs[0]], axis=1)
    one = run_reference(whole, w, [long])
    close(out, one.outputs[0])
    assert one.states == {}  # not stateful
    assert len(r3.states["lstm"]) == 2
    close(r3.states["lstm"][0], out[:, -1])
    # reset_states(): no states given = zeros
    close(
        run_reference(m, w, [p2]).outputs[0],
        run_reference(m, w, [p2], states={"lstm": [np.zeros((3, 6))] * 2}).outputs[0],
    )
    nontrivial(out)
    with pytest.raises(ReferenceError, match="not a stateful layer"):
        run_reference(m, w, [p1], states={"nope": []})


def test_dropout_layer_injection_by_hand() -> None:
    m = model_of("""model M {
    input x: f64[B, T, 3]
    a = Dropout(0.25, name="d")(x)
    b = TimeDistributed(Dropout(0.5), name="td")(a)
    c = Dropout(0.5, name="off")(b, training=false)
    output c
}""")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, T, 3))
    kd = (rng.random((B, T, 3)) > 0.25).astype(float)
    kt = (rng.random((B, T, 3)) > 0.5).astype(float)
    y = run_reference(m, {}, [x], training=True, dropout_masks={"d": kd, "td": kt}).outputs[0]
    close(y, x * kd / 0.75 * kt / 0.5)
    close(run_reference(m, {}, [x]).outputs[0], x)  # inference: identity
    with pytest.raises(ReferenceError, match="'td'"):
        run_reference(m, {}, [x], training=True, dropout_masks={"d": kd})
    nontrivial(y)


def test_time_distributed_drop_mask_reshape_flatten() -> None:
    m = model_of("""model M {
    input x: f64[B, 4, 3] pad(post) masked
    a = TimeDistributed(LayerNormalization(epsilon=0.01), name="tdln")(x)
    b = TimeDistributed(Activation(gelu))(a)
    r = b -> drop_mask -> Reshape([2, 6])
    f = b -> drop_mask -> Flatten()
    output a with mask, b with mask, r, f
}""")
    w = rand_weights(m, 2)
    x = np.random.default_rng(1).normal(size=(B, 4, 3))
    (a, am), (b, bm), r, f = run_reference(m, w, [x], lengths={"x": np.array([4, 2, 1, 0])}).outputs
    mu = x.mean(-1, keepdims=True)
    ln = (x - mu) / np.sqrt(x.var(-1, keepdims=True) + 0.01) * w["tdln/gamma"] + w["tdln/beta"]
    close(a, ln)  # computed at masked steps too
    close(b, 0.5 * ln * (1 + np.vectorize(math.erf)(ln / math.sqrt(2))))
    np.testing.assert_array_equal(am, bm)
    close(r, b.reshape(B, 2, 6))
    close(f, b.reshape(B, 12))
    nontrivial(a, b)


def test_input_validation() -> None:
    m = model_of("""model M {
    input x: f64[B, T, 2] pad(post) masked
    input m: mask(post)[B, T]
    y = GlobalAveragePooling1D()(x)
    z = Dense(2, name="d")(x, mask=m)
    output y, z
}""")
    w = rand_weights(m, 0)
    x = np.ones((B, T, 2))
    ok = MASKS["post"]
    run_reference(m, w, [x, ok], lengths={"x": ok.sum(1)})
    with pytest.raises(ReferenceError, match="does not fit"):
        run_reference(m, w, [x, MASKS["gap"]], lengths={"x": ok.sum(1)})
    with pytest.raises(ReferenceError, match="does not fit"):
        run_reference(m, w, [x, ok], masks={"x": MASKS["pre"]})
    with pytest.raises(ReferenceError, match="masked"):
        run_reference(m, w, [x, ok])
    with pytest.raises(ReferenceError, match="missing weight"):
        run_reference(m, {}, [x, ok], lengths={"x": ok.sum(1)})
    with pytest.raises(ReferenceError, match="`T`"):
        run_reference(m, w, [x, ok[:, :4]], lengths={"x": ok.sum(1)})


def test_reference_weights_are_the_initializers() -> None:
    m = model_of("""model M {
    input x: f64[B, T, 2]
    y = LSTM(3, name="l")(x)
    output y
}""")
    w = reference_weights(m, 0)
    assert w["l/bias"].dtype == np.float64
    np.testing.assert_array_equal(w["l/bias"], np.r_[np.zeros(3), np.ones(3), np.zeros(6)])
    assert w["l/kernel"].shape == (2, 12)


# --------------------------------------------------------------------------
# attention against Keras

TV = 6  # the value's length (the query's is T)
# per kind: full row, padded row, EMPTY row (under a valid query row), padded row
V_MASKS = {
    "post": lengths_to_mask(np.array([6, 2, 0, 4]), TV, "post"),
    "pre": lengths_to_mask(np.array([6, 2, 0, 4]), TV, "pre"),
    "gap": np.array(
        [[1, 1, 1, 1, 1, 1], [0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0], [1, 0, 1, 1, 0, 1]], bool
    ),
}


def _attention_model(ctor: str, key_feats: int | None = None, v_feats: int = 4) -> CheckedModel:
    key = [f"    input k: f64[B, S, {key_feats}]"] if key_feats else []
    return model_of(
        "\n".join([
            "model M {",
            "    input q: f64[B, T, 4] masked",
            f"    input v: f64[B, S, {v_feats}] masked",
            *key,
            f"    y, w = {ctor}(q, v{', k' if key_feats else ''})",
            "    output y with mask, w",
            "}",
        ])
    )  # fmt: skip


def _attention_inputs(
    qkind: str, vkind: str, key_feats: int | None = None, v_feats: int = 4, seed: int = 0
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(B, T, 4)), rng.normal(size=(B, TV, v_feats))]
    if key_feats:
        xs.append(rng.normal(size=(B, TV, key_feats)))
    return xs, {"q": MASKS[qkind], "v": V_MASKS[vkind]}


def _allowed(qm: np.ndarray | None, vm: np.ndarray, causal: bool) -> np.ndarray:
    """[B, T, TV]: may query step i attend to key step j (written out for the tests)."""
    out = np.zeros((B, T, TV), bool)
    for b in range(B):
        for i in range(T):
            for j in range(TV):
                out[b, i, j] = vm[b, j] and (not causal or j <= i) and (qm is None or qm[b, i])
    return out


ATTENTION_KERAS = [
    ("Attention()", {}, {}),
    ("Attention(use_scale=true)", {"use_scale": True}, {}),
    ("Attention(score_mode=concat)", {"score_mode": "concat"}, {}),
    ("Attention(score_mode=concat, use_scale=true, use_causal_mask=true)",
     {"score_mode": "concat", "use_scale": True}, {"use_causal_mask": True}),
    ("Attention(use_scale=true, use_causal_mask=true)", {"use_scale": True},
     {"use_causal_mask": True}),
]  # fmt: skip


@pytest.mark.parametrize("kinds", [("post", "post"), ("pre", "gap"), ("gap", "pre")])
@pytest.mark.parametrize("config", range(len(ATTENTION_KERAS)))
@pytest.mark.parametrize("with_key", [False, True])
def test_attention_matches_keras(
    keras: ModuleType, config: int, kinds: tuple[str, str], with_key: bool
) -> None:
    """keras.layers.Attention, same weights and masks: equal wherever a query step has a
    valid key. A query step with none (the value's empty row, causal steps before a
    pre-padded value starts): ours gives weights 0 and output 0; Keras gives the
    uniform weights 1/Tv and the mean of the values (deviation, docs/semantics.md)."""
    ctor, ctor_kw, call_kw = ATTENTION_KERAS[config]
    causal = bool(call_kw)
    ctor = ctor[:-1] + (", " if ctor[-2] != "(" else "") + 'return_attention_scores=true, name="a")'
    kf = 4 if with_key else None
    m = _attention_model(ctor, kf)
    xs, masks = _attention_inputs(*kinds, key_feats=kf, seed=config)
    w = rand_weights(m, config, scale=1.0)
    (y, ym), scores = run_reference(m, w, xs, masks=masks).outputs
    layer = keras.layers.Attention(**ctor_kw)
    x32 = [x.astype(np.float32) for x in xs]
    qm, vm = masks["q"], masks["v"]
    layer(x32, mask=[qm, vm])
    layer.set_weights(keras_list(m, "a", w))
    ky, ks = layer(x32, mask=[qm, vm], return_attention_scores=True, **call_kw)
    ky, ks = np.asarray(ky), np.asarray(ks)
    np.testing.assert_array_equal(ym, qm)
    some = _allowed(None, vm, causal).any(axis=-1)  # [B, T]: the query step has a valid key
    assert some.any() and not some.all()
    close(y[some], ky[some])
    close(scores[some], ks[some])
    # no valid key: ours 0; Keras the uniform average over all Tv steps
    none = ~some
    assert not y[none].any() and not scores[none].any()
    close(ks[none], np.full((int(none.sum()), TV), 1.0 / TV))
    valid_none = none & qm
    if valid_none.any():  # Keras zeroes masked query steps too: compare at the valid ones
        v = xs[1].astype(np.float32)
        expect = np.broadcast_to(v.mean(axis=1)[:, None, :], (B, T, 4))[valid_none]
        close(ky[valid_none], expect)
    assert not y[~qm].any() and not ky[~qm].any()  # 0 at masked query steps (as Keras)
    nontrivial(y, scores)


def test_attention_key_mask_and_dropout_by_hand(keras: ModuleType) -> None:
    """A key's own mask is ANDed with the value's (Keras' Attention reads only the value's
    mask: given the AND, it agrees); dropout multiplies the weights by the injected
    keep-mask / (1 - rate), and the returned weights are those before dropout (Keras
    returns them after: its random dropout is replaced by the same keep-mask here)."""
    m = model_of("""model M {
    input q: f64[B, T, 4] masked
    input v: f64[B, S, 3] masked
    input k: f64[B, S, 4] masked
    y, w = Attention(dropout=0.25, return_attention_scores=true, name="a")(q, v, k)
    output y with mask, w
}""")
    rng = np.random.default_rng(3)
    xs = [rng.normal(size=(B, T, 4)), rng.normal(size=(B, TV, 3)), rng.normal(size=(B, TV, 4))]
    km = rng.random((B, TV)) > 0.3
    masks = {"q": MASKS["gap"], "v": V_MASKS["post"], "k": km}
    kv = V_MASKS["post"] & km
    keep = (rng.random((B, T, TV)) > 0.25).astype(np.float64)
    (y, _), weights = run_reference(m, {}, xs, masks=masks).outputs
    (yt, _), wt = run_reference(m, {}, xs, masks=masks, training=True,
                                dropout_masks={"a": keep}).outputs  # fmt: skip
    # by hand: softmax of q . k over the valid key steps
    s = np.einsum("bif,bjf->bij", xs[0], xs[2])
    e = np.where(kv[:, None, :], np.exp(s - s.max(axis=-1, keepdims=True)), 0.0)
    tot = e.sum(axis=-1, keepdims=True)
    hand = np.where(tot > 0, e / np.where(tot > 0, tot, 1.0), 0.0)
    qm = MASKS["gap"][..., None]
    close(weights, hand)
    close(y, np.where(qm, hand @ xs[1], 0.0))
    close(wt, hand)  # the weights before dropout
    close(yt, np.where(qm, (hand * keep / 0.75) @ xs[1], 0.0))
    # Keras, given the AND of the masks, and the same keep-mask for its dropout
    layer = keras.layers.Attention(dropout=0.25)
    x32 = [x.astype(np.float32) for x in (xs[0], xs[1], xs[2])]
    rows = kv.any(axis=1)  # Keras agrees where a row has a valid key
    ky, _ = layer(x32, mask=[MASKS["gap"], kv], return_attention_scores=True)
    close(np.asarray(ky)[rows], y[rows])
    from keras.src import backend

    orig = backend.random.dropout
    backend.random.dropout = lambda x, rate, **kw: x * (keep / (1.0 - rate)).astype(np.float32)
    try:
        ky, kw = layer(x32, mask=[MASKS["gap"], kv], return_attention_scores=True, training=True)
    finally:
        backend.random.dropout = orig
    close(np.asarray(ky)[rows], yt[rows])
    close(np.asarray(kw)[rows], (wt * keep / 0.75)[rows])  # Keras: after dropout
    nontrivial(y, yt)


MHA_KERAS = [
    ("MultiHeadAttention(2, 3)", {"num_heads": 2, "key_dim": 3}, {}, None, 4),
    ("MultiHeadAttention(num_heads=2, key_dim=3, value_dim=2, output_shape=5)",
     {"num_heads": 2, "key_dim": 3, "value_dim": 2, "output_shape": 5}, {}, 5, 3),
    ("MultiHeadAttention(3, 2, use_bias=false, use_causal_mask=true)",
     {"num_heads": 3, "key_dim": 2, "use_bias": False}, {"use_causal_mask": True}, None, 4),
]  # fmt: skip


@pytest.mark.parametrize("kinds", [("post", "post"), ("pre", "gap"), ("gap", "pre")])
@pytest.mark.parametrize("config", range(len(MHA_KERAS)))
def test_multi_head_attention_matches_keras(
    keras: ModuleType, config: int, kinds: tuple[str, str]
) -> None:
    """keras.layers.MultiHeadAttention, same weights (Keras' order) and masks. On its
    explicit softmax path (taken with returned scores) Keras computes ours everywhere:
    the query mask is part of the attention mask, and a query step with nothing to
    attend to gets weights 0, so its output is attention_output's bias. Its fused path
    (no returned scores, no dropout) agrees where a query step attends to something
    and gives the others the mean of the projected values (deviation)."""
    from keras.src.backend.common.masking import set_keras_mask

    ctor, ctor_kw, call_kw, kf, vf = MHA_KERAS[config]
    causal = bool(call_kw)
    ctor = ctor[:-1] + ', return_attention_scores=true, name="a")'
    m = _attention_model(ctor, kf, vf)
    xs, masks = _attention_inputs(*kinds, key_feats=kf, v_feats=vf, seed=config)
    w = rand_weights(m, config, scale=0.7)
    (y, ym), scores = run_reference(m, w, xs, masks=masks).outputs
    qm, vm = masks["q"], masks["v"]
    layer = keras.layers.MultiHeadAttention(**ctor_kw)
    tf = pytest.importorskip("tensorflow")
    x32 = [tf.constant(x.astype(np.float32)) for x in xs]

    def run(scores_too: bool) -> Any:
        q = tf.identity(x32[0])
        set_keras_mask(q, tf.constant(qm))
        return layer(q, *x32[1:], value_mask=tf.constant(vm), return_attention_scores=scores_too,
                     **call_kw)  # fmt: skip

    run(True)
    layer.set_weights(keras_list(m, "a", w))
    ky, ks = run(True)
    close(y, np.asarray(ky))
    close(scores, np.asarray(ks))
    fused = np.asarray(run(False))
    some = _allowed(qm, vm, causal).any(axis=-1)
    assert some.any() and not some.all()
    close(fused[some], y[some])
    # nothing to attend to: ours the output bias; Keras' fused path the projected mean
    bias = w.get("a/attention_output/bias", 0.0)
    close(y[~some], np.broadcast_to(bias, y[~some].shape))
    vp = np.einsum("bsf,fnh->bsnh", xs[1], w["a/value/kernel"])
    if "a/value/bias" in w:
        vp = vp + w["a/value/bias"]
    mean = np.einsum("bnh,nho->bo", vp.mean(axis=1), w["a/attention_output/kernel"]) + bias
    close(fused[~some], np.broadcast_to(mean[:, None, :], y.shape)[~some])
    np.testing.assert_array_equal(ym, qm)
    assert not scores.transpose(0, 2, 1, 3)[~some].any()
    nontrivial(y[some], scores)


def test_attention_parameter_counts_match_keras(keras: ModuleType) -> None:
    m = model_of("""model M {
    input q: f32[B, T, 6]
    input v: f32[B, S, 5]
    input k: f32[B, S, 7]
    a = Attention(use_scale=true, score_mode=concat)(q, MultiHeadAttention(2, 4)(q, q))
    b = MultiHeadAttention(2, 3, value_dim=4, output_shape=8)(q, v, k)
    c = MultiHeadAttention(3, 2, use_bias=false)(v, q)
    output a, b, c
}""")
    L = keras.layers
    q, v, k = keras.Input((None, 6)), keras.Input((None, 5)), keras.Input((None, 7))
    att = L.Attention(use_scale=True, score_mode="concat")
    m1 = L.MultiHeadAttention(2, 4)
    m2 = L.MultiHeadAttention(2, 3, value_dim=4, output_shape=8)
    m3 = L.MultiHeadAttention(3, 2, use_bias=False)
    att([q, m1(q, q)])
    m2(q, v, k)
    m3(v, q)
    counts = sorted(layer.params for layer in m.layers)
    assert counts == sorted(x.count_params() for x in (att, m1, m2, m3))
    assert counts[0] == 2  # scale and concat_score_weight
    twins = {"a_multi_head_attention": m1, "b_multi_head_attention": m2,
             "c_multi_head_attention": m3}  # fmt: skip
    assert {layer.name for layer in m.layers if layer.kind == "MultiHeadAttention"} == set(twins)
    for name, keras_layer in twins.items():
        layer = m.layer(name)
        assert [w.shape for w in layer.weights] == [tuple(v.shape) for v in keras_layer.weights]
        assert [w.name for w in layer.weights] == [
            v.path.split("/", 1)[1] for v in keras_layer.weights
        ], name


# --------------------------------------------------------------------------
# every example runs


def _example_inputs(
    m: CheckedModel, rng: np.random.Generator
) -> tuple[list[np.ndarray], dict[str, np.ndarray], dict[str, int]]:
    """Seeded inputs honouring each declaration (kinds included), with an empty
    row wherever the declaration allows one."""
    env: dict[str, int] = {}
    fixed_t = 12
    for c in m.constraints:
        while fixed_t % c.divisor:
            fixed_t += 1
    inputs: list[np.ndarray] = []
    lengths: dict[str, np.ndarray] = {}

    def size(d: Dim | None, default: int) -> int:
        if d is None:
            return default
        if d.value is not None:
            return d.value
        (s,) = d.symbols()
        return env.setdefault(s, 3 if s == "B" else fixed_t)

    for decl in m.model.inputs:
        t = m.types[decl.name]
        if isinstance(t, MaskType):
            b, tt = size(t.batch, 3), size(t.time, fixed_t)
            mask = rng.random((b, tt)) > 0.4
            mask[0] = True
            if not t.kind.nonempty:
                mask[-1] = False
            inputs.append(mask)
            continue
        assert isinstance(t, TensorType)
        shape = [size(d, 3) for d in t.shape]
        pad = m.pads.get(decl.name)
        lens = None
        if len(shape) >= 2:
            b, tt = shape[0], shape[1]
            lens = rng.integers(1, tt + 1, size=b)
            lens[0] = tt
            if pad is None or not pad.nonempty:
                lens[-1] = 0
        if t.dtype.startswith("i"):
            users = [lay for lay in m.layers if decl.name in lay.inputs and lay.kind == "Embedding"]
            vocab = min(int(lay.config["input_dim"]) for lay in users) if users else 10  # type: ignore[call-overload]
            x = rng.integers(1, vocab, size=shape)
        else:
            x = rng.normal(0.0, 1.0, size=shape)
        if pad is not None and lens is not None:
            valid = lengths_to_mask(lens, shape[1], pad.side)
            x[~valid] = pad.value
            if decl.masked:
                lengths[decl.name] = lens
        elif decl.masked:
            raise AssertionError("masked inputs of the examples are padded")
        inputs.append(x)
    return inputs, lengths, env


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    m = seqdsl.load(path).model()
    rng = np.random.default_rng(0)
    inputs, lengths, env = _example_inputs(m, rng)
    # random weights (the initializers' QR is slow under an oversubscribed BLAS)
    r = run_reference(m, rand_weights(m, 0, scale=0.1), inputs, lengths=lengths)
    for decl, out in zip(m.model.outputs, r.outputs, strict=True):
        t = m.types[decl.name]
        assert isinstance(t, TensorType)
        val = out[0] if decl.with_mask else out
        assert np.isfinite(val).all(), decl.name
        expect = tuple(int(d.evaluate(env)) if d is not None else None for d in t.shape)  # type: ignore[arg-type]
        assert val.shape == expect, (decl.name, val.shape, expect)
    # every mask honours its static kind when the inputs honour their declarations
    for name, (_, mask) in r.values.items():
        t = m.types[name]
        if isinstance(t, TensorType) and mask is not None:
            assert t.mask is not None and mask_fits_kind(mask, t.mask), (name, t.mask)
    nontrivial(*[o[0] if isinstance(o, tuple) else o for o in r.outputs])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
