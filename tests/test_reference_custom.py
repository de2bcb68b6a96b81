"""The reference interpreter on cell blocks and extern layers.

Expected numbers come from elsewhere, never from the code under test:

- the cell blocks of ``examples/custom/builtin_cells.seq`` (Keras' LSTMCell,
  GRUCell in both forms and SimpleRNNCell written as equations) against the
  reference's built-in LSTM / GRU / SimpleRNN layers with the same canonical
  weights, at 1e-10 in float64, over every recurrent option;
- ``RNN(NestedCell)`` and ``RNN(MinimalRNNCell)`` against real Keras 3
  ``keras.layers.RNN`` around the guides' cells (float64);
- the masking guide's custom layers (``examples/custom/seed_masking_layers.seq``,
  extern layers implemented in ``seed_externs.py``) against a real Keras 3
  functional model built from the guide's Layer classes, and the debug checks
  of extern implementations.

Every case has a full row, a padded row and an empty row, and asserts that the
compared values are not all (near) zero.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import seqdsl
from seqdsl.checker import CheckedModel
from seqdsl.externs import ExternError, Impl
from seqdsl.reference import ReferenceResult, reference_weights, run_reference

ROOT = Path(__file__).resolve().parent.parent
CUSTOM = ROOT / "examples" / "custom"
TOL = dict(rtol=1e-10, atol=1e-10)


def cells_of(file: str) -> str:
    """The cell blocks of an example (the text before its first model)."""
    return (CUSTOM / file).read_text().split("\nmodel ")[0]


BUILTIN_CELLS = cells_of("builtin_cells.seq")

B, T, F, U = 4, 5, 3, 4
# one full row, two padded rows, one empty row, per mask kind
MASKS = {
    "post": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], bool),
    "pre": np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], bool),
    "gaps": np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [0, 1, 0, 0, 1], [0, 0, 0, 0, 0]], bool),
}


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
    return {
        f"{layer.name}/{w.name}": rng.normal(0.0, scale, w.shape)
        for layer in m.layers
        for w in layer.weights
    }


def close(a: Any, b: Any, what: str = "", **tol: float) -> float:
    """assert_allclose (NaN == NaN); returns the max absolute difference."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, err_msg=what, **(tol or TOL))
    d = np.abs(a - b)
    return float(d[~np.isnan(d)].max()) if d.size else 0.0


def nontrivial(*arrays: Any) -> None:
    assert max(float(np.nanmax(np.abs(np.asarray(a, np.float64)))) for a in arrays) > 1e-3


def plain(r: ReferenceResult) -> list[np.ndarray]:
    return [o[0] if isinstance(o, tuple) else o for o in r.outputs]  # type: ignore[misc]


# --------------------------------------------------------------------------
# the cell blocks of builtin_cells.seq = the built-in layers


#: name -> (built-in layer, its extra arguments, the cell block, number of states)
BUILTINS = {
    "LSTM": ("LSTM", "", "MyLSTMCell", 2),
    "GRU": ("GRU", "", "MyGRUCell", 1),
    "GRU_v1": ("GRU", "reset_after=false", "MyGRUCellV1", 1),
    "SimpleRNN": ("SimpleRNN", "", "MySimpleRNNCell", 1),
}

RNN_OPTIONS = [
    dict(rs=True),
    dict(rs=True, rst=True),
    dict(rst=True),
    dict(rs=True, gb=True),
    dict(gb=True, rst=True, init=True),
    dict(rs=True, rst=True, init=True),
    dict(rs=True, mo="carry"),
    dict(rs=True, mo="carry", gb=True, init=True),
    dict(rs=True, rst=True, stateful=True),
]
BIDI_OPTIONS = {
    "concat": dict(rs=True),
    "sum": dict(rs=True, rst=True, init=True),
    "mul": dict(),
    "ave": dict(rs=True),
    "none": dict(rs=True, rst=True),
}


def _flags(o: dict[str, Any]) -> str:
    out = []
    if o.get("rs"):
        out.append("return_sequences=true")
    if o.get("rst"):
        out.append("return_state=true")
    if o.get("gb"):
        out.append("go_backwards=true")
    if o.get("mo"):
        out.append(f"masked_output={o['mo']}")
    if o.get("stateful"):
        out.append("stateful=true")
    return ", ".join(out)


def _pair_source(a: str, b: str, n_init: int, n_out: int) -> str:
    """A model running layer ``a`` and layer ``b`` on the same x, mask and states."""
    lines = [
        BUILTIN_CELLS,
        "model M {",
        f"    input x: f64[{B}, T, {F}]",
        f"    input m: mask[{B}, T]",
    ]
    lines += [f"    input s{i}: f64[{B}, {U}]" for i in range(n_init)]
    init = f", initial_state=[{', '.join(f's{i}' for i in range(n_init))}]" if n_init else ""
    outs = []
    for tag, ctor in (("a", a), ("b", b)):
        res = [f"{tag}{i}" for i in range(n_out)]
        lines.append(f"    {', '.join(res)} = {ctor}(x, mask=m{init})")
        outs += res
    lines += [f"    output {', '.join(outs)}", "}"]
    return "\n".join(lines)


def _copy_weights(m: CheckedModel, seed: int) -> dict[str, np.ndarray]:
    """Random weights for layer a, and the same arrays under layer b's names."""
    w = rand_weights(m, seed)
    a = {k: v for k, v in w.items() if k.startswith("a/")}
    b = {k: v for k, v in w.items() if k.startswith("b/")}
    assert {k[2:] for k in a} == {k[2:] for k in b}, "the cell's weights are the built-in's"
    for k in b:
        assert a["a/" + k[2:]].shape == b[k].shape
    return {**a, **{"b/" + k[2:]: v for k, v in a.items()}}


def _compare_pair(r: ReferenceResult, n_out: int, what: str) -> float:
    outs = plain(r)
    ya, yb = outs[:n_out], outs[n_out:]
    err = 0.0
    for i, (p, q) in enumerate(zip(ya, yb, strict=True)):
        err = max(err, close(q, p, f"{what}: output {i}"))
        ma, mb = r.values[f"a{i}"][1], r.values[f"b{i}"][1]
        assert (ma is None) == (mb is None)
        if ma is not None:
            np.testing.assert_array_equal(ma, mb)
    nontrivial(*ya)
    return err


#: the largest differences each group measured (read by hand with -s or a debugger)
MAX_ERR: dict[str, float] = {}


@pytest.mark.parametrize("cell", list(BUILTINS))
@pytest.mark.parametrize("opt", range(len(RNN_OPTIONS)))
def test_cell_blocks_equal_builtin_layers(cell: str, opt: int) -> None:
    o = RNN_OPTIONS[opt]
    layer, extra, block, n_states = BUILTINS[cell]
    flags = _flags(o)
    sep = ", " if flags else ""
    args_a = ", ".join(x for x in (str(U), extra, flags, 'name="a"') if x)
    a = f"{layer}({args_a})"
    b = f'RNN({block}({U}){sep}{flags}, name="b")'
    n_init = n_states if o.get("init") else 0
    n_out = 1 + (n_states if o.get("rst") else 0)
    m = model_of(_pair_source(a, b, n_init, n_out))
    w = _copy_weights(m, opt)
    rng = np.random.default_rng(10 + opt)
    x = rng.normal(0.0, 1.2, (B, T, F))
    init = [rng.normal(0.0, 0.8, (B, U)) for _ in range(n_init)]
    err = 0.0
    for kind, mask in MASKS.items():
        r = run_reference(m, w, [x, mask, *init])
        err = max(err, _compare_pair(r, n_out, f"{cell} {o} {kind}"))
        if o.get("stateful"):  # a second call starts from the first call's final states
            assert set(r.states) == {"a", "b"}
            for sa, sb in zip(r.states["a"], r.states["b"], strict=True):
                err = max(err, close(sb, sa))
            x2 = rng.normal(0.0, 1.2, (B, T, F))
            r2 = run_reference(m, w, [x2, MASKS["gaps"]], states=r.states)
            err = max(err, _compare_pair(r2, n_out, f"{cell} {o} {kind}, second call"))
            one = run_reference(m, w, [x2, MASKS["gaps"]])  # without the carried states
            assert not np.allclose(plain(one)[n_out], plain(r2)[n_out])
    MAX_ERR["builtin"] = max(MAX_ERR.get("builtin", 0.0), err)


@pytest.mark.parametrize("cell", list(BUILTINS))
@pytest.mark.parametrize("mode", list(BIDI_OPTIONS))
def test_bidirectional_cell_blocks_equal_builtin_layers(cell: str, mode: str) -> None:
    o = BIDI_OPTIONS[mode]
    layer, extra, block, n_states = BUILTINS[cell]
    flags = _flags(o)
    sep = ", " if flags else ""
    args_a = ", ".join(x for x in (str(U), extra, flags) if x)
    inner_a = f"{layer}({args_a})"
    a = f'Bidirectional({inner_a}, merge_mode={mode}, name="a")'
    b = f'Bidirectional(RNN({block}({U}){sep}{flags}), merge_mode={mode}, name="b")'
    n_init = 2 * n_states if o.get("init") else 0
    n_out = (2 if mode == "none" else 1) + (2 * n_states if o.get("rst") else 0)
    m = model_of(_pair_source(a, b, n_init, n_out))
    w = _copy_weights(m, 20)
    assert {k.split("/")[1] for k in w if k.startswith("b/")} == {"forward", "backward"}
    rng = np.random.default_rng(21)
    x = rng.normal(0.0, 1.2, (B, T, F))
    init = [rng.normal(0.0, 0.8, (B, U)) for _ in range(n_init)]
    err = 0.0
    for kind, mask in MASKS.items():
        r = run_reference(m, w, [x, mask, *init])
        err = max(err, _compare_pair(r, n_out, f"Bidirectional {cell} {mode} {kind}"))
    MAX_ERR["builtin"] = max(MAX_ERR.get("builtin", 0.0), err)


# --------------------------------------------------------------------------
# the RNN guide's NestedCell against keras.layers.RNN

I1, I2, I3 = 5, 3, 2
U1, U2, U3 = 3, 2, 4


def _keras_nested_cell(keras: ModuleType) -> Any:
    """The guide's NestedCell in Keras 3 (keras.ops). Keras 3's RNN takes one input
    sequence and one output tensor per step, so the two inputs travel packed in one
    tensor and the two outputs leave packed in one; the step itself (matmul, einsum,
    two states of different shapes) is the guide's."""
    ops = keras.ops

    class NestedCell(keras.layers.Layer):  # type: ignore[misc,name-defined]
        def __init__(self, unit_1: int, unit_2: int, unit_3: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.unit_1, self.unit_2, self.unit_3 = unit_1, unit_2, unit_3
            self.state_size = [unit_1, (unit_2, unit_3)]
            self.output_size = unit_1 + unit_2 * unit_3

        def get_initial_state(self, batch_size: int) -> list[Any]:
            return [
                ops.zeros((batch_size, self.unit_1), self.dtype),
                ops.zeros((batch_size, self.unit_2, self.unit_3), self.dtype),
            ]

        def build(self, input_shape: Any) -> None:
            self.kernel_1 = self.add_weight(
                shape=(I1, self.unit_1), initializer="uniform", name="kernel_1"
            )
            self.kernel_2_3 = self.add_weight(
                shape=(I2, I3, self.unit_2, self.unit_3), initializer="uniform", name="kernel_2_3"
            )

        def call(self, inputs: Any, states: Any) -> Any:
            input_1 = inputs[:, :I1]
            input_2 = ops.reshape(inputs[:, I1:], (-1, I2, I3))
            s1, s2 = states
            output_1 = ops.matmul(input_1, self.kernel_1)
            output_2_3 = ops.einsum("bij,ijkl->bkl", input_2, self.kernel_2_3)
            packed = ops.concatenate(
                [output_1, ops.reshape(output_2_3, (-1, self.unit_2 * self.unit_3))], axis=-1
            )
            return packed, [s1 + output_1, s2 + output_2_3]

    return NestedCell


def _nested_source(masked: bool) -> str:
    mk = " masked" if masked else ""
    return f"""{cells_of("nested_cell.seq")}
model N {{
    input video: f64[B, T, {I1}]{mk}
    input audio: f64[B, T, {I2}, {I3}]{mk}
    input h1: f64[B, {U1}]
    input h2: f64[B, {U2}, {U3}]
    o1, o23, s1, s2 = RNN(NestedCell({U1}, {U2}, {U3}), return_sequences=true, return_state=true,
                          masked_output=carry, name="seq")(video, audio, initial_state=[h1, h2])
    l1, l23 = RNN(NestedCell({U1}, {U2}, {U3}), name="last")(video, audio)
    output o1, o23, s1, s2, l1, l23
}}"""


def test_nested_cell_matches_keras(keras: ModuleType) -> None:
    NestedCell = _keras_nested_cell(keras)
    rng = np.random.default_rng(3)
    video = rng.normal(0.0, 1.0, (B, T, I1))
    audio = rng.normal(0.0, 1.0, (B, T, I2, I3))
    h1, h2 = rng.normal(0.0, 1.0, (B, U1)), rng.normal(0.0, 1.0, (B, U2, U3))
    packed = np.concatenate([video, audio.reshape(B, T, -1)], axis=-1)
    f64 = dict(dtype="float64")
    k_seq = keras.layers.RNN(
        NestedCell(U1, U2, U3, **f64), return_sequences=True, return_state=True, **f64
    )
    k_last = keras.layers.RNN(NestedCell(U1, U2, U3, **f64), **f64)
    k_seq(packed, initial_state=[h1, h2])
    k_last(packed)
    err = 0.0
    # video and audio carry different masks: the cell's steps are where both are valid
    audio_masks = {**MASKS, "gaps": MASKS["gaps"] & ~np.eye(B, T, 1, dtype=bool)}
    for masked in (False, True):
        m = model_of(_nested_source(masked))
        w = reference_weights(m, 1)
        assert set(w) == {f"{n}/{k}" for n in ("seq", "last") for k in ("kernel_1", "kernel_2_3")}
        for layer, name in ((k_seq, "seq"), (k_last, "last")):
            layer.set_weights([w[f"{name}/kernel_1"], w[f"{name}/kernel_2_3"]])
        for kind in MASKS if masked else ["unmasked"]:
            kw: dict[str, Any] = {}
            mask = None
            if masked:
                kw["masks"] = {"video": MASKS[kind], "audio": audio_masks[kind]}
                mask = MASKS[kind] & audio_masks[kind]
            o1, o23, s1, s2, l1, l23 = run_reference(m, w, [video, audio, h1, h2], **kw).outputs
            ks, ks1, ks2 = k_seq(packed, initial_state=[h1, h2], mask=mask)
            kl = k_last(packed, mask=mask)
            ks, kl = np.asarray(ks), np.asarray(kl)
            # Keras' RNN carries the last output over masked steps: masked_output=carry
            err = max(err, close(o1, ks[..., :U1], f"{kind}: output_1 sequence"))
            err = max(err, close(o23, ks[..., U1:].reshape(B, T, U2, U3), f"{kind}: output_2_3"))
            err = max(err, close(s1, ks1, f"{kind}: s1"), close(s2, ks2, f"{kind}: s2"))
            err = max(err, close(l1, kl[:, :U1], f"{kind}: last output_1"))
            err = max(err, close(l23, kl[:, U1:].reshape(B, U2, U3), f"{kind}: last output_2_3"))
            nontrivial(o1, o23, s1, s2, l1, l23)
            if masked:  # the empty row keeps its initial states and outputs zeros
                np.testing.assert_array_equal(s2[3], h2[3])
                assert not l23[3].any() and not o1[3].any()
    MAX_ERR["nested"] = err


# --------------------------------------------------------------------------
# MinimalRNNCell (keras.layers.RNN's documentation) against keras.layers.RNN


def _keras_minimal_cell(keras: ModuleType) -> Any:
    ops = keras.ops

    class MinimalRNNCell(keras.layers.Layer):  # type: ignore[misc,name-defined]
        def __init__(self, units: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.units = units
            self.state_size = units

        def build(self, input_shape: Any) -> None:
            self.kernel = self.add_weight(
                shape=(input_shape[-1], self.units), initializer="uniform", name="kernel"
            )
            self.recurrent_kernel = self.add_weight(
                shape=(self.units, self.units), initializer="uniform", name="recurrent_kernel"
            )

        def call(self, inputs: Any, states: Any) -> Any:
            prev_output = states[0]
            h = ops.matmul(inputs, self.kernel)
            output = h + ops.matmul(prev_output, self.recurrent_kernel)
            return output, [output]

    return MinimalRNNCell


def test_minimal_rnn_cell_matches_keras(keras: ModuleType) -> None:
    Cell = _keras_minimal_cell(keras)
    src = f"""{cells_of("minimal_rnn_cell.seq")}
model M {{
    input x: f64[B, T, {F}]
    input m: mask[B, T]
    y, h = RNN(MinimalRNNCell({U}), return_sequences=true, return_state=true,
               masked_output=carry, name="seq")(x, mask=m)
    z = RNN(MinimalRNNCell({U}), go_backwards=true, name="back")(x, mask=m)
    output y, h, z
}}"""
    m = model_of(src)
    w = rand_weights(m, 5, scale=0.5)
    f64 = dict(dtype="float64")
    k_seq = keras.layers.RNN(Cell(U, **f64), return_sequences=True, return_state=True, **f64)
    k_back = keras.layers.RNN(Cell(U, **f64), go_backwards=True, **f64)
    x = np.random.default_rng(6).normal(0.0, 1.0, (B, T, F))
    k_seq(x)
    k_back(x)
    for layer, name in ((k_seq, "seq"), (k_back, "back")):
        layer.set_weights([w[f"{name}/kernel"], w[f"{name}/recurrent_kernel"]])
    err = 0.0
    for kind, mask in {"none": np.ones((B, T), bool), **MASKS}.items():
        y, h, z = plain(run_reference(m, w, [x, mask]))
        ky, kh = k_seq(x, mask=mask)
        err = max(err, close(y, ky, f"{kind}: sequence"), close(h, kh, f"{kind}: state"))
        err = max(err, close(z, k_back(x, mask=mask), f"{kind}: go_backwards last"))
        nontrivial(y, h, z)
    MAX_ERR["minimal"] = err


# --------------------------------------------------------------------------
# extern layers: the masking guide's custom layers against Keras

SEED = CUSTOM / "seed_masking_layers.seq"
T6 = 6
TOKENS = np.array(
    [[1, 2, 3, 4, 5, 6], [3, 4, 5, 6, 0, 0], [7, 9, 8, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
)  # full, padded (both halves), padded (second half empty), empty


def _keras_seed_layers(keras: ModuleType) -> dict[str, Any]:
    """The guide's layers (Keras 3, keras.ops), in the weights' dtype. Two fixes:
    ``ops.take(..., axis=0)`` (without it Keras 3's take flattens the table) and the
    mask cast to the input's dtype (the guide casts to float32)."""
    ops = keras.ops
    L = keras.layers

    class TemporalSplit(L.Layer):  # type: ignore[misc,name-defined]
        def call(self, inputs: Any) -> Any:
            return ops.split(inputs, 2, axis=1)

        def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
            if mask is None:
                return None
            return ops.split(mask, 2, axis=1)

    class CustomEmbedding(L.Layer):  # type: ignore[misc,name-defined]
        def __init__(self, input_dim: int, output_dim: int, mask_zero: bool = False, **kw: Any):
            super().__init__(**kw)
            self.input_dim, self.output_dim, self.mask_zero = input_dim, output_dim, mask_zero

        def build(self, input_shape: Any) -> None:
            self.embeddings = self.add_weight(
                shape=(self.input_dim, self.output_dim),
                initializer="random_normal",
                dtype=self.dtype,
            )

        def call(self, inputs: Any) -> Any:
            return ops.take(self.embeddings, ops.cast(inputs, "int32"), axis=0)

        def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
            return ops.not_equal(inputs, 0) if self.mask_zero else None

    class MyActivation(L.Layer):  # type: ignore[misc,name-defined]
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self.supports_masking = True

        def call(self, inputs: Any) -> Any:
            return ops.relu(inputs)

    class TemporalSoftmax(L.Layer):  # type: ignore[misc,name-defined]
        """The guide's: it sums over the last axis (ones at valid steps, NaN elsewhere)."""

        def __init__(self, axis: int = -1, **kw: Any) -> None:
            super().__init__(**kw)
            self.supports_masking = True
            self.axis = axis  # 1: the intended softmax over time

        def call(self, inputs: Any, mask: Any = None) -> Any:
            assert mask is not None
            broadcast_float_mask = ops.expand_dims(ops.cast(mask, inputs.dtype), -1)
            inputs_exp = ops.exp(inputs) * broadcast_float_mask
            inputs_sum = ops.sum(inputs_exp * broadcast_float_mask, axis=self.axis, keepdims=True)
            return inputs_exp / inputs_sum

        def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
            return None

    return dict(
        TemporalSplit=TemporalSplit,
        CustomEmbedding=CustomEmbedding,
        MyActivation=MyActivation,
        TemporalSoftmax=TemporalSoftmax,
    )


def _time_softmax_np(x: Any, *, mask: Any, weights: Any, config: Any, training: Any) -> Any:
    """An override of MyTemporalSoftmax: the intended softmax over time (axis 1)."""
    m = mask[..., None].astype(x.dtype)
    e = np.exp(x) * m
    return e / np.sum(e * m, axis=1, keepdims=True)


def test_seed_masking_externs_match_keras(keras: ModuleType) -> None:
    prog = seqdsl.load(SEED)
    m = prog.model()
    w = rand_weights(m, 9, scale=0.5)
    K = _keras_seed_layers(keras)
    f64 = dict(dtype="float64")
    inp = keras.Input((T6,), dtype="int32")
    emb = K["CustomEmbedding"](10, 32, mask_zero=True, **f64)
    x = K["MyActivation"](**f64)(emb(inp))
    first, second = K["TemporalSplit"](**f64)(x)
    lstm = keras.layers.LSTM(16, **f64)
    dense = keras.layers.Dense(1, **f64)
    h = lstm(first)
    d = dense(second)
    s = K["TemporalSoftmax"](**f64)(d)
    s_time = K["TemporalSoftmax"](axis=1, **f64)(d)
    kmodel = keras.Model(inp, [h, s, s_time])
    emb.set_weights([w["x_my_embedding/embeddings"]])
    lstm.set_weights([w[f"h_lstm/{k}"] for k in ("kernel", "recurrent_kernel", "bias")])
    dense.set_weights([w["s_dense/kernel"], w["s_dense/bias"]])
    kh, ks, ks_time = (np.asarray(v) for v in kmodel(TOKENS))

    with np.errstate(invalid="ignore"):  # the guide's softmax divides 0 by 0 at masked steps
        r = run_reference(m, w, [TOKENS])
        r_time = run_reference(m, w, [TOKENS], externs={"MyTemporalSoftmax": _time_softmax_np})
    rh, rs = plain(r)
    err = max(close(rh, kh, "LSTM after the extern layers"), close(rs, ks, "guide's softmax"))
    assert np.array_equal(np.isnan(rs), np.isnan(ks)) and np.isnan(rs).any()
    err = max(err, close(plain(r_time)[1], ks_time, "softmax over time (override)"))
    nontrivial(rh)
    nontrivial(plain(r_time)[1])
    # the masks the contracts give: generate, propagate, split
    want = TOKENS != 0
    np.testing.assert_array_equal(r.values["x_my_embedding"][1], want)
    np.testing.assert_array_equal(r.values["x"][1], want)
    np.testing.assert_array_equal(r.values["first"][1], want[:, :3])
    np.testing.assert_array_equal(r.values["second"][1], want[:, 3:])
    assert r.values["s"][1] is None  # consume
    assert not rh[3].any()  # the empty row
    MAX_ERR["externs"] = err


# --------------------------------------------------------------------------
# extern layers: the debug checks


def _seed_run(**externs: Any) -> ReferenceResult:
    m = seqdsl.load(SEED).model()
    with np.errstate(invalid="ignore"):
        return run_reference(m, reference_weights(m, 0), [TOKENS], externs=externs)


def test_extern_wrong_shape_raises() -> None:
    def narrow(x: Any, **kw: Any) -> Any:
        return np.maximum(x[..., :5], 0.0)

    with pytest.raises(ExternError, match=r"MyActivation \(layer `x_my_activation`\).*output 1"):
        _seed_run(MyActivation=narrow)


def test_extern_wrong_number_of_outputs_raises() -> None:
    def three(x: Any, **kw: Any) -> Any:
        return tuple(np.split(x, 3, axis=1))

    with pytest.raises(
        ExternError, match=r"MyTemporalSplit \(layer `first_my_temporal_split`\) returned 3"
    ):
        _seed_run(MyTemporalSplit=three)


def test_extern_returned_mask_is_compared() -> None:
    def good(x: Any, *, mask: Any, **kw: Any) -> Any:
        return np.maximum(x, 0.0), mask

    def bad(x: Any, *, mask: Any, **kw: Any) -> Any:
        return np.maximum(x, 0.0), ~mask

    r = _seed_run(MyActivation=Impl(good, returns_mask=True))
    np.testing.assert_array_equal(r.values["x"][1], TOKENS != 0)
    with pytest.raises(ExternError, match=r"MyActivation \(layer `x_my_activation`\).*mask"):
        _seed_run(MyActivation=Impl(bad, returns_mask=True))
    with pytest.raises(ExternError, match="returns_mask=True"):
        _seed_run(MyActivation=Impl(lambda x, **kw: x, returns_mask=True))


def test_extern_missing_implementation_raises_with_the_fix() -> None:
    m = model_of("""
extern layer NoNumpyImplHere { shape: same; mask: propagate }
model M {
    input x: f64[B, T, 3]
    y = x -> NoNumpyImplHere()
    output y
}""")
    with pytest.raises(
        ExternError, match=r"NoNumpyImplHere has no numpy implementation.*@seqdsl\.extern"
    ):
        run_reference(m, {}, [np.zeros((2, 3, 3))])


# --------------------------------------------------------------------------
# the equation language by hand: every construct, batched and not

GADGET = """
cell Gadget(n: int, scale: float = 0.5) {
    input x: f32[k, n]
    input v: f32[n]
    state s: f32[k, n]
    state q: f32[n]
    weight w: [n, n] = glorot_uniform
    weight g: [2, n] = zeros

    a = x @ w
    c = softmax(a + v, axis=0)
    d = sum(c * s, axis=0)
    e = mean(s, axis=-1)
    f1, f2 = split(concat(q, d, axis=0), 2, axis=0)
    m2 = maximum(f1, g[0]) - minimum(f2, g[1])
    r = x[0] * scale + x[..., 0:1] * relu(q)
    t = einsum("bkn,bn->bk", s, q)
    p = x @ einsum("bkn->bnk", x)
    s <- tanh(s + c - r / n) + sum(t, axis=-1) * 0.1
    u = s * 2.0
    q <- sigmoid(m2) + exp(-abs(q)) + softsign(d) + softplus(e[0]) + sqrt(square(q) + 1.0) - log(1.0 + square(d)) + mean(p @ s, axis=0) * 0.01
    output s, u, q
}

model G {
    input x: f64[B, T, 3, 4]
    input v: f64[B, T, 4]
    input m: mask[B, T]
    s_seq, u_seq, q_seq, s_fin, q_fin = RNN(Gadget(4), return_sequences=true, return_state=true, name="fw")(x, v, mask=m)
    s_last, u_last, q_last = RNN(Gadget(4, scale=1.5), go_backwards=true, name="bw")(x, v, mask=m)
    output s_seq, u_seq, q_seq, s_fin, q_fin, s_last, u_last, q_last
}
"""


def _gadget_step(
    x: np.ndarray, v: np.ndarray, s: np.ndarray, q: np.ndarray, w: np.ndarray, g: np.ndarray,
    scale: float,
) -> tuple[list[np.ndarray], list[np.ndarray]]:  # fmt: skip
    """Gadget's step written out with explicit NumPy axes (batch first)."""
    n = 4
    a = x @ w  # [B, k, n]
    z = a + v[:, None, :]
    c = np.exp(z - z.max(axis=1, keepdims=True))
    c = c / c.sum(axis=1, keepdims=True)
    d = (c * s).sum(axis=1)  # [B, n]
    e = s.mean(axis=2)  # [B, k]
    f = np.concatenate([q, d], axis=1)
    f1, f2 = f[:, :n], f[:, n:]
    m2 = np.maximum(f1, g[0]) - np.minimum(f2, g[1])
    r = x[:, 0][:, None, :] * scale + x[:, :, 0:1] * np.maximum(q, 0.0)[:, None, :]
    t = np.einsum("bkn,bn->bk", s, q)
    p = np.einsum("bkn,bjn->bkj", x, x)  # x @ x^T per row
    s_new = np.tanh(s + c - r / n) + t.sum(axis=1)[:, None, None] * 0.1
    u = s * 2.0
    q_new = (
        1.0 / (1.0 + np.exp(-m2))
        + np.exp(-np.abs(q))
        + d / (1.0 + np.abs(d))
        + np.log1p(np.exp(e[:, 0]))[:, None]
        + np.sqrt(q**2 + 1.0)
        - np.log(1.0 + d**2)
        + np.einsum("bkj,bjn->bkn", p, s).mean(axis=1) * 0.01
    )
    return [s_new, u, q_new], [s_new, q_new]


def test_cell_equations_by_hand() -> None:
    m = model_of(GADGET)
    w = rand_weights(m, 11, scale=0.4)
    rng = np.random.default_rng(12)
    b, t = 3, 4
    x = rng.normal(0.0, 1.0, (b, t, 3, 4))
    v = rng.normal(0.0, 1.0, (b, t, 4))
    mask = np.array([[1, 1, 1, 1], [0, 1, 1, 0], [0, 0, 0, 0]], bool)
    outs = plain(run_reference(m, w, [x, v, mask]))
    err = 0.0
    for name, scale, backwards in (("fw", 0.5, False), ("bw", 1.5, True)):
        ww, gg = w[f"{name}/w"], w[f"{name}/g"]
        s, q = np.zeros((b, 3, 4)), np.zeros((b, 4))
        seq = [np.zeros((b, t, 3, 4)), np.zeros((b, t, 3, 4)), np.zeros((b, t, 4))]
        last = [np.zeros((b, 3, 4)), np.zeros((b, 3, 4)), np.zeros((b, 4))]
        for j in range(t):
            step = t - 1 - j if backwards else j
            (y_s, y_u, y_q), (s_new, q_new) = _gadget_step(
                x[:, step], v[:, step], s, q, ww, gg, scale
            )
            for row in range(b):
                if mask[row, step]:
                    s[row], q[row] = s_new[row], q_new[row]
                    for k, y in enumerate((y_s, y_u, y_q)):
                        seq[k][row, j] = y[row]
                        last[k][row] = y[row]
        if name == "fw":
            for k, want in enumerate([*seq, s, q]):
                err = max(err, close(outs[k], want, f"fw output {k}"))
        else:
            for k, want in enumerate(last):
                err = max(err, close(outs[5 + k], want, f"bw output {k}"))
        nontrivial(*last)
    MAX_ERR["by hand"] = err


def test_extern_mask_contracts_by_hand() -> None:
    """concat (an unmasked input counts as all valid), generate only `if` its flag, drop."""
    m = model_of("""
extern layer TimeCat { inputs: 2; time: T + T; mask: concat }
extern layer Gen(flag: bool = false) { shape: same; mask: generate(x != 0) if flag }
extern layer Drop { shape: same; mask: drop }
model M {
    input a: f64[B, T, 3] masked
    input b: f64[B, T, 3]
    input ids: i32[B, T]
    c = TimeCat()(a, b)
    g = ids -> Gen()
    g2 = ids -> Gen(flag=true)
    d = c -> Drop()
    output c, g, g2, d
}""")
    seen: dict[str, Any] = {}

    def timecat(a: Any, b: Any, *, mask: Any, **kw: Any) -> Any:
        seen["masks"] = mask
        return np.concatenate([a, b], axis=1)

    ex = {
        "TimeCat": timecat,
        "Gen": lambda x, **kw: x * 2,
        "Drop": lambda x, **kw: -x,
    }
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 3, 3)), rng.normal(size=(2, 3, 3))
    ids = np.array([[1, 0, 2], [0, 0, 3]])
    ma = np.array([[1, 1, 0], [0, 0, 0]], bool)
    r = run_reference(m, {}, [a, b, ids], masks={"a": ma}, externs=ex)
    c, g, g2, d = plain(r)
    np.testing.assert_array_equal(c, np.concatenate([a, b], axis=1))
    assert seen["masks"][0] is not None and seen["masks"][1] is None  # a tuple, one per input
    np.testing.assert_array_equal(r.values["c"][1], np.concatenate([ma, np.ones((2, 3), bool)], 1))
    assert r.values["g"][1] is None
    np.testing.assert_array_equal(r.values["g2"][1], ids != 0)
    np.testing.assert_array_equal(g2, ids * 2)
    assert r.values["d"][1] is None
    np.testing.assert_array_equal(d, -c)
