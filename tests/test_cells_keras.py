"""The Keras backend's cell blocks and extern layers (seqdsl/emit/keras_custom.py).

- The four cells of examples/custom/builtin_cells.seq, each in a model beside the
  built-in layer it rewrites (same layer names, so the same canonical weights):
  the cell blocks give the Keras backend's LSTM / GRU / GRU(reset_after=false) /
  SimpleRNN numbers over post, pre and gap masks with full, padded and empty
  rows, return_sequences, return_state, go_backwards, initial_state, stateful
  over two calls, masked_output=carry, Bidirectional (three merge modes) and the
  plain keras.layers.RNN path; the built-in model agrees with the reference
  interpreter; and real keras.layers.LSTM / GRU / SimpleRNN / Bidirectional, run
  on each row's valid steps alone, give the same numbers.
- MinimalRNNCell and NestedCell against the guide's own Keras cells (written here
  with keras.ops) with the same weights.
- examples/custom/seed_masking_layers.seq with seed_externs' implementations
  against the masking guide's own layers, and the ExternErrors (no
  implementation; debug mode: a wrong output shape, a wrong returned mask).
- Golden files (tests/golden/keras/custom_*.py, ``pytest --update-golden``) and
  ruff cleanliness of the emitted modules.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import seqdsl  # noqa: E402
from seqdsl.externs import ExternError, Impl  # noqa: E402
from seqdsl.reference import run_reference  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CUSTOM = ROOT / "examples" / "custom"
GOLDEN = ROOT / "tests" / "golden" / "keras"
TOL = dict(rtol=1e-5, atol=1e-5)
ops = keras.ops
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow", reason="runs on Keras' TensorFlow backend"
    ),
]

# --------------------------------------------------------------------------
# the four cells beside the built-in layers

CELL_DEFS = (CUSTOM / "builtin_cells.seq").read_text().split("\nmodel ")[0]
CELL_OF = {
    "LSTM": ("RNN(MyLSTMCell(8)", "LSTM(8"),
    "GRU": ("RNN(MyGRUCell(8)", "GRU(8"),
    "GRU1": ("RNN(MyGRUCellV1(8)", "GRU(8, reset_after=false"),
    "SRNN": ("RNN(MySimpleRNNCell(8)", "SimpleRNN(8"),
}


def _parity_source(custom: bool) -> str:
    def layer(kind: str, flags: str = "") -> str:
        head = CELL_OF[kind][0 if custom else 1]
        return f"{head}{', ' + flags if flags else ''})"

    name = "CellParity" if custom else "BuiltinParity"
    return (
        (CELL_DEFS if custom else "")
        + f"""
model {name} {{
    input xpost: f32[4, T, 6] pad(post) masked
    input xpre: f32[4, T, 6] pad(pre) masked
    input xany: f32[4, T, 6] masked
    input xfull: f32[4, T, 6] pad(post, nonempty=true) masked
    input h0: f32[4, 8]
    input c0: f32[4, 8]

    a, ah, ac = {layer("LSTM", 'return_sequences=true, return_state=true, name="lstm_a"')}(xpost, initial_state=[h0, c0])
    b = {layer("GRU", 'return_sequences=true, name="gru_b"')}(xpre)
    c, ch = {layer("GRU1", 'go_backwards=true, return_state=true, name="gru_c"')}(xany, initial_state=[h0])
    c2 = {layer("GRU1", 'return_sequences=true, go_backwards=true, name="gru_c2"')}(xpre)
    d = Bidirectional({layer("SRNN", "return_sequences=true")}, name="bi_d")(xany)
    e = Bidirectional({layer("SRNN")}, merge_mode=sum, name="bi_e")(xpre)
    f1, f2, fh1, fh2 = Bidirectional({layer("SRNN", "return_sequences=true, return_state=true")}, merge_mode=none, name="bi_f")(xpost, initial_state=[h0, c0])
    g = {layer("LSTM", 'return_sequences=true, masked_output=carry, name="lstm_g"')}(xany)
    k = {layer("GRU", 'return_sequences=true, stateful=true, name="gru_k"')}(xpost)
    p = {layer("LSTM", 'return_sequences=true, name="lstm_p"')}(xfull)
    q = {layer("SRNN", 'name="rnn_q"')}(xfull)
    output a with mask, ah, ac, b, c, ch, c2 with mask, d, e, f1, f2, fh1, fh2, g, k, p, q
}}
"""
    )


B, T = 4, 6
LENGTHS = {
    "xpost": np.array([6, 3, 0, 1], np.int32),
    "xpre": np.array([6, 2, 0, 4], np.int32),
    "xfull": np.array([6, 4, 1, 2], np.int32),
}
ANY_MASK = np.array(
    [[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]], bool
)


def _mask_of(name: str) -> np.ndarray:
    if name == "xany":
        return ANY_MASK
    n = LENGTHS[name]
    t = np.arange(T)[None, :]
    return t >= T - n[:, None] if name == "xpre" else t < n[:, None]


def _data(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {
        k: rng.normal(size=(B, T, 6)).astype(np.float32) for k in ("xpost", "xpre", "xany", "xfull")
    }
    out["h0"] = rng.normal(0, 0.5, (B, 8)).astype(np.float32)
    out["c0"] = rng.normal(0, 0.5, (B, 8)).astype(np.float32)
    return out


def _keras_inputs(d: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [
        d["xpost"], LENGTHS["xpost"], d["xpre"], LENGTHS["xpre"], d["xany"], ANY_MASK,
        d["xfull"], LENGTHS["xfull"], d["h0"], d["c0"],
    ]  # fmt: skip


def _np(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return [_np(v) for v in x]
    return np.asarray(x)


@pytest.fixture(scope="module")
def parity() -> dict[str, Any]:
    cells = seqdsl.loads(_parity_source(True), name="cell_parity.seq")
    builtin = seqdsl.loads(_parity_source(False), name="builtin_parity.seq")
    cnet, bnet = cells.build("keras", seed=0), builtin.build("keras", seed=0)
    rng = np.random.default_rng(7)
    weights = {
        k: rng.normal(0, 0.5, v.shape).astype(np.float32)
        for k, v in bnet.canonical_weights().items()
    }
    assert weights.keys() == cnet.canonical_weights().keys()
    for net in (cnet, bnet):
        net.load_canonical(weights)
    runs: dict[str, list[Any]] = {"cell": [], "builtin": []}
    data = [_data(1), _data(2)]
    for net, key in ((cnet, "cell"), (bnet, "builtin")):
        net.reset_states()
        for d in data:  # two calls: the stateful layer carries its state
            runs[key].append(_np(net(_keras_inputs(d))))
        net.reset_states()
        runs[key].append(_np(net(_keras_inputs(data[0]))))
    return {
        "cells": cells.model(), "builtin": builtin.model(), "cnet": cnet, "bnet": bnet,
        "weights": weights, "data": data, "runs": runs,
    }  # fmt: skip


def _flat(x: Any) -> list[np.ndarray]:
    if isinstance(x, (list, tuple)):
        return [a for v in x for a in _flat(v)]
    return [np.asarray(x)]


def test_cells_give_the_builtin_layers_numbers(parity: dict[str, Any]) -> None:
    names = [o.name for o in parity["cells"].model.outputs]
    for call, (got, want) in enumerate(
        zip(parity["runs"]["cell"], parity["runs"]["builtin"], strict=True)
    ):
        for name, g, w in zip(names, got, want, strict=True):
            for ga, wa in zip(_flat(g), _flat(w), strict=True):
                if ga.dtype == bool:
                    np.testing.assert_array_equal(ga, wa, err_msg=f"call {call}: mask of {name}")
                    continue
                np.testing.assert_allclose(ga, wa, **TOL, err_msg=f"call {call}: {name}")
                assert np.abs(wa).max() > 1e-3, name
    # the stateful layer: the second call differs from the first, reset_states restores it
    k = names.index("k")
    first, second, again = (r[k] for r in parity["runs"]["cell"])
    assert np.abs(first - second).max() > 1e-3
    np.testing.assert_allclose(again, first, **TOL)


def test_builtin_twin_matches_the_reference(parity: dict[str, Any]) -> None:
    m = parity["builtin"]
    w64 = {k: v.astype(np.float64) for k, v in parity["weights"].items()}
    states = None
    for call, d in enumerate(parity["data"]):
        ins = [d[k].astype(np.float64) for k in ("xpost", "xpre", "xany", "xfull", "h0", "c0")]
        ref = run_reference(m, w64, ins, lengths=LENGTHS, masks={"xany": ANY_MASK}, states=states)
        states = ref.states
        for got, want in zip(parity["runs"]["builtin"][call], ref.outputs, strict=True):
            for ga, wa in zip(_flat(got), _flat(want), strict=True):
                if ga.dtype == bool:
                    np.testing.assert_array_equal(ga, wa)
                else:
                    np.testing.assert_allclose(ga, wa, **TOL)


def _real(layer: Any, key: str, weights: dict[str, np.ndarray], m: Any) -> Any:
    layer(np.zeros((1, 2, 6), np.float32))
    layer.set_weights([weights[f"{key}/{w.name}"] for w in m.layer(key).weights])
    return layer


def _rows(
    layer: Any, x: np.ndarray, mask: np.ndarray, init: Sequence[np.ndarray] | None = None
) -> list[list[np.ndarray] | None]:
    """A real Keras layer on each row's valid steps alone (None for an empty row)."""
    out: list[list[np.ndarray] | None] = []
    for b in range(B):
        steps = x[b : b + 1, mask[b]]
        if steps.shape[1] == 0:
            out.append(None)
            continue
        kw = {"initial_state": [s[b : b + 1] for s in init]} if init is not None else {}
        res = layer(steps, **kw)
        out.append([np.asarray(r)[0] for r in (res if isinstance(res, (list, tuple)) else [res])])
    return out


def test_cells_match_real_keras_layers(parity: dict[str, Any]) -> None:
    """keras.layers.LSTM / GRU / SimpleRNN / Bidirectional on each row's valid steps
    (Keras itself gives other numbers at masked steps and for empty rows, see
    docs/semantics.md): the cell blocks' outputs at valid steps, final outputs and
    states; zeros at masked steps, and the initial state for an empty row."""
    w, m, d = parity["weights"], parity["builtin"], parity["data"][0]
    names = [o.name for o in parity["cells"].model.outputs]
    got = dict(zip(names, parity["runs"]["cell"][0], strict=True))
    L = keras.layers
    h0, c0 = d["h0"], d["c0"]
    checked = 0

    # a, ah, ac: LSTM, post mask, initial state, sequences and states
    mask = _mask_of("xpost")
    real = _real(L.LSTM(8, return_sequences=True, return_state=True), "lstm_a", w, m)
    for b, r in enumerate(_rows(real, d["xpost"], mask, [h0, c0])):
        a = got["a"][0][b]
        if r is None:
            np.testing.assert_array_equal(a, 0)
            np.testing.assert_allclose(got["ah"][b], h0[b], **TOL)
            np.testing.assert_allclose(got["ac"][b], c0[b], **TOL)
            continue
        np.testing.assert_allclose(a[mask[b]], r[0], **TOL)
        np.testing.assert_array_equal(a[~mask[b]], 0)
        np.testing.assert_allclose(got["ah"][b], r[1], **TOL)
        np.testing.assert_allclose(got["ac"][b], r[2], **TOL)
        checked += 1
    # b: GRU (reset_after=true), pre mask
    mask = _mask_of("xpre")
    real = _real(L.GRU(8, return_sequences=True), "gru_b", w, m)
    for b, r in enumerate(_rows(real, d["xpre"], mask)):
        if r is not None:
            np.testing.assert_allclose(got["b"][b][mask[b]], r[0], **TOL)
            checked += 1
        np.testing.assert_array_equal(got["b"][b][~mask[b]], 0)
    # c, ch: GRU(reset_after=false), go_backwards, gaps, initial state
    mask = _mask_of("xany")
    real = _real(L.GRU(8, reset_after=False, go_backwards=True, return_state=True), "gru_c", w, m)
    for b, r in enumerate(_rows(real, d["xany"], mask, [h0])):
        if r is None:
            np.testing.assert_array_equal(got["c"][b], 0)
            np.testing.assert_allclose(got["ch"][b], h0[b], **TOL)
            continue
        np.testing.assert_allclose(got["c"][b], r[0], **TOL)
        np.testing.assert_allclose(got["ch"][b], r[1], **TOL)
        checked += 1
    # c2: go_backwards with sequences: reversed time order, flipped mask
    mask = _mask_of("xpre")
    real = _real(
        L.GRU(8, reset_after=False, go_backwards=True, return_sequences=True), "gru_c2", w, m
    )
    c2, c2_mask = got["c2"]
    np.testing.assert_array_equal(c2_mask, mask[:, ::-1])
    for b, r in enumerate(_rows(real, d["xpre"], mask)):
        if r is not None:
            np.testing.assert_allclose(c2[b][c2_mask[b]], r[0], **TOL)
            checked += 1
    # d: Bidirectional(SimpleRNN cell), gaps, concat
    mask = _mask_of("xany")
    real = _real(L.Bidirectional(L.SimpleRNN(8, return_sequences=True)), "bi_d", w, m)
    for b, r in enumerate(_rows(real, d["xany"], mask)):
        if r is not None:
            np.testing.assert_allclose(got["d"][b][mask[b]], r[0], **TOL)
            checked += 1
        np.testing.assert_array_equal(got["d"][b][~mask[b]], 0)
    # e: merge_mode=sum, last outputs
    mask = _mask_of("xpre")
    real = _real(L.Bidirectional(L.SimpleRNN(8), merge_mode="sum"), "bi_e", w, m)
    for b, r in enumerate(_rows(real, d["xpre"], mask)):
        np.testing.assert_allclose(got["e"][b], 0 if r is None else r[0], **TOL)
        checked += r is not None
    # f1, f2, fh1, fh2: merge_mode=None, states, initial states forward then backward
    mask = _mask_of("xpost")
    real = _real(
        L.Bidirectional(L.SimpleRNN(8, return_sequences=True, return_state=True), merge_mode=None),
        "bi_f", w, m,
    )  # fmt: skip
    for b, r in enumerate(_rows(real, d["xpost"], mask, [h0, c0])):
        if r is None:
            np.testing.assert_allclose(got["fh1"][b], h0[b], **TOL)
            np.testing.assert_allclose(got["fh2"][b], c0[b], **TOL)
            continue
        for i, name in enumerate(("f1", "f2")):
            np.testing.assert_allclose(got[name][b][mask[b]], r[i], **TOL)
        np.testing.assert_allclose(got["fh1"][b], r[2], **TOL)
        np.testing.assert_allclose(got["fh2"][b], r[3], **TOL)
        checked += 1
    # g: masked_output=carry: the last valid output at masked steps, 0 before the first
    mask = _mask_of("xany")
    real = _real(L.LSTM(8, return_sequences=True), "lstm_g", w, m)
    for b, r in enumerate(_rows(real, d["xany"], mask)):
        count = np.cumsum(mask[b])
        want = np.zeros((T, 8), np.float32)
        if r is not None:
            want[count > 0] = r[0][count[count > 0] - 1]
            checked += 1
        np.testing.assert_allclose(got["g"][b], want, **TOL)
    # p, q: nonempty post masks: plain keras.layers.RNN around the cells
    mask = _mask_of("xfull")
    real_p = _real(L.LSTM(8, return_sequences=True), "lstm_p", w, m)
    real_q = _real(L.SimpleRNN(8), "rnn_q", w, m)
    for b, (rp, rq) in enumerate(
        zip(_rows(real_p, d["xfull"], mask), _rows(real_q, d["xfull"], mask), strict=True)
    ):
        assert rp is not None and rq is not None
        np.testing.assert_allclose(got["p"][b][mask[b]], rp[0], **TOL)
        np.testing.assert_array_equal(got["p"][b][~mask[b]], 0)
        np.testing.assert_allclose(got["q"][b], rq[0], **TOL)
        checked += 1
    assert checked >= 25


def test_cell_layers_use_keras_rnn(parity: dict[str, Any]) -> None:
    """Plain keras.layers.RNN around the generated cell where Keras computes the
    semantics (a nonempty post mask), the Masked* machinery elsewhere; weights under
    Keras' names; get_weights/set_weights in twin order; canonical round trip."""
    net = parity["cnet"]
    p, q = net.get_layer("lstm_p"), net.get_layer("rnn_q")
    assert type(p) is keras.layers.RNN and type(q) is keras.layers.RNN
    assert type(p.cell).__name__ == "MyLSTMCell" and p.cell.state_size == [8, 8]
    assert type(net.get_layer("gru_b")).__name__ == "MaskedRNN"
    paths = [v.path for v in p.weights]
    assert paths == [
        "lstm_p/my_lstm_cell/kernel",
        "lstm_p/my_lstm_cell/recurrent_kernel",
        "lstm_p/my_lstm_cell/bias",
    ]
    bnet = parity["bnet"]
    for a, b in zip(net.get_weights(), bnet.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    canon = net.canonical_weights()
    for k, v in parity["weights"].items():
        np.testing.assert_array_equal(canon[k], v)
    net.set_weights(net.get_weights())


# --------------------------------------------------------------------------
# the RNN guide's cells, written as a Keras user writes them


class GuideMinimalRNNCell(keras.layers.Layer):
    """keras.layers.RNN's MinimalRNNCell, with the tanh of minimal_rnn_cell.seq."""

    def __init__(self, units: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.units = units
        self.state_size = units

    def build(self, input_shape: Any) -> None:
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, self.units), name="recurrent_kernel"
        )

    def call(self, inputs: Any, states: Any) -> Any:
        prev_output = states[0]
        h = ops.matmul(inputs, self.kernel)
        output = ops.tanh(h + ops.matmul(prev_output, self.recurrent_kernel))
        return output, [output]


class GuideNestedCell(keras.layers.Layer):
    """The guide's NestedCell (tf.nest, tf.matmul -> keras.ops)."""

    def __init__(self, unit_1: int, unit_2: int, unit_3: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.unit_1, self.unit_2, self.unit_3 = unit_1, unit_2, unit_3
        self.state_size = [(unit_1,), (unit_2, unit_3)]
        self.output_size = [(unit_1,), (unit_2, unit_3)]

    def build(self, input_shapes: Any) -> None:
        i1 = input_shapes[0][1]
        i2 = input_shapes[1][1]
        i3 = input_shapes[1][2]
        self.kernel_1 = self.add_weight(
            shape=(i1, self.unit_1), initializer="uniform", name="kernel_1"
        )
        self.kernel_2_3 = self.add_weight(
            shape=(i2, i3, self.unit_2, self.unit_3), initializer="uniform", name="kernel_2_3"
        )

    def call(self, inputs: Any, states: Any) -> Any:
        input_1, input_2 = inputs
        s1, s2 = states
        output_1 = ops.matmul(input_1, self.kernel_1)
        output_2_3 = ops.einsum("bij,ijkl->bkl", input_2, self.kernel_2_3)
        state_1 = s1 + output_1
        state_2_3 = s2 + output_2_3
        return (output_1, output_2_3), (state_1, state_2_3)


def test_minimal_rnn_cell_matches_the_guide() -> None:
    prog = seqdsl.load(CUSTOM / "minimal_rnn_cell.seq")
    net = prog.build("keras", seed=0)
    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(1000, 16, mask_zero=True)(tokens)
    x = keras.layers.RNN(GuideMinimalRNNCell(32), return_sequences=True)(x)
    x = keras.layers.RNN(GuideMinimalRNNCell(32), go_backwards=True)(x)
    twin = keras.Model(tokens, keras.layers.Dense(5)(x))
    twin.set_weights(net.get_weights())
    ids, _ = net.pad([[3, 9, 4, 1, 7], [5, 2], [8], [6, 6, 6, 1]])
    got, want = np.asarray(net(ids)), np.asarray(twin(ids))
    np.testing.assert_allclose(got, want, **TOL)
    assert np.abs(want).max() > 1e-3
    # an empty row: 0 from the recurrent layer, so the Dense bias alone
    ids2, _ = net.pad([[3, 9, 4], []])
    out = np.asarray(net(ids2))
    np.testing.assert_allclose(out[1], net.get_layer("logits_dense").get_weights()[1], **TOL)


NESTED = (
    (CUSTOM / "nested_cell.seq").read_text().split("\nmodel ")[0]
    + """
model SmallNested {
    input video: f32[B, T, 5] pad(post) masked
    input audio: f32[B, T, 4, 3] masked
    input s1: f32[B, 3]
    input s2: f32[B, 2, 4]
    o1, o2 = RNN(NestedCell(3, 2, 4))(video, audio)
    q1, q2, r1, r2 = RNN(NestedCell(3, 2, 4), return_sequences=true, return_state=true, go_backwards=true)(video, audio, initial_state=[s1, s2])
    output o1, o2, q1 with mask, q2, r1, r2
}
"""
)


def _nested_loop(
    cell: Any, video: np.ndarray, audio: np.ndarray, mask: np.ndarray, init: list[np.ndarray],
    backwards: bool,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:  # fmt: skip
    """The guide's cell stepped by hand over each row's valid steps (the contract)."""
    n, t = mask.shape
    seq1, seq2 = np.zeros((n, t, 3), np.float32), np.zeros((n, t, 2, 4), np.float32)
    states = [s.copy() for s in init]
    order = range(t - 1, -1, -1) if backwards else range(t)
    for j, step in enumerate(order):
        (o1, o2), new = cell([video[:, step], audio[:, step]], states)
        keep = mask[:, step]
        states = [
            np.where(keep.reshape(-1, *[1] * (s.ndim - 1)), np.asarray(ns), s)
            for s, ns in zip(states, new, strict=True)
        ]
        seq1[keep, j], seq2[keep, j] = np.asarray(o1)[keep], np.asarray(o2)[keep]
    return seq1, seq2, states


def test_nested_cell_matches_the_guide() -> None:
    prog = seqdsl.loads(NESTED, name="small_nested.seq")
    net = prog.build("keras", seed=0)
    assert type(net.get_layer("o1_rnn")).__name__ == "MaskedNestedRNN"
    rng = np.random.default_rng(3)
    n, t = 4, 5
    video = rng.normal(size=(n, t, 5)).astype(np.float32)
    audio = rng.normal(size=(n, t, 4, 3)).astype(np.float32)
    lengths = np.array([5, 3, 0, 4], np.int32)
    amask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 1]], bool)
    s1 = rng.normal(size=(n, 3)).astype(np.float32)
    s2 = rng.normal(size=(n, 2, 4)).astype(np.float32)
    o1, o2, (q1, qmask), q2, r1, r2 = _np(net([video, lengths, audio, amask, s1, s2]))
    mask = (np.arange(t)[None, :] < lengths[:, None]) & amask  # the AND of the inputs' masks
    np.testing.assert_array_equal(qmask, mask[:, ::-1])
    # the guide's cell, same weights, stepped by hand
    cell = GuideNestedCell(3, 2, 4)
    cell.build([(None, 5), (None, 4, 3)])
    cell.set_weights(net.get_layer("o1_rnn").get_weights())
    zeros = [np.zeros((n, 3), np.float32), np.zeros((n, 2, 4), np.float32)]
    w1, w2, ws = _nested_loop(cell, video, audio, mask, zeros, False)
    last = t - 1 - np.argmax(mask[:, ::-1], axis=1)  # the last valid step (an empty row: 0)
    np.testing.assert_allclose(o1, w1[np.arange(n), last], **TOL)
    np.testing.assert_allclose(o2, w2[np.arange(n), last], **TOL)
    cell.set_weights(net.get_layer("q1_rnn").get_weights())
    w1, w2, ws = _nested_loop(cell, video, audio, mask, [s1, s2], True)
    # outputs in reversed time order, at the (reversed) valid steps; zeros elsewhere
    np.testing.assert_allclose(q1, w1, **TOL)
    np.testing.assert_allclose(q2, w2, **TOL)
    np.testing.assert_allclose(r1, ws[0], **TOL)
    np.testing.assert_allclose(r2, ws[1], **TOL)
    np.testing.assert_allclose(r1[2], s1[2], **TOL)  # the empty row keeps its initial state
    assert min(np.abs(a).max() for a in (o1, o2, q1, q2, r1, r2)) > 1e-3
    # the guide's cell runs in the module's runner too, a keras.layers.RNN subclass
    # (keras.layers.RNN itself takes no nested inputs in Keras 3: it reads sequences.shape)
    mod = sys.modules[type(net).__module__]
    rnn = mod.MaskedNestedRNN(GuideNestedCell(3, 2, 4))
    assert isinstance(rnn, keras.layers.RNN)
    rnn([video, audio])
    rnn.set_weights(net.get_layer("o1_rnn").get_weights())
    g1, g2 = _np(rnn([video, audio], mask=ops.convert_to_tensor(mask)))
    np.testing.assert_allclose(g1, o1, **TOL)
    np.testing.assert_allclose(g2, o2, **TOL)
    g1, g2 = _np(rnn([video, audio]))  # no mask
    cell.set_weights(net.get_layer("o1_rnn").get_weights())
    w1, w2, _ = _nested_loop(cell, video, audio, np.ones((n, t), bool), zeros, False)
    np.testing.assert_allclose(g1, w1[:, -1], **TOL)
    np.testing.assert_allclose(g2, w2[:, -1], **TOL)


def test_nested_cell_example_builds_and_runs() -> None:
    net = seqdsl.load(CUSTOM / "nested_cell.seq").build("keras", seed=0)
    rng = np.random.default_rng(0)
    video = rng.normal(size=(2, 3, 32)).astype(np.float32)
    audio = rng.normal(size=(2, 3, 64, 32)).astype(np.float32)
    m = np.array([[1, 1, 0], [1, 1, 1]], bool)
    o1, o2 = _np(net([video, m, audio, m]))
    assert o1.shape == (2, 10) and o2.shape == (2, 20, 30)
    assert [v.path for v in net.get_layer("out_1_rnn").weights] == [
        "out_1_rnn/flat_nested_cell/nested_cell/kernel_1",
        "out_1_rnn/flat_nested_cell/nested_cell/kernel_2_3",
    ]


# --------------------------------------------------------------------------
# every construct of the equation language, against NumPy

ZOO = """
cell ZooCell(units: int, scale: float = 0.5) {
    input x: f32[in]
    state h: f32[units]
    state m: f32[2, units]
    weight w: [in, units] = glorot_uniform
    weight v: [units, units] = orthogonal
    weight b: [2, units] = zeros

    a = x @ w + b[0]
    g = softmax(concat(a, h), axis=-1)
    ga, gb = split(g, 2)
    s = sum(m, axis=0)
    mm = mean(m, axis=-1)
    r = m * ga
    k = r[0:2, 0:2] @ m[..., 0:units]
    t = maximum(abs(a), softplus(h)) - minimum(square(gb), sqrt(abs(s) + 1.0))
    u = softsign(t) * scale + relu(-a) / 2.0 + log(exp(gb) + 1.0) - m[1]
    y = tanh(u + h @ v + einsum("bij,bij->bj", r, k))
    h <- y * sigmoid(s)
    m <- r * 0.5 + k * 0.1 + mm[..., 0:1] - b
    output y
}

# the output is a local, not the first state
cell OutCell(units: int) {
    input x: f32[in]
    state h: f32[units]
    weight kernel: [in, units] = glorot_uniform
    y = tanh(x @ kernel + h)
    h <- -0.5 * y
    output y
}

model Zoo {
    input x: f32[B, T, 4] masked
    y, h, m = RNN(ZooCell(3, scale=0.25), return_sequences=true, return_state=true)(x)
    o = Bidirectional(RNN(OutCell(3), return_sequences=true), merge_mode=mul)(x)
    l = RNN(OutCell(3), go_backwards=true)(x)
    output y, h, m, o, l
}
"""


def _sig(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _zoo_step(w: dict[str, np.ndarray], x: np.ndarray, h: np.ndarray, m: np.ndarray) -> Any:
    """ZooCell in NumPy (batched, per-step shapes after the batch axis)."""
    a = x @ w["w"] + w["b"][0]
    c = np.concatenate([a, h], axis=-1)
    e = np.exp(c - c.max(-1, keepdims=True))
    g = e / e.sum(-1, keepdims=True)
    ga, gb = np.split(g, 2, axis=-1)
    s = m.sum(axis=1)
    mm = m.mean(axis=-1)
    r = m * ga[:, None]
    k = r[:, 0:2, 0:2] @ m[..., 0:3]
    t = np.maximum(np.abs(a), np.log1p(np.exp(h))) - np.minimum(gb**2, np.sqrt(np.abs(s) + 1.0))
    u = t / (1 + np.abs(t)) * 0.25 + np.maximum(-a, 0) / 2.0 + np.log(np.exp(gb) + 1.0) - m[:, 1]
    y = np.tanh(u + h @ w["v"] + np.einsum("bij,bij->bj", r, k))
    return y, [y * _sig(s), r * 0.5 + k * 0.1 + mm[:, None, 0:1] - w["b"]]


def _run(
    step: Any, x: np.ndarray, mask: np.ndarray, init: list[np.ndarray], backwards: bool
) -> Any:
    """The contract: masked steps keep the states; outputs 0 there; time order of reading."""
    n, t = mask.shape
    states, seq = [s.copy() for s in init], []
    for j in range(t):
        step_t = t - 1 - j if backwards else j
        y, new = step(x[:, step_t], *states)
        keep = mask[:, step_t]
        states = [
            np.where(keep.reshape(-1, *[1] * (s.ndim - 1)), ns, s)
            for s, ns in zip(states, new, strict=True)
        ]
        seq.append(np.where(keep[:, None], y, 0.0))
    return np.stack(seq, axis=1), states


def test_equation_language_against_numpy() -> None:
    prog = seqdsl.loads(ZOO, name="zoo.seq")
    net = prog.build("keras", seed=0)
    rng = np.random.default_rng(11)
    weights = {
        k: rng.normal(0, 0.5, v.shape).astype(np.float32)
        for k, v in net.canonical_weights().items()
    }
    net.load_canonical(weights)
    x = rng.normal(size=(4, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0]], bool)
    y, h, m, o, l_out = _np(net([x, mask]))
    w = {
        k.split("/")[-1]: v.astype(np.float64) for k, v in weights.items() if k.startswith("y_rnn/")
    }
    zeros = [np.zeros((4, 3)), np.zeros((4, 2, 3))]
    seq, states = _run(
        lambda xt, ht, mt: _zoo_step(w, xt, ht, mt), x.astype(np.float64), mask, zeros, False
    )
    np.testing.assert_allclose(y, seq, **TOL)
    np.testing.assert_allclose(h, states[0], **TOL)
    np.testing.assert_allclose(m, states[1], **TOL)

    def out_cell(prefix: str) -> Any:
        kernel = weights[f"{prefix}kernel"].astype(np.float64)

        def step(xt: np.ndarray, ht: np.ndarray) -> Any:
            yt = np.tanh(xt @ kernel + ht)
            return yt, [-0.5 * yt]

        return step

    x64, z3 = x.astype(np.float64), [np.zeros((4, 3))]
    fw, _ = _run(out_cell("o_bidirectional/forward/"), x64, mask, z3, False)
    bw, _ = _run(out_cell("o_bidirectional/backward/"), x64, mask, z3, True)
    np.testing.assert_allclose(o, fw * bw[:, ::-1], **TOL)
    bseq, _ = _run(out_cell("l_rnn/"), x64, mask, z3, True)
    first_valid = np.argmax(mask, axis=1)  # read last when going backwards
    want = np.where(mask.any(1)[:, None], bseq[np.arange(4), 4 - first_valid], 0.0)
    np.testing.assert_allclose(l_out, want, **TOL)
    assert min(np.abs(a).max() for a in (y, h, m, o, l_out)) > 1e-3


# --------------------------------------------------------------------------
# extern layers: the masking guide's layers


class CustomEmbedding(keras.layers.Layer):
    def __init__(self, input_dim: int, output_dim: int, mask_zero: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.mask_zero = mask_zero

    def build(self, input_shape: Any) -> None:
        self.embeddings = self.add_weight(
            shape=(self.input_dim, self.output_dim), initializer="random_normal", dtype="float32"
        )

    def call(self, inputs: Any) -> Any:
        inputs = ops.cast(inputs, "int32")
        return ops.take(self.embeddings, inputs, axis=0)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        if not self.mask_zero:
            return None
        return ops.not_equal(inputs, 0)


class MyActivation(keras.layers.Layer):
    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs: Any) -> Any:
        return ops.relu(inputs)


class TemporalSplit(keras.layers.Layer):
    def call(self, inputs: Any) -> Any:
        return ops.split(inputs, 2, axis=1)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        if mask is None:
            return None
        return ops.split(mask, 2, axis=1)


class TemporalSoftmax(keras.layers.Layer):
    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs: Any, mask: Any = None) -> Any:
        assert mask is not None
        broadcast_float_mask = ops.expand_dims(ops.cast(mask, "float32"), -1)
        inputs_exp = ops.exp(inputs) * broadcast_float_mask
        inputs_sum = ops.sum(inputs_exp * broadcast_float_mask, axis=-1, keepdims=True)
        return inputs_exp / inputs_sum


@pytest.fixture(scope="module")
def seed_program() -> Any:
    return seqdsl.load(CUSTOM / "seed_masking_layers.seq")


def test_seed_masking_layers_match_the_guide(seed_program: Any) -> None:
    net = seed_program.build("keras", seed=0)
    tokens = keras.Input((None,), dtype="int32")
    x = CustomEmbedding(10, 32, mask_zero=True)(tokens)
    x = MyActivation()(x)
    first, second = TemporalSplit()(x)
    h = keras.layers.LSTM(16)(first)
    s = TemporalSoftmax()(keras.layers.Dense(1)(second))
    twin = keras.Model(tokens, [h, s])
    twin.set_weights(net.get_weights())
    rng = np.random.default_rng(5)
    weights = {
        k: rng.normal(0, 0.5, v.shape).astype(np.float32)
        for k, v in net.canonical_weights().items()
    }
    net.load_canonical(weights)
    twin.set_weights(net.get_weights())
    ids, _ = net.pad([[3, 9, 4, 1, 7, 2, 8, 5], [5, 2, 1], [8, 3, 3, 3, 3, 3], [6]])
    got, want = _np(net(ids)), _np(twin(ids))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, **TOL)  # NaN where the guide's softmax divides 0 by 0
        assert np.nanmax(np.abs(w)) > 1e-3
    # the Keras masks the wrappers attach: the declared ones
    mod = sys.modules[type(net).__module__]
    assert mod.EXTERNS["first_my_temporal_split"][0] == ("float32", (None, None, 32))
    layer = net.get_layer("x_my_embedding")
    np.testing.assert_array_equal(_np(layer.compute_mask(ids)), ids != 0)
    split = net.get_layer("first_my_temporal_split").compute_mask(
        None, ops.convert_to_tensor(ids != 0)
    )
    np.testing.assert_array_equal(_np(split[1]), (ids != 0)[:, 4:])


def test_externs_override_and_missing(seed_program: Any) -> None:
    calls = []

    def relu(x: Any, *, mask: Any, weights: Any, config: Any, training: Any) -> Any:
        calls.append((mask is not None, dict(config), training))
        return ops.relu(x)

    net = seed_program.build("keras", seed=0, externs={"MyActivation": relu})
    net(net.pad([[1, 2, 3, 4]])[0])
    assert calls and calls[-1] == (True, {}, False)
    missing = seqdsl.loads(
        "extern layer NoImpl { shape: same; mask: propagate }\n"
        "model M {\n    input x: f32[B, T, 3]\n    y = x -> NoImpl()\n    output y\n}\n"
    )
    with pytest.raises(ExternError, match="NoImpl has no keras implementation"):
        missing.build("keras")
    net2 = missing.build("keras", externs={"NoImpl": lambda x, **kw: x * 2.0})
    x = np.ones((1, 2, 3), np.float32)
    np.testing.assert_allclose(_np(net2(x)), 2 * x)


def test_debug_mode_checks_the_declaration(seed_program: Any) -> None:
    def wide(x: Any, **kw: Any) -> Any:
        return ops.concatenate([x, x], axis=-1)

    net = seed_program.build("keras", seed=0, externs={"MyActivation": wide})
    ids, _ = net.pad([[1, 2, 3, 4]])
    net.debug = True
    assert net.debug
    with pytest.raises(ExternError, match=r"MyActivation \(layer `x_my_activation`\).*output 1"):
        net(ids)

    def bad_mask(x: Any, *, mask: Any, **kw: Any) -> Any:
        return ops.relu(x), ops.logical_not(mask)

    net = seed_program.build(
        "keras", seed=0, externs={"MyActivation": Impl(bad_mask, returns_mask=True)}
    )
    out = net(ids)  # outside debug mode: no checks
    net.debug = True
    with pytest.raises(ExternError, match="mask the implementation returned differs"):
        net(ids)

    def good_mask(x: Any, *, mask: Any, **kw: Any) -> Any:
        return ops.relu(x), mask

    net = seed_program.build(
        "keras", seed=0, externs={"MyActivation": Impl(good_mask, returns_mask=True)}
    )
    net.debug = True
    for a, b in zip(_flat(_np(net(ids))), _flat(_np(out)), strict=True):
        np.testing.assert_allclose(a, b, **TOL)


CONTRACTS = """
extern layer Join { inputs: 2; shape: same; time: T * 2; mask: concat }
extern layer Halves(parts: int) { in: f32[B, T, F]; outputs: parts; time: T / parts; mask: split; weight scale: [F] = ones }
extern layer Gen(v: float = 0.5) { in: f32[B, T, F]; out: f32[B, T, F]; mask: generate(x != 0.5) }
model E {
    input a: f32[B, T, 3] pad(post) masked
    input b: f32[B, T, 3]
    input c: f32[B, T, 3]
    j = Join()(a, b)
    p, q = j -> Halves(2)
    g = c -> Gen(v=2.0)
    output j with mask, p with mask, q with mask, g with mask
}
"""


def test_extern_mask_contracts() -> None:
    """concat (two inputs, one unmasked), split (with a declared weight), generate on
    features: the output masks, the impl's arguments, and debug mode agreeing."""
    seen = {}

    def join(a: Any, b: Any, *, mask: Any, weights: Any, config: Any, training: Any) -> Any:
        seen["join"] = (isinstance(mask, tuple), len(mask), mask[1] is None)
        joined = ops.concatenate([mask[0], ops.ones_like(mask[0])], axis=1)
        return ops.concatenate([a, b], axis=1), joined

    def halves(x: Any, *, mask: Any, weights: Any, config: Any, training: Any) -> Any:
        return tuple(ops.split(x * weights["scale"], config["parts"], axis=1))

    def gen(x: Any, *, mask: Any, weights: Any, config: Any, training: Any) -> Any:
        seen["gen"] = config
        return x * config["v"]

    impls = {"Join": Impl(join, returns_mask=True), "Halves": halves, "Gen": gen}
    net = seqdsl.loads(CONTRACTS).build("keras", externs=impls)
    net.get_layer("p_halves").set_weights([np.array([1.0, 2.0, 3.0], np.float32)])
    net.debug = True
    a = np.ones((2, 3, 3), np.float32)
    b = np.full((2, 3, 3), 2.0, np.float32)
    c = np.full((2, 3, 3), 0.5, np.float32)  # T = 3, as a's and b's (one symbol T)
    c[0, 1, 2] = 1.0
    (j, jm), (p, pm), (q, qm), (g, gm) = _np(net([a, np.array([3, 1], np.int32), b, c]))
    assert seen["join"] == (True, 2, True) and seen["gen"] == {"v": 2.0}
    np.testing.assert_array_equal(jm, [[1, 1, 1, 1, 1, 1], [1, 0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(pm, jm[:, :3])
    np.testing.assert_array_equal(qm, jm[:, 3:])
    np.testing.assert_array_equal(gm, [[0, 1, 0], [0, 0, 0]])
    np.testing.assert_allclose(p[0, 0], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(q[0, 0], [2.0, 4.0, 6.0])
    np.testing.assert_allclose(g, 2.0 * c)
    assert j.shape == (2, 6, 3)


def test_save_and_load(tmp_path: Path, seed_program: Any) -> None:
    """`.keras` files of models with cell blocks (NestedRNN included) and extern layers
    (the implementation comes from the registry again)."""
    rng = np.random.default_rng(2)
    video = rng.normal(size=(2, 3, 5)).astype(np.float32)
    audio = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
    states = [
        rng.normal(size=(2, 3)).astype(np.float32),
        rng.normal(size=(2, 2, 4)).astype(np.float32),
    ]
    nested = seqdsl.loads(NESTED).build("keras", seed=0)
    runs = [
        (nested, [video, np.array([3, 1], np.int32), audio, np.ones((2, 3), bool), *states]),
        (seed_program.build("keras", seed=0), np.array([[1, 2, 3, 4], [5, 6, 0, 0]], np.int32)),
    ]
    for i, (net, ins) in enumerate(runs):
        path = tmp_path / f"m{i}.keras"
        net.save(path)
        back = keras.models.load_model(path)
        for a, b in zip(_flat(_np(net(ins))), _flat(_np(back(ins))), strict=True):
            np.testing.assert_array_equal(a, b)


# the same module text on Keras' JAX and torch backends (`pytest -m full`, about a minute)
OTHER_BACKENDS_DRIVER = """
import sys
import numpy as np
import keras
import seqdsl
sys.path.insert(0, sys.argv[2])
from test_cells_keras import NESTED, ZOO  # the programs (keras is imported already)

out = {}

def flat(o):
    if isinstance(o, (list, tuple)):
        return [a for v in o for a in flat(v)]
    return [np.asarray(keras.ops.convert_to_numpy(o))]

def run(tag, net, calls):
    rng = np.random.default_rng(0)
    w = {k: rng.normal(0, 0.5, v.shape).astype("float32") for k, v in net.canonical_weights().items()}
    net.load_canonical(w)
    for c, ins in enumerate(calls):
        for i, o in enumerate(flat(net(ins))):
            out[f"{tag}{c}_{i}"] = o

rng = np.random.default_rng(1)
m = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 1, 1]], bool)
x6 = rng.normal(size=(4, 5, 6)).astype("float32")
run("cells", seqdsl.load("examples/custom/builtin_cells.seq").build("keras"), [[x6, m]])
x4 = rng.normal(size=(4, 5, 4)).astype("float32")
run("zoo", seqdsl.loads(ZOO).build("keras"), [[x4, m]])
video = rng.normal(size=(4, 5, 5)).astype("float32")
audio = rng.normal(size=(4, 5, 4, 3)).astype("float32")
s1, s2 = rng.normal(size=(4, 3)).astype("float32"), rng.normal(size=(4, 2, 4)).astype("float32")
lengths = np.array([5, 3, 0, 4], np.int32)
run("nested", seqdsl.loads(NESTED).build("keras"), [[video, lengths, audio, m, s1, s2]])
net = seqdsl.load("examples/custom/seed_masking_layers.seq").build("keras")
net.debug = True
run("seed", net, [np.array([[3, 9, 4, 1, 7, 2], [5, 2, 1, 0, 0, 0]], np.int32)])
np.savez(sys.argv[1], **out)
"""


@pytest.mark.full
def test_other_backends(tmp_path: Path) -> None:
    """Cell blocks (NestedRNN, a local output, Bidirectional) and extern layers in debug
    mode give the TensorFlow numbers on Keras' JAX and torch backends."""
    import os

    procs = {}
    for backend in ("tensorflow", "jax", "torch"):
        env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)}
        cmd = [
            sys.executable,
            "-c",
            OTHER_BACKENDS_DRIVER,
            str(tmp_path / backend),
            str(ROOT / "tests"),
        ]
        procs[backend] = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    for backend, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{backend}: {err[-3000:]}"
    want = np.load(tmp_path / "tensorflow.npz")
    for backend in ("jax", "torch"):
        got = np.load(tmp_path / f"{backend}.npz")
        assert sorted(got.files) == sorted(want.files)
        for k in want.files:
            np.testing.assert_allclose(got[k], want[k], **TOL, err_msg=f"{backend}: {k}")


# --------------------------------------------------------------------------
# emitted text

GOLDEN_CUSTOM = ("builtin_cells", "seed_masking_layers")


@pytest.mark.parametrize("name", GOLDEN_CUSTOM)
def test_golden(name: str, request: pytest.FixtureRequest) -> None:
    text = seqdsl.loads(
        (CUSTOM / f"{name}.seq").read_text(), name=f"examples/custom/{name}.seq"
    ).compile("keras")
    path = GOLDEN / f"custom_{name}.py"
    if request.config.getoption("--update-golden"):
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run pytest --update-golden"
    assert text == path.read_text(), (
        f"{path} is out of date: review the diff, then run pytest --update-golden"
    )


def test_models_without_externs_unchanged() -> None:
    """A program that declares externs but whose model uses none emits what it did."""
    plain = "model P {\n    input x: f32[B, T, 3]\n    y = x -> Dense(2)\n    output y\n}\n"
    decl = "extern layer Unused { shape: same; mask: propagate }\n"
    assert seqdsl.loads(decl + plain).compile("keras") == seqdsl.loads(plain).compile("keras")


@pytest.mark.parametrize("standalone", [False, True])
def test_emitted_code_is_ruff_clean(tmp_path: Path, standalone: bool) -> None:
    if subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True).returncode:
        pytest.skip("ruff is not installed")

    def keras_text(prog: seqdsl.Program) -> str:
        return prog.compile("keras", standalone=standalone)

    sources = {p.stem: keras_text(seqdsl.load(p)) for p in sorted(CUSTOM.glob("*.seq"))}
    sources["cell_parity"] = keras_text(seqdsl.loads(_parity_source(True)))
    sources["small_nested"] = keras_text(seqdsl.loads(NESTED))
    sources["zoo"] = keras_text(seqdsl.loads(ZOO))
    sources["contracts"] = keras_text(seqdsl.loads(CONTRACTS))
    for name, text in sources.items():
        (tmp_path / f"{name}.py").write_text(text)
        compile(text, name, "exec")
    for cmd in (["format", "--check", "--diff"], ["check", "--output-format", "concise"]):
        r = subprocess.run(
            [sys.executable, "-m", "ruff", *cmd, "--config", str(ROOT / "pyproject.toml"), str(tmp_path)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
